"""What a published dataset carries besides its JSONL: Parquet copies, a dataset card and plots.

`assemble` calls `write_dataset_card` after stats.json, so every run's `dataset/` also holds `t1.parquet`, `t2.parquet`
(the same records, for pandas and `datasets`), `README.md` (a Hugging Face dataset card: a YAML header with a config per
split and the run's provenance, then what the records are, how to load them and what they cannot promise) and the plots
in `store.layout.PLOTS`. Each file is written to a temp file and renamed into place (or uploaded in one PUT), like the
rest of the run store. `push_dataset` uploads such a folder to a Hugging Face Hub dataset repository.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from sera_ops.dataset.curate import SPLITS, chatml_tokens, estimate_tokens, read_jsonl
from sera_ops.dataset.formats import BASH_TOOL_JSON
from sera_ops.store.io import atomic_write_text, replacing
from sera_ops.store.layout import DatasetFiles, RunStore

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FUNNEL = (("instances", "instances"), ("rollout_one", "rollout one"), ("judged_good", "judged good"),
          ("synthetic_prs", "synthetic PRs"), ("rollout_two", "rollout two"), ("verified", "verified"))
"""The statistics' keys of the stages an instance passes, in order, with their labels."""
PROMPTS_PACKAGE = "sera_ops.prompts"
SAMPLE_RECORD = {"messages": [{"role": "user", "content": "", "train": False}], "instance_id": "",
                 "tool_json": BASH_TOOL_JSON, "changed_lines": 0}
"""Its columns go into an empty split's Parquet file when no split has a record to take them from, so Parquet files
of many runs combine (pandas, pyarrow datasets) whether a split happened to be empty or not."""


def write_dataset_card(store: RunStore, stats: dict, recalls: list[float]) -> None:
    """Parquet, plots and the card for the run's dataset; `recalls` are rollout two's recalls (every verdict)."""
    out = store.dataset
    records = {split: read_jsonl(out.split(split)) for split in SPLITS}
    _write_parquet(out, records)
    failed = set(stats["commits"]["failed"])
    commits = [c for c in store.read_json(store.commits, {}).get("commits", []) if c not in failed]
    commit_of = {i["instance_id"]: i["commit"] for i in store.instance_records()}
    per_commit = {split: Counter(commit_of[r["instance_id"]] for r in rows) for split, rows in records.items()}
    _write_plots(out, stats, records, recalls, {commit: {split: per_commit[split][commit] for split in SPLITS}
                                                for commit in commits})
    atomic_write_text(out.card, card_text(stats, commits, store.read_json(store.manifest, {})))


def _write_parquet(out: DatasetFiles, records: dict[str, list[dict]]) -> None:
    """`<split>.parquet` per split; an empty one gets the other split's columns (else SAMPLE_RECORD's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = {split: pa.Table.from_pylist(rows) for split, rows in records.items()}
    schema = next((table.schema for table in tables.values() if table.num_rows),
                  pa.Table.from_pylist([SAMPLE_RECORD]).schema)
    for split, table in tables.items():
        with replacing(out.parquet(split)) as tmp:
            pq.write_table(table if table.num_rows else schema.empty_table(), tmp)


def record_tokens(record: dict) -> int:
    """Estimated tokens of a record as trained on (ChatML, `sera_ops.curate.estimate_tokens`)."""
    return sum(chatml_tokens(message, estimate_tokens) for message in record["messages"])


def _write_plots(out: DatasetFiles, stats: dict, records: dict[str, list[dict]], recalls: list[float],
                 per_commit: dict[str, dict[str, int]]) -> None:
    """The funnel of stage counts; histograms of rollout two's recall against the threshold and of assistant turns
    and tokens per record (t1 and t2); records per commit."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def plot(kind: str, draw: Callable[[Axes], None]) -> None:
        figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
        draw(figure.subplots())
        with replacing(out.plot(kind)) as tmp:
            figure.savefig(tmp, format="png")

    def histogram(kind: str, title: str, xlabel: str, series: dict[str, list[float]], bins: int | list[float],
                  marker: float | None = None) -> None:
        def draw(axes: Axes) -> None:
            axes.hist(list(series.values()), bins=bins,
                      label=[f"{label} ({len(values)})" for label, values in series.items()])
            if marker is not None:
                axes.axvline(marker, color="#cf222e", linestyle="--", label=f"threshold {marker:g}")
            axes.set(title=title, xlabel=xlabel, ylabel="count")
            axes.yaxis.set_major_locator(MaxNLocator(integer=True))
            axes.legend()
        plot(kind, draw)

    def funnel(axes: Axes) -> None:
        counts = [stats[key] for key, _ in FUNNEL]
        bars = axes.barh([label for _, label in FUNNEL], counts, color="#0969da")
        axes.bar_label(bars, labels=[f"{n} ({n / counts[0]:.0%})" if counts[0] else str(n) for n in counts],
                       padding=3)
        axes.invert_yaxis()  # the first stage on top
        axes.set(title="Instances through the stages", xlabel="instances", xlim=(0, max(1, counts[0]) * 1.25))
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))

    def commits(axes: Axes) -> None:
        positions = range(len(per_commit))
        for offset, split in zip((-0.2, 0.2), SPLITS, strict=True):
            axes.bar([x + offset for x in positions], [counts[split] for counts in per_commit.values()], width=0.4,
                     label=f"{split} ({sum(counts[split] for counts in per_commit.values())})")
        axes.set_xticks(list(positions), [commit[:7] for commit in per_commit], fontfamily="monospace",
                        rotation=45 if len(per_commit) > 8 else 0)
        axes.set(title="Records per commit", xlabel="commit", ylabel="records")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend()

    plot("funnel", funnel)
    histogram("recall", "Rollout two: changed-line recall of P1", "recall", {"rollout two": recalls},
              bins=[i / 10 for i in range(11)], marker=stats["threshold"])
    turns = {split: [sum(m["role"] == "assistant" for m in r["messages"]) for r in rows]
             for split, rows in records.items()}
    most = max((n for values in turns.values() for n in values), default=1)
    histogram("turns", "Assistant turns per record", "assistant turns", turns,
              bins=[n - 0.5 for n in range(most + 2)])  # one bar per whole number of turns
    histogram("tokens", "Tokens per record (estimated)", "tokens",
              {split: [record_tokens(r) for r in rows] for split, rows in records.items()}, bins=20)
    plot("commits", commits)


def prompt_versions() -> dict[str, str]:
    """First 12 hex digits of the sha256 of each packaged prompt file, and of all of them together (`all`): which
    wording made the data, comparable across runs and installs without a version number to forget to bump."""
    files = sorted((f for f in resources.files(PROMPTS_PACKAGE).iterdir()
                    if f.is_file() and not f.name.endswith((".py", ".pyc"))), key=lambda f: f.name)
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:12] for f in files}
    combined = "".join(f"{name} {digest}\n" for name, digest in digests.items())
    return {"all": hashlib.sha256(combined.encode()).hexdigest()[:12], **digests}


def _size_category(count: int) -> str:
    """Hugging Face's `size_categories` value for a number of records."""
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if count < bound:
            return label
    return "1M<n<10M"


def _demonstrations(synth: dict) -> str:
    if synth.get("demo_issues_from"):
        return f"issues of the GitHub repository {synth['demo_issues_from']['github']}"
    return f"the file {Path(synth['demo_issues']).name}" if synth.get("demo_issues") else "the packaged pool"


EVALUATION_START, EVALUATION_END = "<!-- sera:evaluation -->", "<!-- /sera:evaluation -->"
"""Markers around the card's evaluation results, which `sera_eval__<repo>` fills in and replaces."""


def evaluation_section(held: dict | None) -> str:
    """What the card says about the held-out split; the evaluation DAG adds its table between the markers."""
    if not held:
        return (f"No tasks were held out (no `eval:` settings), so no evaluation can be run on this repository's own "
                f"tasks.\n\n{EVALUATION_START}\n{EVALUATION_END}")
    return (f"{held['instances']} instances were sampled from held-out start functions, chosen before generation "
            f"(`eval:` settings) and kept out of every run's training data; {held['tasks']} of them became "
            f"evaluation tasks (the synthetic PR as the problem statement, the commit image as the environment, "
            f"rollout one's patch as the reference). None of their instance ids is in `t1` or `t2`, and a record "
            f"whose patch is a task's reference patch is dropped ({held.get('dropped', 0)} here).\n\n"
            f"{EVALUATION_START}\nNot evaluated yet: `sera_eval__<repo>` runs after training.\n{EVALUATION_END}")


def card_text(stats: dict, commits: list[str], manifest: dict) -> str:
    """The dataset card (README.md): YAML front matter (what `datasets` and the Hub read: a config per split, and the
    run's provenance), then the description. `manifest` is the run's manifest.json (the teacher model, settings)."""
    repo, records = stats["repo"], stats["records"]
    threshold = stats["threshold"]
    kind = "hard: every changed line" if threshold >= 1 else "none" if threshold <= 0 else "soft"
    synth = manifest.get("repo_config", {}).get("synth", {})
    model = manifest.get("model")
    writer_server = synth.get("model_server") or stats["model_server"]
    versions = prompt_versions()
    counts = {key: stats[key] for key, _ in FUNNEL} | {"duplicate_patches": stats["duplicate_patches"]}
    front_matter = {
        "license": "other",
        "pretty_name": f"SERA SFT data from {repo}",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["sft", "coding-agent", "agent-trajectories", "sera", "synthetic"],
        "size_categories": [_size_category(sum(records.values()))],
        "configs": [{"config_name": split, "data_files": [{"split": "train", "path": f"{split}.parquet"}],
                     **({"default": True} if split == SPLITS[0] else {})} for split in SPLITS],
        "provenance": {
            "repository": repo, "run_id": stats["run_id"], "commits": commits,
            "teacher": {"model_server": stats["model_server"], "model": model},
            "judge_and_writer_server": writer_server, "demonstration_issues": _demonstrations(synth),
            "verification_threshold": threshold, "format": stats["format"], "prompt_versions": versions,
            "counts": counts, "records": records,
        },
    }
    facts = [("repository", f"`{repo}`"), ("run", f"`{stats['run_id']}`"),
             ("commits", ", ".join(f"`{c[:12]}`" for c in commits) or "—"),
             ("teacher", f"`{model or 'not recorded'}` (model server `{stats['model_server']}`)"),
             ("judge and PR writer", f"model server `{writer_server}`"),
             ("demonstration issues", _demonstrations(synth)),
             ("verification threshold", f"{threshold:g} ({kind})"), ("format", stats["format"]),
             ("prompt version", f"`{versions['all']}` (sha256 of the packaged prompts; per file in the header)"),
             ("functions", stats["functions"]), *((label, counts[key]) for key, label in FUNNEL),
             ("duplicate patches (dropped)", counts["duplicate_patches"]), ("mean recall", stats["mean_recall"]),
             *((f"{split} records", records[split]) for split in SPLITS)]
    held = stats.get("held_out") and {**stats["held_out"], "dropped": stats.get("held_out_patches", 0)}
    if held:
        facts.append(("held out for evaluation", f"{held['instances']} instances, {held['tasks']} tasks "
                                                 f"({held['tasks_in_repo']} in the repository's store)"))
    table = "\n".join(f"| {key} | {'—' if value is None else value} |" for key, value in facts)
    header = yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True, width=120)
    return f"""---
{header}---

# SERA SFT data: {repo}

Supervised fine-tuning data for coding agents, generated from the repository `{repo}` the way allenai's SERA
(Soft-Verified Efficient Repository Agents) does.

| | |
|---|---|
{table}

## How the records were made

For each sampled start function a teacher model drove a mini-swe-agent agent (a bash tool) twice in a sandboxed
copy of the commit. Rollout one got a deliberately vague bug report about the function; a judge model accepted or
rejected its patch (P1), and a synthetic pull request was written from P1 in the style of a demonstration issue,
describing the symptom without saying where the code is. Rollout two got that pull request; its patch (P2) is
verified softly by the fraction of P1's changed lines that reappear in P2 (recall) against the threshold above. No
tests are run.

- `t1`: rollout-one trajectories whose patch the judge accepted (a patch seen before is dropped).
- `t2`: rollout-two trajectories whose recall reached the threshold.

## Format

One record per trajectory: `messages` (`role`, `content`, `train`: true exactly on assistant turns), `instance_id`,
`tool_json` (the bash tool's schema) and `changed_lines` (changed lines of the record's own patch). In the `hermes`
format the system prompt lists the tool, assistant turns end in `<tool_call>` blocks and tool output comes back as a
user turn in `<tool_response>` tags. Files: `t1.jsonl`/`t2.jsonl` and the same records as `t1.parquet`/`t2.parquet`;
`stats.json` (every count of the run).

## Plots

![instances through the stages](funnel.png)
![rollout two's recall](recall.png)
![assistant turns per record](turns.png)
![tokens per record](tokens.png)
![records per commit](commits.png)

`funnel.png`: instances through the stages; `recall.png`: rollout two's recall against the threshold; `turns.png`
and `tokens.png`: trajectory lengths in assistant turns and in tokens (estimated by word pieces, not a model's
tokenizer); `commits.png`: records per commit.

## Evaluation

{evaluation_section(held)}

## Loading

```python
from datasets import load_dataset
t2 = load_dataset("<this folder, or ORG/NAME on the Hub>", "t2", split="train")  # configs: t1 (default), t2
data = load_dataset("parquet", data_files={{"t1": "t1.parquet", "t2": "t2.parquet"}})  # or "json" and the .jsonl

import pandas as pd
t2 = pd.read_parquet("t2.parquet")
```

## Known limitations

- Verification is soft: a `t2` record reproduced enough of P1's changed lines, and a `t1` record convinced one judge
  model. Neither patch was tested, and P1 may "fix" code that was not broken (the vague report asks for a fix in any
  case, as in SERA).
- The tasks are synthetic, written by the teacher; they read like issues but no user filed them.
- One repository and its commits: the records teach this code base; mix repositories for a general agent.
- Duplicates are removed only when two rollout-one patches change the same lines; similar trajectories remain.
- Token counts in the plots are estimates; filter with the target model's tokenizer (`sera curate --tokenizer`).
- `datasets` refuses to load a split without records ("corresponds to no data"); its Parquet file still has the
  columns, for pandas and pyarrow.

## License

Derived from `{repo}`; check its license before using or redistributing this data. The trajectories contain the
repository's code and whatever the teacher model wrote.
"""


def published_files(dataset_dir: Path) -> list[Path]:
    """The files of an assembled dataset folder that belong on the Hub; a folder without its card and Parquet files
    (one that `assemble` did not write, or a curated one) is refused rather than half uploaded."""
    files = DatasetFiles(dataset_dir)
    missing = [path.name for path in (files.card, *(files.parquet(split) for split in SPLITS)) if not path.is_file()]
    if missing:
        raise ValueError(f"{dataset_dir} is not an assembled dataset folder: it has no {', '.join(missing)}")
    return [path for path in files.published if path.is_file()]


def push_dataset(dataset_dir: Path, repo_id: str, *, private: bool = True, dry_run: bool = False) -> list[Path]:
    """Upload the dataset folder's published files to the Hub dataset repository `repo_id` (created, private unless
    asked otherwise, when missing; the token is huggingface_hub's: $HF_TOKEN or a login). A dry run only checks the
    folder and the name, and returns what would be uploaded."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    files = published_files(dataset_dir)
    if not dry_run:
        api = HfApi()
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=dataset_dir,
                          allow_patterns=[path.name for path in files],
                          commit_message="Upload a SERA dataset (sera push-dataset)")
    return files
