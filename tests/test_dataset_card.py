"""The published dataset's Parquet copies, card and plots, written beside t1/t2.jsonl (sera_ops.dataset_card)."""
import json

import pyarrow.parquet as pq
import pytest

from sera_ops.dataset_card import CARD, PLOTS, record_tokens, write_dataset_card
from sera_ops.postprocess import BASH_TOOL_JSON
from sera_ops.store import RunStore, atomic_write_jsonl

COMMITS = ["a" * 40, "b" * 40, "c" * 40]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(instance_id: str, turns: int) -> dict:
    messages = [{"role": "system", "content": "You are an agent.", "train": False},
                {"role": "user", "content": "Fix the bug.", "train": False}]
    for turn in range(turns):
        messages += [{"role": "assistant", "content": f"<tool_call>ls {turn}</tool_call>", "train": True},
                     {"role": "user", "content": "<tool_response>ok</tool_response>", "train": False}]
    return {"messages": messages[:-1], "instance_id": instance_id, "tool_json": BASH_TOOL_JSON, "changed_lines": turns}


@pytest.fixture
def dataset(tmp_path):
    store = RunStore(tmp_path, "ledger", "manual__1")
    records = {"t1": [record("ledger_aaaaaaa_1", 1), record("ledger_aaaaaaa_2", 3), record("ledger_bbbbbbb_1", 2)],
               "t2": [record("ledger_aaaaaaa_2", 2)]}
    for split, rows in records.items():
        atomic_write_jsonl(store.dataset_dir / f"{split}.jsonl", rows)
    store.write_json(store.path("commits.json"), {"source": "/src/ledger", "commits": COMMITS})
    stats = {"repo": "ledger", "run_id": "manual__1", "model_server": "vllm-glm", "threshold": 0.5,
             "format": "hermes", "commits": {"selected": 3, "ready": 2, "failed": [COMMITS[2]]}, "functions": 41,
             "instances": 4, "judged_good": 3, "synthetic_prs": 3, "verified": 1, "mean_recall": 0.4167,
             "records": {"t1": 3, "t2": 1}}
    write_dataset_card(store, stats, [0.25, 0.0, 1.0])
    return store.dataset_dir, records


def test_parquet_holds_the_same_records_as_jsonl(dataset):
    out, records = dataset
    for split in ("t1", "t2"):
        from_jsonl = [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
        assert pq.read_table(out / f"{split}.parquet").to_pylist() == from_jsonl == records[split]


def test_pandas_reads_the_parquet_files(dataset):
    import pandas as pd

    out, _ = dataset
    frame = pd.read_parquet(out / "t1.parquet")
    assert list(frame["instance_id"]) == ["ledger_aaaaaaa_1", "ledger_aaaaaaa_2", "ledger_bbbbbbb_1"]
    assert list(frame["changed_lines"]) == [1, 3, 2]


def test_the_card_states_source_counts_and_how_to_load(dataset):
    out, _ = dataset
    card = (out / CARD).read_text()
    front_matter = card.split("---\n")[1]
    assert "path: t1.parquet" in front_matter and "path: t2.parquet" in front_matter
    for row in ("| repository | `ledger` |", "| run | `manual__1` |", f"| commits | `{'a' * 12}`, `{'b' * 12}` |",
                "| teacher | model server `vllm-glm`", "| verification threshold | 0.5 (soft) |", "| instances | 4 |",
                "| judged good (rollout one) | 3 |", "| verified (rollout two) | 1 |", "| mean recall | 0.4167 |",
                "| t1 records | 3 |", "| t2 records | 1 |"):
        assert row in card
    assert "c" * 12 not in card  # the failed commit produced nothing
    assert "Derived from `ledger`; check its license" in card
    assert 'load_dataset("parquet"' in card and 'pd.read_parquet("t2.parquet")' in card


def test_plots_are_png_files(dataset):
    out, _ = dataset
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000
    assert not list(out.glob(".*.tmp"))


def test_an_empty_split_still_gets_parquet_and_plots(tmp_path):
    store = RunStore(tmp_path, "ledger", "run")
    for split in ("t1", "t2"):
        atomic_write_jsonl(store.dataset_dir / f"{split}.jsonl", [])
    stats = {"repo": "ledger", "run_id": "run", "model_server": "s", "threshold": 1.0, "format": "hermes",
             "commits": {"selected": 0, "ready": 0, "failed": []}, "functions": 0, "instances": 0, "judged_good": 0,
             "synthetic_prs": 0, "verified": 0, "mean_recall": None, "records": {"t1": 0, "t2": 0}}
    write_dataset_card(store, stats, [])
    assert pq.read_table(store.dataset_dir / "t2.parquet").to_pylist() == []
    card = (store.dataset_dir / CARD).read_text()
    assert "| mean recall | — |" in card and "| commits | — |" in card and "1 (hard: every changed line)" in card
    assert all((store.dataset_dir / name).read_bytes().startswith(PNG_SIGNATURE) for name in PLOTS)


def test_record_tokens_count_chatml_word_pieces():
    # per message: <|im_start|>, the role, <|im_end|> and the content's pieces
    assert record_tokens({"messages": [{"role": "user", "content": "fix it."},
                                       {"role": "assistant", "content": "ok"}]}) == (3 + 3) + (3 + 1)
