"""The evaluation report: the models side by side on the repository's held-out tasks, as JSON, Markdown and a plot,
and the same table in the model card and the dataset card's evaluation section.

Resolved is the share of tasks whose patch reached the recall threshold, per seed; the table gives its mean ± sample
standard deviation over seeds, so two models are only told apart when their difference exceeds the seeds' spread.
"""

from __future__ import annotations

from dataclasses import dataclass

from sera_ops.dataset.card import EVALUATION_END, EVALUATION_START
from sera_ops.store.io import StorePath, atomic_write_json, atomic_write_text, replacing
from sera_ops.store.layout import EvalRunFiles


@dataclass(frozen=True)
class ReportHeader:
    """What was evaluated: which repository, evaluation run, trained model and tasks."""

    repo: str
    run_id: str
    model_dir: str | None
    tasks: int
    seeds: int
    threshold: float


def write_report(files: EvalRunFiles, header: ReportHeader, summaries: list[dict], failures: list[dict]) -> dict:
    """report.json, report.md and report.png of one evaluation run; the report."""
    report = {**header.__dict__, "models": summaries, "failed": failures}
    atomic_write_json(files.report, report)
    atomic_write_text(files.report_text, f"# Evaluation: {header.repo}\n\n{report_table(report)}\n")
    if summaries:
        _plot(files.report_plot, summaries, header)
    return report


def _cell(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}%" if percent else f"{value:g}"


def report_table(report: dict) -> str:
    """The Markdown table: one row per model (failed and not evaluated ones say why), resolved as mean ± std over
    seeds."""
    rows = ["| model | served as | tasks | resolved (mean ± std) | mean recall | tests pass | tokens / task | "
            "cost / task |", "|---|---|---|---|---|---|---|---|"]
    for summary in report["models"]:
        resolved = f"{_cell(summary['resolved_mean'])} ± {_cell(summary['resolved_std'])}"
        rows.append(f"| {summary['model']} | `{summary['model_id']}` on `{summary['server']}` | {summary['tasks']} | "
                    f"{resolved} | {_cell(summary['mean_recall'], percent=False)} | "
                    f"{_cell(summary['tests_pass_rate'])} | {summary['tokens_per_task']:g} | "
                    f"${summary['cost_per_task_usd']:.4f} |")
    for failure in report["failed"]:
        outcome = "not evaluated" if failure.get("skipped") else "failed"
        rows.append(f"| {failure['model']} | `{failure.get('server') or '—'}` | — | {outcome}: "
                    f"{failure['error'].splitlines()[0][:160]} | — | — | — | — |")
    seeds, threshold = report["seeds"], report["threshold"]
    return ("\n".join(rows) + f"\n\n{report['tasks']} held-out tasks of `{report['repo']}`, {seeds} seed"
            f"{'s' if seeds != 1 else ''} per model; resolved: changed-line recall of the reference patch ≥ "
            f"{threshold:g}. Evaluation run `{report['run_id']}`.")


def _plot(path: StorePath, summaries: list[dict], header: ReportHeader) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    axes = figure.subplots()
    labels = [summary["model"] for summary in summaries]
    means = [100 * (summary["resolved_mean"] or 0) for summary in summaries]
    errors = [100 * (summary["resolved_std"] or 0) for summary in summaries]
    axes.bar(labels, means, yerr=errors, capsize=4, color="#4c72b0")
    axes.set_ylabel("resolved (%)")
    axes.set_ylim(0, 100)
    axes.set_title(f"{header.repo}: {header.tasks} held-out tasks, mean ± std over {header.seeds} seeds")
    with replacing(path) as tmp:
        figure.savefig(tmp, format="png")


def with_evaluation(card: str, table: str) -> str:
    """`card` with the text between the evaluation markers replaced by `table`; appended under an Evaluation
    heading when the card has no markers (a model card written by transformers or peft)."""
    block = f"{EVALUATION_START}\n{table}\n{EVALUATION_END}"
    if EVALUATION_START in card and EVALUATION_END in card:
        before, rest = card.split(EVALUATION_START, 1)
        return before + block + rest.split(EVALUATION_END, 1)[1]
    return f"{card.rstrip()}\n\n## Evaluation\n\n{block}\n"


TEMPLATE_MARK = "[More Information Needed]"
"""What the model-card templates of transformers and peft fill every section with."""


def update_card(card: StorePath, table: str, *, title: str, facts: list[tuple[str, str]] = ()) -> None:
    """Put the evaluation table into the card at `card`. A missing card, or the empty template transformers and peft
    write, is replaced by one of ours (`title`, then `facts` as a table), keeping the template's metadata header."""
    text = card.read_text(encoding="utf-8") if card.exists() else ""
    if not text or TEMPLATE_MARK in text:
        rows = "".join(f"| {name} | {value} |\n" for name, value in facts)
        text = _front_matter(text) + f"# {title}\n\n" + (f"| | |\n|---|---|\n{rows}" if rows else "")
    atomic_write_text(card, with_evaluation(text, table))


def _front_matter(card: str) -> str:
    """The YAML metadata block that opens a Hugging Face card (`---` … `---`), or nothing."""
    if card.startswith("---\n") and "\n---\n" in card[4:]:
        return card[:card.index("\n---\n", 4) + 5] + "\n"
    return ""
