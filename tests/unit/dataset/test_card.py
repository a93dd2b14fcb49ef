"""The published dataset's Parquet copies, card and plots, written beside t1/t2.jsonl (sera_ops.dataset.card)."""
import json

import pyarrow.parquet as pq
import pytest
import yaml

from sera_ops.cli import main
from sera_ops.dataset.card import prompt_versions, published_files, record_tokens, write_dataset_card
from sera_ops.dataset.formats import BASH_TOOL_JSON
from sera_ops.store.io import atomic_write_jsonl
from sera_ops.store.layout import CARD, PLOTS, RunStore

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
    store.write_json(store.commits, {"source": "/src/ledger", "commits": COMMITS})
    store.write_json(store.instances, [{"instance_id": f"ledger_{c[:7]}_{n}", "commit": c}
                                                    for c in COMMITS[:2] for n in (1, 2)])
    synth = {"model_server": "vllm-judge", "demo_issues": "/cfg/ledger-issues.json"}
    store.write_json(store.manifest, {"model_server": "vllm-glm", "model": "zai-org/GLM-4.6",
                                                   "repo_config": {"synth": synth}})
    stats = {"repo": "ledger", "run_id": "manual__1", "model_server": "vllm-glm", "threshold": 0.5,
             "format": "hermes", "commits": {"selected": 3, "ready": 2, "failed": [COMMITS[2]]}, "functions": 41,
             "instances": 4, "rollout_one": 4, "judged_good": 3, "duplicate_patches": 0, "synthetic_prs": 3,
             "rollout_two": 3, "verified": 1, "mean_recall": 0.4167, "records": {"t1": 3, "t2": 1}}
    store.write_json(store.dataset_dir / "stats.json", stats)
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
    for row in ("| repository | `ledger` |", "| run | `manual__1` |", f"| commits | `{'a' * 12}`, `{'b' * 12}` |",
                "| teacher | `zai-org/GLM-4.6` (model server `vllm-glm`) |", "| judge and PR writer | model server "
                "`vllm-judge` |", "| demonstration issues | the file ledger-issues.json |",
                "| verification threshold | 0.5 (soft) |", "| instances | 4 |", "| judged good | 3 |",
                "| rollout two | 3 |", "| verified | 1 |", "| mean recall | 0.4167 |", "| t1 records | 3 |",
                "| t2 records | 1 |", f"| prompt version | `{prompt_versions()['all']}`"):
        assert row in card
    assert "c" * 12 not in card  # the failed commit produced nothing
    assert "## Known limitations" in card and "Derived from `ledger`; check its license" in card
    assert 'load_dataset("parquet"' in card and 'pd.read_parquet("t2.parquet")' in card
    assert all(f"]({name})" in card for name in PLOTS)


def test_the_card_header_follows_the_hub_format(dataset):
    out, _ = dataset
    header = yaml.safe_load((out / CARD).read_text().split("---\n")[1])
    assert header["configs"] == [
        {"config_name": "t1", "data_files": [{"split": "train", "path": "t1.parquet"}], "default": True},
        {"config_name": "t2", "data_files": [{"split": "train", "path": "t2.parquet"}]}]
    assert header["size_categories"] == ["n<1K"] and header["task_categories"] == ["text-generation"]
    provenance = header["provenance"]
    assert provenance["commits"] == COMMITS[:2] and provenance["repository"] == "ledger"
    assert provenance["teacher"] == {"model_server": "vllm-glm", "model": "zai-org/GLM-4.6"}
    assert provenance["verification_threshold"] == 0.5 and provenance["records"] == {"t1": 3, "t2": 1}
    assert provenance["counts"] == {"instances": 4, "rollout_one": 4, "judged_good": 3, "synthetic_prs": 3,
                                    "rollout_two": 3, "verified": 1, "duplicate_patches": 0}
    versions = provenance["prompt_versions"]
    assert {"all", "judge.j2", "synth_pr.j2", "rollout_one.yaml", "agent.yaml", "demo_issues.json"} <= set(versions)
    assert "__init__.py" not in versions and all(len(digest) == 12 for digest in versions.values())


def test_datasets_loads_both_splits_from_parquet_jsonl_and_the_card(dataset, tmp_path):
    from datasets import load_dataset

    out, records = dataset
    cache = str(tmp_path / "hf-cache")
    for builder, kind in (("parquet", "parquet"), ("json", "jsonl")):
        loaded = load_dataset(builder, data_files={split: str(out / f"{split}.{kind}") for split in records},
                              cache_dir=cache)
        for split, rows in records.items():
            assert loaded[split]["instance_id"] == [row["instance_id"] for row in rows]
            assert loaded[split][0]["messages"] == rows[0]["messages"]
    by_config = {split: load_dataset(str(out), split, split="train", cache_dir=cache) for split in records}
    assert {split: len(rows) for split, rows in by_config.items()} == {"t1": 3, "t2": 1}


def test_an_empty_split_takes_the_other_splits_columns(dataset, tmp_path):
    import pandas as pd

    out, _ = dataset
    atomic_write_jsonl(out / "t2.jsonl", [])
    write_dataset_card(RunStore(tmp_path, "ledger", "manual__1"), json.loads((out / "stats.json").read_text()), [])
    assert pq.read_schema(out / "t2.parquet") == pq.read_schema(out / "t1.parquet")
    combined = pd.concat([pd.read_parquet(out / "t1.parquet"), pd.read_parquet(out / "t2.parquet")])
    assert len(combined) == 3 and list(combined.columns) == ["messages", "instance_id", "tool_json", "changed_lines"]


def test_plots_are_png_files(dataset):
    from matplotlib.image import imread

    out, _ = dataset
    assert {"funnel.png", "recall.png", "turns.png", "commits.png"} <= set(PLOTS)
    for name in PLOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 2000
        pixels = imread(out / name)
        assert pixels.shape[:2] == (360, 640) and pixels.std() > 0.05  # drawn on, not a blank canvas
    assert not list(out.glob(".*.tmp"))


def test_an_empty_split_still_gets_parquet_and_plots(tmp_path):
    store = RunStore(tmp_path, "ledger", "run")
    for split in ("t1", "t2"):
        atomic_write_jsonl(store.dataset_dir / f"{split}.jsonl", [])
    stats = {"repo": "ledger", "run_id": "run", "model_server": "s", "threshold": 1.0, "format": "hermes",
             "commits": {"selected": 0, "ready": 0, "failed": []}, "functions": 0, "instances": 0, "rollout_one": 0,
             "judged_good": 0, "duplicate_patches": 0, "synthetic_prs": 0, "rollout_two": 0, "verified": 0,
             "mean_recall": None, "records": {"t1": 0, "t2": 0}}
    write_dataset_card(store, stats, [])
    assert pq.read_table(store.dataset_dir / "t2.parquet").to_pylist() == []
    assert pq.read_schema(store.dataset_dir / "t2.parquet").names == ["messages", "instance_id", "tool_json",
                                                                      "changed_lines"]
    card = (store.dataset_dir / CARD).read_text()
    assert "| mean recall | — |" in card and "| commits | — |" in card and "1 (hard: every changed line)" in card
    assert "| teacher | `not recorded` (model server `s`) |" in card and "the packaged pool" in card
    assert all((store.dataset_dir / name).read_bytes().startswith(PNG_SIGNATURE) for name in PLOTS)


def test_record_tokens_count_chatml_word_pieces():
    # per message: <|im_start|>, the role, <|im_end|> and the content's pieces
    assert record_tokens({"messages": [{"role": "user", "content": "fix it."},
                                       {"role": "assistant", "content": "ok"}]}) == (3 + 3) + (3 + 1)


def test_push_dataset_dry_run_lists_the_files_and_uploads_nothing(dataset, monkeypatch, capsys):
    out, _ = dataset
    (out / "curation.json").write_text("{}")  # not part of a published dataset
    monkeypatch.setattr("huggingface_hub.HfApi", None)  # any upload attempt would fail loudly
    assert main(["push-dataset", str(out), "--repo-id", "acme/ledger-sft", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"would upload {4 + len(PLOTS) + 2} file(s) to the private dataset "
                              "https://huggingface.co/datasets/acme/ledger-sft\n")
    names = [line.split()[0] for line in printed.splitlines()[1:]]
    assert names == [path.name for path in published_files(out)] and "curation.json" not in names
    assert names[:2] == [CARD, "stats.json"] and {"t1.parquet", "t2.jsonl", *PLOTS} <= set(names)


def test_push_dataset_refuses_a_folder_without_card_or_a_bad_repo_id(dataset, tmp_path, capsys):
    out, _ = dataset
    assert main(["push-dataset", str(out), "--repo-id", "not a/valid//name", "--dry-run"]) == 2
    assert "error: " in capsys.readouterr().err
    curated = tmp_path / "curated"
    curated.mkdir()
    (curated / "t1.jsonl").write_text("")
    assert main(["push-dataset", str(curated), "--repo-id", "acme/x", "--dry-run"]) == 2
    assert "is not an assembled dataset folder: it has no README.md, t1.parquet, t2.parquet" in capsys.readouterr().err
