"""What a published dataset carries besides its JSONL: Parquet copies, a dataset card and plots.

`assemble` calls `write_dataset_card` after stats.json, so every run's `dataset/` also holds `t1.parquet`,
`t2.parquet` (the same records, for pandas and `datasets`), `README.md` (a Hugging Face style card: what the records
are, where they come from, how to load them) and `recall.png`, `turns.png`, `tokens.png`. Each file is written to a
temp file and renamed into place, like the rest of the run store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sera_ops.curate import SPLITS, chatml_tokens, estimate_tokens, read_jsonl
from sera_ops.store import RunStore, atomic_write_text

PLOTS = ("recall.png", "turns.png", "tokens.png")
CARD = "README.md"


def write_dataset_card(store: RunStore, stats: dict, recalls: list[float]) -> None:
    """Parquet, plots and the card for the run's dataset; `recalls` are rollout two's recalls (every verdict)."""
    out = store.dataset_dir
    records = {split: read_jsonl(out / f"{split}.jsonl") for split in SPLITS}
    for split, rows in records.items():
        _write_parquet(out / f"{split}.parquet", rows)
    _write_plots(out, records, recalls, stats["threshold"])
    commits = store.read_json(store.path("commits.json"), {}).get("commits", [])
    failed = set(stats["commits"]["failed"])
    atomic_write_text(out / CARD, card_text(stats, [c for c in commits if c not in failed]))


@contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temp path beside `path` for a writer that wants a file name; renamed onto `path` when the block succeeds."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_parquet(path: Path, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _replacing(path) as tmp:
        pq.write_table(pa.Table.from_pylist(records), tmp)


def record_tokens(record: dict) -> int:
    """Estimated tokens of a record as trained on (ChatML, `sera_ops.curate.estimate_tokens`)."""
    return sum(chatml_tokens(message, estimate_tokens) for message in record["messages"])


def _write_plots(out: Path, records: dict[str, list[dict]], recalls: list[float], threshold: float) -> None:
    """Histograms: rollout two's recall against the threshold; assistant turns and tokens per record, t1 and t2."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def histogram(name: str, title: str, xlabel: str, series: dict[str, list[float]], bins: int | list[float],
                  marker: float | None = None) -> None:
        figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
        axes = figure.subplots()
        axes.hist(list(series.values()), bins=bins,
                  label=[f"{label} ({len(values)})" for label, values in series.items()])
        if marker is not None:
            axes.axvline(marker, color="#cf222e", linestyle="--", label=f"threshold {marker:g}")
        axes.set(title=title, xlabel=xlabel, ylabel="count")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend()
        with _replacing(out / name) as tmp:
            figure.savefig(tmp, format="png")

    histogram("recall.png", "Rollout two: changed-line recall of P1", "recall", {"rollout two": recalls},
              bins=[i / 10 for i in range(11)], marker=threshold)
    turns = {split: [sum(m["role"] == "assistant" for m in r["messages"]) for r in rows]
             for split, rows in records.items()}
    most = max((n for values in turns.values() for n in values), default=1)
    histogram("turns.png", "Assistant turns per record", "assistant turns", turns,
              bins=[n - 0.5 for n in range(most + 2)])  # one bar per whole number of turns
    histogram("tokens.png", "Tokens per record (estimated)", "tokens",
              {split: [record_tokens(r) for r in rows] for split, rows in records.items()}, bins=20)


def card_text(stats: dict, commits: list[str]) -> str:
    """The dataset card (README.md): YAML front matter that `datasets` reads, then the description."""
    repo, records = stats["repo"], stats["records"]
    threshold = stats["threshold"]
    kind = "hard: every changed line" if threshold >= 1 else "none" if threshold <= 0 else "soft"
    facts = [("repository", f"`{repo}`"), ("run", f"`{stats['run_id']}`"),
             ("commits", ", ".join(f"`{c[:12]}`" for c in commits) or "—"),
             ("teacher", f"model server `{stats['model_server']}` (its model: `model_servers` in platform.yaml)"),
             ("verification threshold", f"{threshold:g} ({kind})"), ("format", stats["format"]),
             ("functions", stats["functions"]), ("instances", stats["instances"]),
             ("judged good (rollout one)", stats["judged_good"]), ("synthetic PRs", stats["synthetic_prs"]),
             ("verified (rollout two)", stats["verified"]), ("mean recall", stats["mean_recall"]),
             *((f"{split} records", records[split]) for split in SPLITS)]
    table = "\n".join(f"| {key} | {'—' if value is None else value} |" for key, value in facts)
    splits = "\n".join(f"  - split: {split}\n    path: {split}.parquet" for split in SPLITS)
    return f"""---
license: other
pretty_name: SERA SFT data from {repo}
tags: [sft, coding-agent, sera, synthetic]
configs:
- config_name: default
  data_files:
{splits}
---

# SERA SFT data: {repo}

Supervised fine-tuning data for coding agents, generated from the repository `{repo}` the way allenai's SERA
(Soft-Verified Efficient Repository Agents) does.

| | |
|---|---|
{table}

## How the records were made

For each sampled start function a teacher model drove a mini-swe-agent agent (a bash tool) twice in a sandboxed
copy of the commit. Rollout one got a deliberately vague bug report about the function; a judge model accepted or
rejected its patch (P1), and a synthetic pull request was written from P1. Rollout two got that pull request; its
patch (P2) is verified softly by the fraction of P1's changed lines that reappear in P2 (recall) against the
threshold above. No tests are run.

- `t1`: rollout-one trajectories whose patch the judge accepted (a patch seen before is dropped).
- `t2`: rollout-two trajectories whose recall reached the threshold.

## Format

One record per trajectory: `messages` (`role`, `content`, `train`: true exactly on assistant turns), `instance_id`,
`tool_json` (the bash tool's schema) and `changed_lines` (changed lines of the record's own patch). In the `hermes`
format the system prompt lists the tool, assistant turns end in `<tool_call>` blocks and tool output comes back as a
user turn in `<tool_response>` tags. Files: `t1.jsonl`/`t2.jsonl` and the same records as `t1.parquet`/`t2.parquet`;
`stats.json` (every count of the run); `recall.png`, `turns.png`, `tokens.png` (histograms; tokens are estimated
by word pieces, not a model's tokenizer).

## Loading

```python
from datasets import load_dataset
data = load_dataset("parquet", data_files={{"t1": "t1.parquet", "t2": "t2.parquet"}})  # or load_dataset("<this dir>")

import pandas as pd
t2 = pd.read_parquet("t2.parquet")
```

## License

Derived from `{repo}`; check its license before using or redistributing this data. The trajectories contain the
repository's code and whatever the teacher model wrote.
"""
