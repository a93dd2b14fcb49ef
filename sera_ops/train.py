"""Training stage: supervised fine-tuning on the exported T1/T2 records (LoRA or full), assistant-only loss.

Reads the JSONL records postprocess writes (`{"messages": [{"role", "content", "train"}], ...}`, sera.md §7.4),
renders them as ChatML and trains only on the messages marked `train: true` (axolotl's `message_field_training`,
SERA's primary recipe, §8.1). Over-long samples are cut back to the last complete trainable turn that fits, as
SERA's torchtune-style length filter does (§8.3), instead of being dropped whole.

The loop is plain torch (AdamW, cosine schedule with warm-up, gradient accumulation normalised by the number of
supervised tokens of the whole step, seeded shuffling), so the same code runs in the embedded demo on a CPU and in the
Kubernetes pod on a GPU (`python -m sera_ops.train`). Without a `base_model` a tiny Qwen3 model and a ByteLevel BPE
tokenizer are built from the dataset itself: nothing is ever downloaded.

torch, transformers, peft and tokenizers are imported inside the functions that need them: the Airflow dag-processor
imports modules that import this one every 30 s, and must not pay for torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

if TYPE_CHECKING:
    import torch

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
BASE_MODEL_DIR = "base_model"  # where a tiny base model is built inside the output when no base_model is given
METRICS_FILE = "metrics.json"
SETTINGS_FILE = "train_settings.json"

log = logging.getLogger(__name__)


class TrainInputError(ValueError):
    """The data given to training is unusable (missing file, malformed record, no trainable example)."""


class TrainSettings(BaseModel):
    """Hyper-parameters; defaults follow SERA's configs (sera.md §8): full-FT lr 1e-5, LoRA r32/α128 at 5e-5."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "full"] = "lora"
    base_model: str | None = Field(default=None, description="local model directory; None builds a tiny model")
    tiny_model_size: Literal["1m", "10m"] = "1m"
    datasets: list[Literal["t1", "t2"]] = ["t1", "t2"]
    epochs: float = Field(default=3, gt=0)
    learning_rate: float = Field(default=1e-5, gt=0, description="full fine-tuning")
    lora_learning_rate: float = Field(default=5e-5, gt=0)
    lora_r: int = Field(default=32, ge=1)
    lora_alpha: int = Field(default=128, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    max_seq_len: int = Field(default=32768, ge=8, description="clamped to the model's max_position_embeddings")
    micro_batch_size: int = Field(default=1, ge=1)
    grad_accum: int = Field(default=8, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    adam_beta2: float = Field(default=0.95, gt=0, lt=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="None disables clipping")
    gradient_checkpointing: bool = False
    seed: int = 42
    max_steps: int | None = Field(default=None, ge=1, description="cap on optimizer steps (smoke runs)")
    packing: bool = False

    @field_validator("base_model")
    @classmethod
    def _local_directory(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"base_model {value!r} is not an existing directory: training only loads local "
                             "model directories (no hub downloads); leave it unset to build a tiny model")
        return value

    @field_validator("datasets")
    @classmethod
    def _distinct_datasets(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"datasets must name t1 and/or t2 once each, got {value}")
        return value

    @field_validator("lora_targets")
    @classmethod
    def _some_targets(cls, value: list[str]) -> list[str]:
        if not value or not all(name.strip() for name in value):
            raise ValueError(f"lora_targets must list module names, got {value}")
        return value

    @property
    def optimizer_learning_rate(self) -> float:
        return self.lora_learning_rate if self.method == "lora" else self.learning_rate


@dataclass
class TrainResult:
    output_dir: str
    method: str
    base_model: str
    examples: int
    dropped: int
    truncated: int
    steps: int
    tokens_trained: int  # input tokens through forward and backward (padding excluded)
    supervised_tokens: int  # tokens that carried loss (assistant turns)
    first_loss: float
    last_loss: float
    seconds: float  # the training loop alone; model loading and saving excluded
    tokens_per_s: float
    trainable_params: int
    total_params: int


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
# Batches


def pack_examples(examples: Sequence[dict[str, Any]], max_len: int) -> list[list[dict[str, Any]]]:
    """Greedy packing in the given order: each row holds consecutive examples whose total length fits `max_len`."""
    rows: list[list[dict[str, Any]]] = []
    length = 0
    for example in examples:
        size = len(example["input_ids"])
        if rows and length + size <= max_len:
            rows[-1].append(example)
            length += size
        else:
            rows.append([example])
            length = size
    return rows


def make_batch(rows: Sequence[Sequence[dict[str, Any]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors for rows of one or more examples each.

    Positions restart at 0 for every example and no attention mask is passed: called with `use_cache=False`,
    transformers then treats a row as packed sequences that cannot attend to each other. Padding continues the last
    example's positions; under the causal mask no real token sees it, and its labels are -100.
    """
    import torch

    width = max(sum(len(example["input_ids"]) for example in row) for row in rows)
    input_ids, labels, positions = [], [], []
    for row in rows:
        ids = [token for example in row for token in example["input_ids"]]
        row_labels = [label for example in row for label in example["labels"]]
        row_positions = [position for example in row for position in range(len(example["input_ids"]))]
        padding = width - len(ids)
        input_ids.append(ids + [pad_token_id] * padding)
        labels.append(row_labels + [IGNORE_INDEX] * padding)
        positions.append(row_positions + list(range(row_positions[-1] + 1, row_positions[-1] + 1 + padding)))
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions)}


def _epoch_rows(examples: list[dict[str, Any]], settings: TrainSettings, max_len: int,
                epoch: int) -> list[list[dict[str, Any]]]:
    order = list(examples)
    random.Random(settings.seed + epoch).shuffle(order)
    return pack_examples(order, max_len) if settings.packing else [[example] for example in order]


def _micro_batches(examples: list[dict[str, Any]], settings: TrainSettings,
                   max_len: int) -> Iterator[list[list[dict[str, Any]]]]:
    """Endless stream of micro-batches, reshuffled (and repacked) every epoch; the caller decides when to stop."""
    epoch = 0
    while True:
        rows = _epoch_rows(examples, settings, max_len, epoch)
        for start in range(0, len(rows), settings.micro_batch_size):
            yield rows[start:start + settings.micro_batch_size]
        epoch += 1


# ---------------------------------------------------------------------------------------------------------------------
# Training


def _device_and_dtype() -> tuple[str, torch.dtype]:
    """bf16 weights on a GPU that supports them (as SERA's `bf16: auto`), fp32 otherwise."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return "cpu", torch.float32


def _load_model(base_model: Path, settings: TrainSettings, device: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype, local_files_only=True)
    model.config.use_cache = False
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if settings.method == "lora":
            model.enable_input_require_grads()  # frozen embeddings would otherwise cut the checkpointed graph
    if settings.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                          target_modules=list(settings.lora_targets), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model.to(device)


def _optimizer(model: Any, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW without decay on biases and norm weights (1-D tensors), as transformers' Trainer does."""
    import torch

    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": settings.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=settings.optimizer_learning_rate,
                             betas=(0.9, settings.adam_beta2))


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


def _train(staging: Path, output_dir: Path, records_by_file: dict[Path, list[dict[str, Any]]],
           settings: TrainSettings) -> TrainResult:
    """Everything that writes: build or load the base, encode, train, save into `staging`."""
    import torch
    from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

    if settings.base_model is None:
        base_path = build_tiny_model(staging / BASE_MODEL_DIR, (_chatml_text(record) for records in
                                                                records_by_file.values() for record in records),
                                     size=settings.tiny_model_size)
        recorded_base = output_dir / BASE_MODEL_DIR
    else:
        base_path = recorded_base = Path(settings.base_model).resolve()
    torch.manual_seed(settings.seed)
    device, dtype = _device_and_dtype()
    tokenizer = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    model = _load_model(base_path, settings, device, dtype)
    model_limit = getattr(model.config, "max_position_embeddings", None) or settings.max_seq_len
    max_len = min(settings.max_seq_len, model_limit)
    examples, per_file = _encode_files(tokenizer, records_by_file, max_len)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # packing varies a little between epochs; the first epoch's row count sizes the schedule
    micro_per_epoch = math.ceil(len(_epoch_rows(examples, settings, max_len, 0)) / settings.micro_batch_size)
    total_micro = math.ceil(settings.epochs * micro_per_epoch)
    steps = math.ceil(total_micro / settings.grad_accum)
    if settings.max_steps is not None:
        steps = min(steps, settings.max_steps)
        total_micro = min(total_micro, steps * settings.grad_accum)
    optimizer = _optimizer(model, settings)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(settings.warmup_ratio * steps), steps)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    log.info("training %s on %d examples (%d dropped), %d steps, max_seq_len %d, %s %s", settings.method,
             len(examples), sum(c["dropped"] for c in per_file.values()), steps, max_len, device, dtype)

    batches = _micro_batches(examples, settings, max_len)
    losses, step_seconds, step_tokens, learning_rates = [], [], [], []
    supervised_tokens = 0
    model.train()
    for step in range(steps):
        started = time.perf_counter()
        group_rows = [next(batches) for _ in range(min(settings.grad_accum, total_micro - step * settings.grad_accum))]
        group = [make_batch(rows, pad_token_id) for rows in group_rows]
        # transformers shifts labels by one inside the loss: the targets are labels[:, 1:]
        targets = sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in group)
        step_loss = 0.0
        for batch in group:
            batch = {name: tensor.to(device) for name, tensor in batch.items()}
            loss = model(**batch, use_cache=False, num_items_in_batch=targets).loss
            loss.backward()
            step_loss += loss.item()
        if not math.isfinite(step_loss):
            raise RuntimeError(f"loss is {step_loss} at step {step + 1}: training diverged, nothing was published")
        if settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        learning_rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        step_tokens.append(sum(len(example["input_ids"]) for rows in group_rows for row in rows for example in row))
        supervised_tokens += targets
        step_seconds.append(time.perf_counter() - started)
        log.info("step %d/%d loss %.4f (%.2f s)", step + 1, steps, step_loss, step_seconds[-1])

    model.eval()
    transformers_model = model.get_base_model() if settings.method == "lora" else model
    # the staging path would otherwise end up in the model card and config
    transformers_model.name_or_path = transformers_model.config.name_or_path = str(recorded_base)
    if settings.method == "lora":
        model.peft_config["default"].base_model_name_or_path = str(recorded_base)
        model.save_pretrained(staging, save_embedding_layers=False)  # LoRA targets projections, never embeddings
    else:
        model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    seconds = sum(step_seconds)
    result = TrainResult(
        output_dir=str(output_dir), method=settings.method, base_model=str(recorded_base), examples=len(examples),
        dropped=sum(c["dropped"] for c in per_file.values()), truncated=sum(c["truncated"] for c in per_file.values()),
        steps=steps, tokens_trained=sum(step_tokens), supervised_tokens=supervised_tokens, first_loss=losses[0],
        last_loss=losses[-1], seconds=seconds, tokens_per_s=sum(step_tokens) / seconds if seconds else 0.0,
        trainable_params=sum(p.numel() for p in trainable), total_params=sum(p.numel() for p in model.parameters()))
    metrics = {**asdict(result), "losses": losses, "learning_rates": learning_rates, "step_seconds": step_seconds,
               "step_tokens": step_tokens, "max_seq_len": max_len, "micro_batches_per_epoch": micro_per_epoch,
               "device": device, "dtype": str(dtype).removeprefix("torch."), "files": per_file}
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (staging / SETTINGS_FILE).write_text(settings.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Atomic output


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


def run_sft(dataset_files: list[Path], output_dir: Path, settings: TrainSettings) -> TrainResult:
    """Fine-tune on `dataset_files` and publish the model, tokenizer, metrics.json and train_settings.json.

    Everything is written to a staging directory next to `output_dir` and renamed into place at the end, so a
    reader or a retried task sees either the previous complete output or the new one, never half a checkpoint.
    """
    output_dir = Path(output_dir).resolve()
    records_by_file = {Path(path): _read_records(Path(path)) for path in dataset_files}
    if not records_by_file:
        raise TrainInputError("no dataset files given")
    if not any(records_by_file.values()):
        raise TrainInputError(f"no usable training examples: {', '.join(map(str, records_by_file))} hold no records")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(output_dir)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=_staging_prefixes(output_dir)[0]))
    try:
        result = _train(staging, output_dir, records_by_file, settings)
        _publish(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Entry point of the training pod


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

    Progress goes to stderr; the last stdout line is the TrainResult as JSON. Exit status 2 means bad input.
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
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
