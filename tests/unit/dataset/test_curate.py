"""Curation of published datasets (sera_ops.curate, `sera curate`): filters and subsampling on hand-built records.

Token counts use the word-piece estimate unless a test says otherwise: a message costs its content's pieces plus 3 in
ChatML (`<|im_start|>`, the role, `<|im_end|>`), so "a b" as a user turn is 2 tokens, and 5 wrapped.
"""
import json
import random
from pathlib import Path

import pytest

from sera_ops.cli import main
from sera_ops.dataset import curate
from sera_ops.dataset.curate import Sample, Step, estimate_tokens, parse_filter, parse_subsample, truncate_to_budget


def message(role: str, words: int) -> dict:
    return {"role": role, "content": " ".join(["w"] * words), "train": role == "assistant"}


def record(instance_id: str, changed: int = 5, user_words: tuple[int, ...] = (2,), assistant_words: int = 1) -> dict:
    """system, then a user turn per entry of `user_words`, each answered by an assistant turn."""
    messages = [message("system", 1)]
    for words in user_words:
        messages += [message("user", words), message("assistant", assistant_words)]
    return {"messages": messages, "instance_id": instance_id, "tool_json": [], "changed_lines": changed}


def write_dataset(path: Path, repo: str, t1: list[dict], t2: list[dict]) -> Path:
    path.mkdir(parents=True)
    (path / "stats.json").write_text(json.dumps({"repo": repo, "records": {"t1": len(t1), "t2": len(t2)}}))
    for split, rows in (("t1", t1), ("t2", t2)):
        (path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_ids(path: Path) -> list[str]:
    return [json.loads(line)["instance_id"] for line in path.read_text().splitlines()]


def samples(*records: dict, repo: str = "alpha") -> list[Sample]:
    return [Sample(repo, r) for r in records]


def ids(chosen: list[Sample]) -> list[str]:
    return [s.record["instance_id"] for s in chosen]


# ---------------------------------------------------------------- tokens


def test_the_estimate_counts_chat_markers_words_and_punctuation():
    assert estimate_tokens("def f(x): return x+1") == 10  # def f ( x ) : return x + 1
    assert estimate_tokens("<|im_start|>user\nhé wörld<|im_end|>\n") == 5
    assert estimate_tokens("") == 0


def test_a_local_hf_tokenizer_is_used_when_given(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]").save_pretrained(tmp_path)
    count = curate.load_token_counter(tmp_path)
    assert count("don't stop-me now") == 3 and estimate_tokens("don't stop-me now") == 7
    # mean user turn: whitespace words (2 + 4) / 2 = 3 with the tokenizer; the estimate sees (4 + 8) / 2 = 6
    apostrophes = {"messages": [{"role": "user", "content": "it's ok"}, {"role": "user", "content": "a-b c-d e f"}]}
    assert curate.user_turn_mean(apostrophes, count) == 3.0
    assert curate.user_turn_mean(apostrophes, estimate_tokens) == 6.0
    assert curate.load_token_counter(None) is estimate_tokens


# ---------------------------------------------------------------- filters


def test_long_edit_removes_records_with_more_changed_lines_than_the_threshold():
    records = samples(record("a", changed=10), record("b", changed=40), record("c", changed=41), record("d", 0))
    assert ids(curate.apply_filter(parse_filter("long_edit"), records, estimate_tokens)) == ["a", "b", "d"]
    assert ids(curate.apply_filter(parse_filter("long_edit=9"), records, estimate_tokens)) == ["d"]


def test_long_edit_needs_the_changed_line_count():
    old = record("old")
    del old["changed_lines"]
    with pytest.raises(ValueError, match="old .*has no changed_lines.*re-run"):
        curate.apply_filter(parse_filter("long_edit"), samples(old), estimate_tokens)


def test_user_length_removes_records_whose_mean_user_turn_is_too_long():
    records = samples(record("a", user_words=(4, 2)),  # mean 3
                      record("b", user_words=(5, 2)),  # mean 3.5
                      record("c", user_words=(700,)),
                      record("d", user_words=()))  # no user turn: mean 0
    assert ids(curate.apply_filter(parse_filter("user_length=3"), records, estimate_tokens)) == ["a", "d"]
    assert ids(curate.apply_filter(parse_filter("user_length"), records, estimate_tokens)) == ["a", "b", "d"]


# ---------------------------------------------------------------- subsampling


def test_tokens_truncates_at_the_last_assistant_turn_within_the_budget():
    # system 1 word -> 4, user 2 -> 5, assistant 1 -> 4, user 3 -> 6, assistant 2 -> 5: cumulative 4 9 13 19 24
    rec = record("a", user_words=(2, 3), assistant_words=1)
    rec["messages"][-1] = message("assistant", 2)
    assert truncate_to_budget(rec, 24, estimate_tokens) == rec
    assert truncate_to_budget(rec, 23, estimate_tokens)["messages"] == rec["messages"][:3]
    assert truncate_to_budget(rec, 13, estimate_tokens)["messages"] == rec["messages"][:3]
    assert truncate_to_budget(rec, 12, estimate_tokens) is None  # only system + user fit


def test_tokens_keeps_the_records_that_lose_least():
    # each record: system 4 + per turn user (words + 3) and assistant 4; budget 30
    records = samples(record("whole", user_words=(2, 2)),  # 4 + 9 + 9 = 22: all 5 messages, ratio 1
                      record("half", user_words=(2, 2, 2, 2)),  # fits 4 + 9 + 9 + 5 = 27: 5 of 9 kept
                      record("most", user_words=(2, 2, 30)),  # 4 + 9 + 9 = 22, then 33 > 30: 5 of 7 kept
                      record("none", user_words=(40,)))  # the first user turn is over budget: dropped
    chosen = curate.subsample(parse_subsample("tokens:30:2"), records, 0, estimate_tokens)
    assert ids(chosen) == ["whole", "most"]  # ratios 1, 5/7; "half" (5/9) is third; input order kept
    assert [len(s.record["messages"]) for s in chosen] == [5, 5]
    assert ids(curate.subsample(parse_subsample("tokens:30:9"), records, 0, estimate_tokens)) == [
        "whole", "half", "most"]


def test_random_draws_n_records_with_the_seed_in_input_order():
    records = samples(*(record(f"r{i}") for i in range(10)))
    step = parse_subsample("random:4")
    first = curate.subsample(step, records, 7, estimate_tokens)
    expected = sorted(random.Random(7).sample(range(10), 4))
    assert ids(first) == [f"r{i}" for i in expected]
    assert first == curate.subsample(step, records, 7, estimate_tokens)
    assert ids(curate.subsample(parse_subsample("random:40"), records, 7, estimate_tokens)) == ids(records)


def test_repo_takes_whole_repositories_until_the_budget():
    # instance ids that SERA's key (the id minus its last character) would have split into 5 groups
    records = (samples(record("alpha_1234567_10000"), record("alpha_1234567_10001"), record("alpha_1234567_10010"),
                       repo="alpha")
               + samples(record("beta_1234567_10000"), repo="beta")
               + samples(record("gamma_1234567_10000"), record("gamma_1234567_10001"), repo="gamma"))
    order = ["alpha", "beta", "gamma"]
    random.Random(3).shuffle(order)
    assert order == ["beta", "gamma", "alpha"]  # the seeded order of the sorted repositories
    chosen = curate.subsample(parse_subsample("repo:2"), records, 3, estimate_tokens)
    assert ids(chosen) == ["beta_1234567_10000", "gamma_1234567_10000", "gamma_1234567_10001"]  # 1 < 2, then 3 >= 2
    assert len(curate.subsample(parse_subsample("repo:1"), records, 3, estimate_tokens)) == 1
    assert len(curate.subsample(parse_subsample("repo:4"), records, 3, estimate_tokens)) == 6
    for n in range(1, 7):
        for seed in range(5):
            repos = [s.repo for s in curate.subsample(Step("repo", n=n), records, seed, estimate_tokens)]
            assert all(repos.count(repo) == sum(s.repo == repo for s in records) for repo in repos)


@pytest.mark.parametrize("text", ["tokens:10", "random", "repo:0", "random:x", "tokens:1:2:3", "all:3"])
def test_bad_subsampling_is_explained(text):
    with pytest.raises(ValueError, match="bad subsampling|whole number"):
        parse_subsample(text)


@pytest.mark.parametrize("text", ["short_edit", "long_edit=", "long_edit=-1", "user_length=1.5"])
def test_bad_filters_are_explained(text):
    with pytest.raises(ValueError, match="unknown filter|whole number"):
        parse_filter(text)


# ---------------------------------------------------------------- whole datasets and the CLI


@pytest.fixture
def datasets(tmp_path) -> list[Path]:
    alpha = write_dataset(tmp_path / "alpha" / "dataset", "alpha",
                          t1=[record("alpha_1", changed=50), record("alpha_2", user_words=(9,)),
                              record("alpha_3", user_words=(2, 2, 2, 2))],
                          t2=[record("alpha_2", changed=3)])
    beta = write_dataset(tmp_path / "beta" / "dataset", "beta",
                         t1=[record("beta_1", changed=40), record("beta_2", user_words=(2, 2))],
                         t2=[record("beta_1", changed=41), record("beta_2", user_words=(3,))])
    return [alpha, beta]


def test_curate_writes_the_curated_splits_and_a_report(datasets, tmp_path):
    out = tmp_path / "curated"
    report = curate.curate(datasets, out, [parse_subsample("tokens:22:2"), parse_filter("long_edit"),
                                           parse_filter("user_length=8")])
    # long_edit drops alpha_1 (50) and t2's beta_1 (41); user_length=8 drops alpha_2 from t1 (one 9-word turn);
    # tokens:22 (cumulative 4 9 13 18 22 27 ...): alpha_3 keeps 5 of its 9 messages, beta_1 (13) and beta_2 (22) all
    assert read_ids(out / "t1.jsonl") == ["beta_1", "beta_2"]
    assert read_ids(out / "t2.jsonl") == ["alpha_2", "beta_2"]
    assert [(s["name"], s["t1"], s["t2"]) for s in report["steps"]] == [
        ("long_edit", {"before": 5, "after": 4}, {"before": 3, "after": 2}),
        ("user_length", {"before": 4, "after": 3}, {"before": 2, "after": 2}),
        ("tokens", {"before": 3, "after": 2}, {"before": 2, "after": 2})]
    assert report["steps"][2] == {"name": "tokens", "budget": 22, "n": 2, "t1": {"before": 3, "after": 2},
                                  "t2": {"before": 2, "after": 2}}
    assert report["records"] == {"t1": 2, "t2": 2} and report["tokenizer"] == "estimate"
    assert [(i["repo"], i["records"]) for i in report["inputs"]] == [("alpha", {"t1": 3, "t2": 1}),
                                                                     ("beta", {"t1": 2, "t2": 2})]
    assert json.loads((out / "curation.json").read_text()) == report
    assert not list(out.glob(".*.tmp"))


def test_curate_refuses_to_overwrite_an_input_or_read_a_non_dataset(datasets, tmp_path):
    with pytest.raises(ValueError, match="is one of the inputs"):
        curate.curate(datasets, datasets[0], [])
    with pytest.raises(ValueError, match="not a dataset directory"):
        curate.curate([tmp_path], tmp_path / "out", [])
    with pytest.raises(ValueError, match="at most one subsampling"):
        curate.curate(datasets, tmp_path / "out", [parse_subsample("random:1"), parse_subsample("repo:1")])


def test_sera_curate_command(datasets, tmp_path, capsys):
    out = tmp_path / "curated"
    assert main(["curate", *map(str, datasets), "--out", str(out), "--filter", "long_edit=40",
                 "--subsample", "repo:1", "--seed", "1"]) == 0
    report = json.loads((out / "curation.json").read_text())
    printed = capsys.readouterr().out
    assert f"dataset: {out}" in printed and "long_edit" in printed
    assert report["seed"] == 1 and [s["name"] for s in report["steps"]] == ["long_edit", "repo"]
    t1 = read_ids(out / "t1.jsonl")
    assert t1 and len({i.split("_")[0] for i in t1}) == 1  # one whole repository
    assert main(["curate", str(datasets[0]), "--out", str(out), "--subsample", "tokens:5"]) == 2
    assert "bad subsampling" in capsys.readouterr().err
