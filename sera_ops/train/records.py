"""Reading the exported records and encoding them as ChatML token ids, with labels on the trained messages only.

Reads the JSONL records `dataset.formats` writes (`{"messages": [{"role", "content", "train"}], ...}`; see
docs/sera-behaviour.md#record-format), renders them as ChatML and trains only on the messages marked `train: true`
(axolotl's `message_field_training`, SERA's primary recipe, #axolotl-recipe): the labels are built here from the `train`
keys and handed to TRL as a tokenised dataset, because TRL's own `assistant_only_loss` follows roles, not the records'
keys. Over-long samples are cut back to the last complete trainable turn that fits, as SERA's torchtune-style length
filter does (#token-accounting), instead of being dropped whole. The tokenizer is passed in: nothing here imports
transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

IM_START, IM_END, END_OF_TEXT, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = (IM_START, IM_END, END_OF_TEXT, PAD)
IGNORE_INDEX = -100  # the label torch's cross-entropy (and transformers' causal LM loss) skips

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TrainInputError(ValueError):
    """The data given to training is unusable (missing file, malformed record, no trainable example)."""


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


def read_records(path: Path) -> list[dict[str, Any]]:
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


def chatml_text(record: Mapping[str, Any]) -> str:
    return "".join(f"{IM_START}{message.get('role', '')}\n{_content_text(message.get('content'))}{IM_END}\n"
                   for message in record["messages"])


def encode_files(tokenizer: Any, records_by_file: dict[Path, list[dict[str, Any]]],
                  max_len: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """The encoded examples of all files, and per file its records, examples, dropped and truncated ones."""
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
