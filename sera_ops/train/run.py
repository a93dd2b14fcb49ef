"""One training run (`run_sft`): checkpoints that survive a killed pod, and an output published atomically.

Checkpoints go to `.<out>.checkpoints/` next to the output, which survives a killed pod: the next start with the
same settings and data resumes from the newest complete one. The final model is written to a staging directory and
renamed into place by rank 0, and the checkpoints are removed. Under `accelerate launch` every process runs this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sera_ops.settings.training import TrainSettings
from sera_ops.store.layout import MODEL_METRICS
from sera_ops.train.records import IGNORE_INDEX, TrainInputError, chatml_text, encode_files, read_records
from sera_ops.train.tiny_model import build_tiny_model
from sera_ops.train.trainer import build_trainer

if TYPE_CHECKING:
    from trl import SFTTrainer

BASE_MODEL_DIR = "base_model"  # where a tiny base model is built (checkpoints dir) and published (output)
METRICS_FILE = MODEL_METRICS
SETTINGS_FILE = "train_settings.json"
FINGERPRINT_FILE = "fingerprint.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")  # transformers' checkpoint folder names
TRAINER_STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence marks a complete one

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What `run_sft` hands back; metrics.json holds it too, with the loss curve and per-step timings."""

    output_dir: str
    method: str
    base_model: str
    examples: int
    dropped: int
    truncated: int
    steps: int  # optimizer steps of the whole run, resumed or not
    tokens_trained: int  # input tokens through forward and backward on all processes, whole run (padding excluded)
    supervised_tokens_per_epoch: int  # tokens of the examples that carry loss (trained turns), one pass
    first_loss: float
    last_loss: float
    seconds: float  # this launch's training loop; model loading, saving and the steps before a resume excluded
    tokens_per_s: float  # tokens this launch trained (all processes) per second of its loop
    trainable_params: int
    total_params: int
    world_size: int  # processes that trained together
    resumed_from: str | None  # the checkpoint this launch continued from


def checkpoint_dir_for(output_dir: Path) -> Path:
    """Next to the output (same volume, so it survives the pod), hidden, and not touched by `_remove_leftovers`."""
    return output_dir.parent / f".{output_dir.name}.checkpoints"


def _fingerprint(dataset_files: Sequence[Path], settings: TrainSettings) -> str:
    """What a checkpoint is only valid for: the settings and the exact dataset bytes."""
    digest = hashlib.sha256(settings.model_dump_json().encode())
    for path in dataset_files:
        digest.update(str(Path(path).resolve()).encode())
        with Path(path).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _prepare_checkpoint_dir(checkpoint_dir: Path, fingerprint: str) -> None:
    """Keep the checkpoints of an earlier attempt of this very job; clear those of any other."""
    marker = checkpoint_dir / FINGERPRINT_FILE
    if checkpoint_dir.exists() and (not marker.is_file() or
                                    json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") != fingerprint):
        log.info("discarding %s: its checkpoints belong to other settings or data", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    if not marker.is_file():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        staged = marker.with_suffix(".tmp")
        staged.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
        staged.replace(marker)


def last_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint: a kill while saving leaves one without its trainer state, which is skipped."""
    complete = [(int(match[1]), path) for path in checkpoint_dir.glob("checkpoint-*")
                if (match := CHECKPOINT_PATTERN.match(path.name)) and (path / TRAINER_STATE_FILE).is_file()]
    return max(complete)[1] if complete else None


def _tiny_base_model(checkpoint_dir: Path, records_by_file: dict[Path, list[dict[str, Any]]],
                     size: Literal["1m", "10m"]) -> Path:
    """Built once per job into the checkpoints dir (a resumed run must continue on the very same base)."""
    target = checkpoint_dir / BASE_MODEL_DIR
    if not (target / "config.json").is_file():
        shutil.rmtree(target, ignore_errors=True)
        staged = checkpoint_dir / f".{BASE_MODEL_DIR}.partial"
        shutil.rmtree(staged, ignore_errors=True)
        build_tiny_model(staged, (chatml_text(record) for records in records_by_file.values() for record in records),
                         size=size)
        staged.rename(target)
    return target


def _staging_prefixes(output_dir: Path) -> tuple[str, str]:
    return f".{output_dir.name}.partial-", f".{output_dir.name}.retired-"


def _remove_leftovers(output_dir: Path) -> None:
    """A killed earlier attempt leaves its staging directory behind; a retry owns the output, so it clears them."""
    for prefix in _staging_prefixes(output_dir):
        for leftover in output_dir.parent.glob(f"{prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _publish(staging: Path, output_dir: Path) -> None:
    """Swap the finished staging directory into place; an existing output is moved aside only at this point."""
    if not output_dir.exists():
        staging.rename(output_dir)
        return
    retired = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=_staging_prefixes(output_dir)[1]))
    output_dir.rename(retired / output_dir.name)
    try:
        staging.rename(output_dir)
    except BaseException:
        (retired / output_dir.name).rename(output_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _save_model(trainer: SFTTrainer, staging: Path | None, settings: TrainSettings, recorded_base: Path) -> None:
    """Gather the weights on every process (FSDP shards them), write them from rank 0 into `staging`."""
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if staging is None:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    base = model.get_base_model() if settings.method == "lora" else model
    # the checkpoints path would otherwise end up in the model card and config
    base.name_or_path = base.config.name_or_path = str(recorded_base)
    if settings.method == "lora":
        model.peft_config["default"].base_model_name_or_path = str(recorded_base)
        model.save_pretrained(staging, state_dict=state_dict, save_embedding_layers=False)  # LoRA targets projections
    else:
        model.save_pretrained(staging, state_dict=state_dict)
    trainer.processing_class.save_pretrained(staging)


def _report(trainer: SFTTrainer, meter: Any, result: TrainResult, per_file: dict[str, dict[str, int]],
            max_len: int, settings: TrainSettings) -> dict[str, Any]:
    """metrics.json: the TrainResult, the loss curve of every logging step (resumed runs included) and this
    launch's per-step timings."""
    curve = [{key: entry[key] for key in ("step", "loss", "learning_rate", "grad_norm", "num_tokens",
                                           "mean_token_accuracy") if key in entry}
             for entry in trainer.state.log_history if "loss" in entry]
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {**asdict(result), "loss_curve": curve, "losses": [entry["loss"] for entry in curve],
            "learning_rates": [entry["learning_rate"] for entry in curve],
            "step_seconds": meter.seconds, "step_tokens": meter.tokens,
            "max_seq_len": max_len, "rows_per_epoch": len(trainer.train_dataset), "packing": settings.packing,
            "distributed": settings.distributed if result.world_size > 1 else None,
            "device": str(trainer.args.device), "dtype": str(model.dtype).removeprefix("torch."), "files": per_file}


def _train(output_dir: Path, checkpoint_dir: Path, records_by_file: dict[Path, list[dict[str, Any]]],
           settings: TrainSettings, state: Any) -> TrainResult:
    """Load or build the base, encode, train (resuming when a checkpoint exists), publish from rank 0."""
    from transformers import AutoConfig, AutoTokenizer

    with state.main_process_first():
        if settings.base_model is None:
            base_path = _tiny_base_model(checkpoint_dir, records_by_file, settings.tiny_model_size)
            recorded_base = output_dir / BASE_MODEL_DIR
        else:
            base_path = recorded_base = Path(settings.base_model).resolve()
    model_limit = getattr(AutoConfig.from_pretrained(base_path, local_files_only=True), "max_position_embeddings",
                          None) or settings.max_seq_len
    max_len = min(settings.max_seq_len, model_limit)
    tokenizer = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    examples, per_file = encode_files(tokenizer, records_by_file, max_len)
    trainer, meter = build_trainer(base_path, examples, settings, max_len, checkpoint_dir)
    resume = last_checkpoint(checkpoint_dir)
    log.info("training %s on %d examples (%d dropped) in %d rows, %d steps, max_seq_len %d, %d process(es)%s",
             settings.method, len(examples), sum(c["dropped"] for c in per_file.values()),
             len(trainer.train_dataset), trainer.args.max_steps, max_len, state.num_processes,
             f", resuming from {resume}" if resume else "")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    curve = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if not curve or not all(math.isfinite(loss) for loss in curve):
        raise RuntimeError(f"loss went {curve[-1:] or 'unlogged'}: training diverged, nothing was published")
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = TrainResult(
        output_dir=str(output_dir), method=settings.method, base_model=str(recorded_base), examples=len(examples),
        dropped=sum(c["dropped"] for c in per_file.values()), truncated=sum(c["truncated"] for c in per_file.values()),
        steps=trainer.state.global_step, tokens_trained=int(trainer.state.num_input_tokens_seen),
        supervised_tokens_per_epoch=sum(sum(label != IGNORE_INDEX for label in example["labels"][1:])
                                        for example in examples),
        first_loss=curve[0], last_loss=curve[-1], seconds=sum(meter.seconds),
        tokens_per_s=sum(meter.tokens) / sum(meter.seconds) if sum(meter.seconds) else 0.0,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()), world_size=state.num_processes,
        resumed_from=str(resume) if resume else None)

    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=_staging_prefixes(output_dir)[0])) \
        if state.is_main_process else None
    try:
        _save_model(trainer, staging, settings, recorded_base)
        if staging is not None:
            if settings.base_model is None:
                shutil.copytree(base_path, staging / BASE_MODEL_DIR)
            metrics = _report(trainer, meter, result, per_file, max_len, settings)
            (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
            (staging / SETTINGS_FILE).write_text(settings.model_dump_json(indent=2) + "\n", encoding="utf-8")
            _publish(staging, output_dir)
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the job is done: nothing left to resume
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    state.wait_for_everyone()
    return result


def run_sft(dataset_files: list[Path], output_dir: Path, settings: TrainSettings) -> TrainResult:
    """Fine-tune on `dataset_files` and publish the model, tokenizer, metrics.json and train_settings.json.

    The output is written to a staging directory next to `output_dir` and renamed into place at the end, so a reader
    or a retried task sees either the previous complete output or the new one, never half a model. Checkpoints of an
    interrupted attempt with the same settings and data are resumed; a failure before the first checkpoint leaves
    nothing behind. Under `accelerate launch` every process calls this; rank 0 alone writes the output.
    """
    import torch
    from accelerate import PartialState

    output_dir = Path(output_dir).resolve()
    records_by_file = {Path(path): read_records(Path(path)) for path in dataset_files}
    if not records_by_file:
        raise TrainInputError("no dataset files given")
    if not any(records_by_file.values()):
        raise TrainInputError(f"no usable training examples: {', '.join(map(str, records_by_file))} hold no records")
    # joins the process group `accelerate launch` set up (gloo without a GPU), a single process otherwise
    state = PartialState(cpu=not torch.cuda.is_available())
    checkpoint_dir = checkpoint_dir_for(output_dir)
    if state.is_main_process:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(output_dir)
        _prepare_checkpoint_dir(checkpoint_dir, _fingerprint(list(records_by_file), settings))
    state.wait_for_everyone()
    try:
        return _train(output_dir, checkpoint_dir, records_by_file, settings, state)
    except BaseException:
        if state.is_main_process and last_checkpoint(checkpoint_dir) is None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # nothing to resume: leave no trace
        raise
