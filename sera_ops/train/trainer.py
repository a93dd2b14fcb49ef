"""Training stage: supervised fine-tuning on the exported T1/T2 records with TRL's `SFTTrainer` (LoRA or full).

Reads the JSONL records postprocess writes (`{"messages": [{"role", "content", "train"}], ...}`, sera.md §7.4),
renders them as ChatML and trains only on the messages marked `train: true` (axolotl's `message_field_training`,
SERA's primary recipe, §8.1): the labels are built here from the `train` keys and handed to TRL as a tokenised
dataset, because TRL's own `assistant_only_loss` follows roles, not the records' keys. Over-long samples are cut back
to the last complete trainable turn that fits, as SERA's torchtune-style length filter does (§8.3), instead of being
dropped whole. Examples are packed padding-free (TRL's best-fit-decreasing packing; positions restart per example so
packed examples never attend to each other), or padded per micro-batch with `packing: false`.

One process runs with `python -m sera_ops.train` (the `local` backend, the demo); `accelerate launch --num_processes N
[--config_file sera_ops/accelerate/<ddp|fsdp>.yaml] -m sera_ops.train ...` runs the same code on N processes (all GPUs
of a pod, or several nodes through a PyTorchJob). Checkpoints go to `.<out>.checkpoints/` next to the output, which
survives a killed pod: the next start with the same settings and data resumes from the newest complete one. The
final model is published atomically by rank 0 and the checkpoints are removed. Without a `base_model` a tiny Qwen3 and
a ByteLevel BPE tokenizer are built from the dataset itself: nothing is ever downloaded.

torch, transformers, trl, peft and tokenizers are imported inside the functions that need them: the Airflow
dag-processor imports modules that import this one every 30 s, and must not pay for torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from sera_ops.settings.training import TrainSettings

if TYPE_CHECKING:
    from trl import SFTTrainer

TRAIN_MODULE = "sera_ops.train"

IM_START, IM_END, END_OF_TEXT, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = (IM_START, IM_END, END_OF_TEXT, PAD)
IGNORE_INDEX = -100  # the label torch's cross-entropy (and transformers' causal LM loss) skips

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen3 shapes measured in agent-and-models.md Part 2: ~1.05M and ~9.97M parameters with tied embeddings.
TINY_MODEL_SIZES: dict[str, dict[str, int]] = {
    "1m": {"vocab_size": 2048, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 384},
    "10m": {"vocab_size": 8192, "hidden_size": 256, "num_hidden_layers": 10, "num_attention_heads": 8,
            "num_key_value_heads": 4, "intermediate_size": 768},
}
TINY_MODEL_MAX_POSITIONS = 32768  # SERA's sequence_len, so the default max_seq_len needs no clamping on tiny models
TINY_MODEL_SEED = 0
BASE_MODEL_DIR = "base_model"  # where a tiny base model is built (checkpoints dir) and published (output)
METRICS_FILE = "metrics.json"
SETTINGS_FILE = "train_settings.json"
FINGERPRINT_FILE = "fingerprint.json"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")  # transformers' checkpoint folder names
TRAINER_STATE_FILE = "trainer_state.json"  # written last into a checkpoint: its presence marks a complete one

log = logging.getLogger(__name__)


class TrainInputError(ValueError):
    """The data given to training is unusable (missing file, malformed record, no trainable example)."""


@dataclass
class TrainResult:
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


# ---------------------------------------------------------------------------------------------------------------------
# Records and encoding


def _content_text(content: Any) -> str:
    """Hermes records hold strings; raw ones may hold OpenAI content parts or null."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _is_trained(message: Mapping[str, Any]) -> bool:
    """The record's `train` key decides; records without it train on assistant turns (as Unsloth's masking does)."""
    return bool(message.get("train", message.get("role") == "assistant"))


def encode_example(tokenizer: Any, messages: Sequence[Mapping[str, Any]], max_len: int) -> dict[str, Any] | None:
    """ChatML token ids and labels for one conversation, or None when no trainable token fits in `max_len`.

    Each message is `<|im_start|>{role}\\n{content}<|im_end|>\\n`. For a trained message the content and its
    `<|im_end|>` are labelled (the model must learn to stop); the role header is given at inference, and the newline
    after `<|im_end|>` is never generated, so both stay -100, as does every untrained message. The header, the body
    and the newline are tokenised separately so that the labelled tokens are exactly what the model generates after
    the `<|im_start|>assistant\\n` prompt. The sequence ends at the last trained message that fits completely: later
    untrained messages carry no loss, and a cut inside a turn would teach the model to stop mid-answer.
    """
    if not messages:
        return None
    pieces: list[str] = []
    for message in messages:
        pieces += [f"{IM_START}{message.get('role', '')}\n", f"{_content_text(message.get('content'))}{IM_END}"]
    encoded = tokenizer(pieces + ["\n"], add_special_tokens=False)["input_ids"]
    newline = encoded[-1]
    input_ids: list[int] = []
    labels: list[int] = []
    keep = 0
    trained_total = sum(_is_trained(message) for message in messages)
    trained_kept = 0
    for index, message in enumerate(messages):
        header, body = encoded[2 * index], encoded[2 * index + 1]
        if len(input_ids) + len(header) + len(body) > max_len:
            break
        trained = _is_trained(message)
        input_ids += header + body
        labels += [IGNORE_INDEX] * len(header) + (body if trained else [IGNORE_INDEX] * len(body))
        if trained:
            keep = len(input_ids)
            trained_kept += 1
        input_ids += newline
        labels += [IGNORE_INDEX] * len(newline)
    if keep == 0:
        return None
    return {"input_ids": input_ids[:keep], "labels": labels[:keep], "truncated": trained_kept < trained_total}


def _read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TrainInputError(f"dataset file {path} does not exist")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TrainInputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                raise TrainInputError(f"{path}:{number}: a record needs a 'messages' list")
            records.append(record)
    return records


def resolve_dataset_files(paths: Iterable[Path], datasets: Sequence[str]) -> list[Path]:
    """Files as given; a directory (a run's `dataset/`) stands for its `<name>.jsonl` of each selected dataset."""
    files: list[Path] = []
    for path in map(Path, paths):
        files += [path / f"{name}.jsonl" for name in datasets] if path.is_dir() else [path]
    for path in files:
        if not path.is_file():
            raise TrainInputError(f"dataset file {path} does not exist")
    return files


def _chatml_text(record: Mapping[str, Any]) -> str:
    return "".join(f"{IM_START}{message.get('role', '')}\n{_content_text(message.get('content'))}{IM_END}\n"
                   for message in record["messages"])


# ---------------------------------------------------------------------------------------------------------------------
# Tiny model


def build_tiny_model(output_dir: Path, corpus: Iterable[str], *, size: Literal["1m", "10m"] = "1m") -> Path:
    """Train a ByteLevel BPE tokenizer on `corpus` and save it with a randomly initialised Qwen3 of `size`.

    This is the offline stand-in for a real base model: the tokenizer has ChatML's special tokens and chat template,
    so the whole training path (rendering, masking, LoRA targets, saving, reloading) is the one a Qwen3 run takes.
    The weights come from a fixed seed, without touching the caller's RNG state.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

    if size not in TINY_MODEL_SIZES:
        raise ValueError(f"size must be one of {sorted(TINY_MODEL_SIZES)}, got {size!r}")
    shape = TINY_MODEL_SIZES[size]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=shape["vocab_size"], special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=IM_END, pad_token=PAD, extra_special_tokens=[IM_START, END_OF_TEXT],
        model_max_length=TINY_MODEL_MAX_POSITIONS, chat_template=CHATML_TEMPLATE)
    config = Qwen3Config(
        **{**shape, "vocab_size": len(tokenizer)},
        head_dim=shape["hidden_size"] // shape["num_attention_heads"],
        max_position_embeddings=TINY_MODEL_MAX_POSITIONS, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_MODEL_SEED)
        model = AutoModelForCausalLM.from_config(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


# ---------------------------------------------------------------------------------------------------------------------
# Trainer


def _encode_files(tokenizer: Any, records_by_file: dict[Path, list[dict[str, Any]]],
                  max_len: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    examples: list[dict[str, Any]] = []
    per_file: dict[str, dict[str, int]] = {}
    for path, records in records_by_file.items():
        counts = {"records": len(records), "examples": 0, "dropped": 0, "truncated": 0}
        for record in records:
            example = encode_example(tokenizer, record["messages"], max_len)
            if example is None:
                counts["dropped"] += 1
                continue
            counts["examples"] += 1
            counts["truncated"] += int(example["truncated"])
            examples.append(example)
        per_file[str(path)] = counts
    if not examples:
        detail = "; ".join(f"{path}: {counts['records']} records, {counts['dropped']} without a trainable turn "
                           f"within {max_len} tokens" for path, counts in per_file.items())
        raise TrainInputError(f"no usable training examples in {detail}")
    return examples, per_file


def _load_model(base_model: Path) -> Any:
    """bf16 weights on a GPU that supports them (as SERA's `bf16: auto`), fp32 otherwise."""
    import torch
    from transformers import AutoModelForCausalLM

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                 local_files_only=True)
    model.config.use_cache = False
    return model


def _lora_config(settings: TrainSettings) -> Any:
    if settings.method != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=list(settings.lora_targets), task_type="CAUSAL_LM")


def _step_meter() -> Any:
    """A TrainerCallback that times each optimizer step of this launch and counts its input tokens (all processes),
    and sends the trainer's log lines to the logger (stderr) instead of stdout. Built here: transformers is heavy."""
    from transformers import TrainerCallback

    class StepMeter(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.tokens: list[int] = []
            self._started = 0.0
            self._seen = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._started, self._seen = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self._started)
            self.tokens.append(int(state.num_input_tokens_seen - self._seen))

        def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if state.is_world_process_zero and logs:
                log.info("step %d/%d %s", state.global_step, state.max_steps,
                         " ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                  for key, value in logs.items()))

    return StepMeter()


def build_trainer(base_path: Path, examples: Sequence[dict[str, Any]], settings: TrainSettings, max_len: int,
                  checkpoint_dir: Path) -> tuple[SFTTrainer, Any]:
    """The SFTTrainer for these encoded examples, with the optimiser, schedule, packing and checkpointing of
    `settings`, and its step meter; `max_steps` is the epochs' step count, capped by `settings.max_steps`."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(settings.seed)  # the LoRA weights are drawn before the Trainer seeds itself
    tokenizer = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    model = _load_model(base_path)
    config = SFTConfig(
        output_dir=str(checkpoint_dir), seed=settings.seed, num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.micro_batch_size, gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.optimizer_learning_rate, lr_scheduler_type="cosine", warmup_steps=settings.warmup_ratio,
        weight_decay=settings.weight_decay, adam_beta1=0.9, adam_beta2=settings.adam_beta2, optim="adamw_torch",
        max_grad_norm=settings.max_grad_norm or 0.0, activation_checkpointing=settings.gradient_checkpointing,
        bf16=model.dtype == torch.bfloat16, max_length=max_len, packing=settings.packing, packing_strategy="bfd",
        padding_free=settings.packing, shuffle_dataset=True, logging_steps=settings.logging_steps,
        save_strategy="steps", save_steps=settings.save_steps, save_total_limit=settings.save_total_limit,
        include_num_input_tokens_seen="non_padding", report_to="none", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False)
    dataset = Dataset.from_list([{"input_ids": example["input_ids"], "labels": example["labels"]}
                                 for example in examples])
    meter = _step_meter()
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=_lora_config(settings), callbacks=[meter])
    trainer.remove_callback(PrinterCallback)
    # transformers' own count, so that `max_steps` only ever shortens the run (the Trainer would repeat epochs)
    batches = math.ceil(len(trainer.train_dataset) / (settings.micro_batch_size * trainer.args.world_size))
    steps = math.ceil(settings.epochs * math.ceil(batches / settings.grad_accum))
    trainer.args.max_steps = min(steps, settings.max_steps or steps)
    return trainer, meter


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints and atomic output


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
        build_tiny_model(staged, (_chatml_text(record) for records in records_by_file.values() for record in records),
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
    examples, per_file = _encode_files(tokenizer, records_by_file, max_len)
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
    records_by_file = {Path(path): _read_records(Path(path)) for path in dataset_files}
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


# ---------------------------------------------------------------------------------------------------------------------
# Entry point of the training pod (one process, or each process of `accelerate launch`)


def _load_settings(path: Path | None) -> TrainSettings:
    if path is None:
        return TrainSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TrainInputError(f"cannot read settings file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise TrainInputError(f"settings file {path} is not valid JSON: {error}") from None
    return TrainSettings.model_validate(data)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sera_ops.train --data FILE|DIR [--data ...] --out DIR [--settings settings.json]`.

    Progress goes to stderr; the last stdout line (of rank 0) is the TrainResult as JSON. Exit status 2 means bad
    input.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {TRAIN_MODULE}", description=main.__doc__)
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="a JSONL dataset file, or a run's dataset directory (its t1/t2 files per 'datasets')")
    parser.add_argument("--out", type=Path, required=True, help="output directory (replaced atomically)")
    parser.add_argument("--settings", type=Path, help="JSON file with TrainSettings fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = _load_settings(args.settings)
        result = run_sft(resolve_dataset_files(args.data, settings.datasets), args.out, settings)
    except (TrainInputError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
