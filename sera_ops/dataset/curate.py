"""Curate published datasets: SERA's heuristic filters (`filter.py`) and subsampling (`scale.py`).

See docs/sera-behaviour.md#curation-scripts for what SERA's scripts did.

Inputs are dataset directories as `assemble` writes them (`t1.jsonl`, `t2.jsonl`, `stats.json`); the output is a
directory with the curated `t1.jsonl`/`t2.jsonl` and `curation.json`, which counts the records before and after every
step. Each split is curated on its own with the same steps, in the order given; subsampling comes last.

Filters (a record is removed when its value is above the threshold):
- `long_edit` (40): changed lines of the record's own patch (P1 for t1, P2 for t2), carried in the record as
  `changed_lines` (`sera_ops.verify.changed_lines`: hunks are read by their line counts, so a removed `--…` line is
  a change and not a header as in SERA; whitespace-only changes are not counted).
- `user_length` (600): mean tokens per user turn (the task and every tool output). SERA stopped at a submit-review
  message that mini-swe-agent trajectories do not have, divided by half the message count instead of the number of
  user turns, and crashed as shipped (missing tokenizer argument).

Subsampling:
- `random:N` — N records drawn with the seed.
- `repo:N` — whole repositories (`stats.json`'s `repo` of each input) in seeded random order until at least N records.
  SERA grouped by the instance id minus its last character, which split a repository into tiny groups.
- `tokens:BUDGET:N` — each record cut to its last assistant turn that still fits in BUDGET tokens (messages counted in
  ChatML, as SERA's length filter does; a record with no assistant turn inside the budget is dropped), ranked by the
  fraction of messages kept, the top N kept (ties in input order).

Tokens come from a local Hugging Face tokenizer directory (`--tokenizer`, never downloaded) or, without one, from
`estimate_tokens`: chat markers such as `<|im_start|>`, runs of word characters and single other non-space characters
each count one. It is deterministic and needs no files; on code and English it lands within a small factor of a BPE
tokenizer's count, so thresholds meant for a real tokenizer are approximate with it. Records keep their input order.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sera_ops.store.io import StorePath, atomic_write_json, atomic_write_jsonl, read_json, store_root
from sera_ops.store.layout import SPLITS, DatasetFiles

FILTER_DEFAULTS = {"long_edit": 40, "user_length": 600}
SUBSAMPLE_MODES = ("random", "repo", "tokens")
ESTIMATE = "estimate"

TokenCounter = Callable[[str], int]

_WORD_PIECES = re.compile(r"<\|\w+\|>|\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """Deterministic stand-in for a tokenizer (see the module docstring)."""
    return len(_WORD_PIECES.findall(text))


def load_token_counter(tokenizer_dir: Path | None) -> TokenCounter:
    """A local HF tokenizer's token count (no special tokens added), or `estimate_tokens` without a directory."""
    if tokenizer_dir is None:
        return estimate_tokens
    if not Path(tokenizer_dir).is_dir():
        raise ValueError(f"tokenizer {tokenizer_dir} is not a directory (a local Hugging Face tokenizer is needed)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def chatml_tokens(message: dict, count: TokenCounter) -> int:
    """A message's tokens as the trainer sees it, wrapped in ChatML (SERA's accounting: docs/sera-behaviour.md,
    #token-accounting)."""
    return count(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n")


@dataclass(frozen=True)
class Sample:
    """A record and the repository it came from (its input's `stats.json`), which `repo` subsampling groups by."""

    repo: str
    record: dict


@dataclass(frozen=True)
class Step:
    """One curation step: a filter (`threshold`) or the subsampling (`n`, and `budget` for `tokens`)."""

    name: str
    threshold: int | None = None
    n: int | None = None
    budget: int | None = None

    @property
    def subsampling(self) -> bool:
        return self.name in SUBSAMPLE_MODES

    def describe(self) -> dict:
        return {key: value for key, value in vars(self).items() if value is not None}


def parse_filter(text: str) -> Step:
    """`long_edit` or `long_edit=40` (likewise `user_length`)."""
    name, equals, value = text.partition("=")
    if name not in FILTER_DEFAULTS:
        raise ValueError(f"unknown filter {name!r}: use one of {', '.join(FILTER_DEFAULTS)} (e.g. long_edit=40)")
    return Step(name, threshold=_count(value, f"filter {name}") if equals else FILTER_DEFAULTS[name])


def parse_subsample(text: str) -> Step:
    """`random:N`, `repo:N` or `tokens:BUDGET:N`."""
    mode, *values = text.split(":")
    if mode not in SUBSAMPLE_MODES or len(values) != (2 if mode == "tokens" else 1):
        raise ValueError(f"bad subsampling {text!r}: use random:N, repo:N or tokens:BUDGET:N")
    numbers = [_count(value, f"subsampling {mode}") for value in values]
    return Step(mode, n=numbers[-1], budget=numbers[0] if mode == "tokens" else None)


def _count(value: str, what: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{what}: expected a whole number >= 1, got {value!r}")
    return int(value)


def load_datasets(dataset_dirs: Iterable[Path]) -> tuple[dict[str, list[Sample]], list[dict]]:
    """Every input's records per split, tagged with its repository, and a description of each input."""
    samples: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    inputs = []
    for directory in map(store_root, dataset_dirs):
        files = DatasetFiles(directory)
        if not files.stats.is_file():
            raise ValueError(f"{directory} is not a dataset directory (no {files.stats.name}); pass a run's dataset/ "
                             "folder")
        repo = read_json(files.stats)["repo"]
        counts = {}
        for split in SPLITS:
            path = files.split(split)
            records = [Sample(repo, record) for record in read_jsonl(path)] if path.exists() else []
            samples[split] += records
            counts[split] = len(records)
        inputs.append({"dataset_dir": str(directory), "repo": repo, "records": counts})
    return samples, inputs


def read_jsonl(path: StorePath) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def user_turn_mean(record: dict, count: TokenCounter) -> float:
    """Mean tokens of the record's user turns (0 when it has none)."""
    lengths = [count(m["content"]) for m in record["messages"] if m["role"] == "user"]
    return sum(lengths) / len(lengths) if lengths else 0.0


def _changed_lines(sample: Sample) -> int:
    record = sample.record
    if "changed_lines" not in record:
        raise ValueError(f"record {record.get('instance_id')} ({sample.repo}) has no changed_lines: its dataset was "
                         "assembled before curation existed; re-run the run's assemble task (or `sera run` with its "
                         "run id) to add it")
    return record["changed_lines"]


def apply_filter(step: Step, samples: list[Sample], count: TokenCounter) -> list[Sample]:
    if step.name == "long_edit":
        return [s for s in samples if _changed_lines(s) <= step.threshold]
    return [s for s in samples if user_turn_mean(s.record, count) <= step.threshold]


def truncate_to_budget(record: dict, budget: int, count: TokenCounter) -> dict | None:
    """The record cut after its last assistant turn within the longest message prefix that fits in `budget` tokens;
    None when no assistant turn fits."""
    messages, total, fits = record["messages"], 0, 0
    for message in messages:
        total += chatml_tokens(message, count)
        if total > budget:
            break
        fits += 1
    last = max((i for i, m in enumerate(messages[:fits]) if m["role"] == "assistant"), default=None)
    return None if last is None else {**record, "messages": messages[:last + 1]}


def subsample(step: Step, samples: list[Sample], seed: int, count: TokenCounter) -> list[Sample]:
    """The subsampled records, in input order (a fresh generator per call, so both splits see one repo order)."""
    rng = random.Random(seed)
    if step.name == "random":
        chosen = set(rng.sample(range(len(samples)), min(step.n, len(samples))))
        return [s for i, s in enumerate(samples) if i in chosen]
    if step.name == "repo":
        sizes = Counter(s.repo for s in samples)
        repos = sorted(sizes)
        rng.shuffle(repos)
        kept: set[str] = set()
        total = 0
        for repo in repos:
            if total >= step.n:
                break
            kept.add(repo)
            total += sizes[repo]
        return [s for s in samples if s.repo in kept]
    ranked = []
    for index, sample in enumerate(samples):
        cut = truncate_to_budget(sample.record, step.budget, count)
        if cut is not None:
            ranked.append((-len(cut["messages"]) / len(sample.record["messages"]), index, Sample(sample.repo, cut)))
    return [sample for _, _, sample in sorted(sorted(ranked)[:step.n], key=lambda item: item[1])]


def curate(dataset_dirs: list[Path], out: Path, steps: list[Step], seed: int = 0,
           tokenizer_dir: Path | None = None) -> dict:
    """Write the curated t1/t2.jsonl and curation.json into `out`; return the report."""
    out = Path(out).resolve()
    if any(out == Path(d).resolve() for d in dataset_dirs):
        raise ValueError(f"--out {out} is one of the inputs; curate into a new directory")
    if sum(step.subsampling for step in steps) > 1:
        raise ValueError("give at most one subsampling")
    samples, inputs = load_datasets(dataset_dirs)
    count = load_token_counter(tokenizer_dir)
    report_steps = []
    for step in sorted(steps, key=lambda s: s.subsampling):  # filters in the order given, then subsampling
        counts = {}
        for split in SPLITS:
            before = len(samples[split])
            samples[split] = (subsample(step, samples[split], seed, count) if step.subsampling
                              else apply_filter(step, samples[split], count))
            counts[split] = {"before": before, "after": len(samples[split])}
        report_steps.append({**step.describe(), **counts})
    report = {"inputs": inputs, "tokenizer": str(tokenizer_dir) if tokenizer_dir else ESTIMATE, "seed": seed,
              "steps": report_steps,
              "records": {split: atomic_write_jsonl(DatasetFiles(out).split(split), (s.record for s in samples[split]))
                          for split in SPLITS}}
    atomic_write_json(DatasetFiles(out).curation, report)
    return report
