"""Which start functions are held out: a stable, seeded choice made before generation that never shrinks, by
fraction, by count (recorded and only topped up) or by whole commits; and the settings that refuse ambiguity."""
import pytest

from sera_ops.evaluate.holdout import choose_counted, holdout_rank, is_held_out, tasks_per_run
from sera_ops.records import StartFunction
from sera_ops.settings import ConfigError, EvalSettings, load_platform, load_repo
from tests.support import ROOT

KEYS = {f"pkg/mod{n % 7}.py::func_{n}" for n in range(2000)}
COMMIT = "8b665e4" + "0" * 33


def function(key: str) -> StartFunction:
    file, name = key.split("::")
    return StartFunction(name=name, file=file, line=1, end_line=2)


def test_the_rank_is_stable_uniform_and_seeded():
    ranks = [holdout_rank(0, key) for key in sorted(KEYS)]
    assert ranks == [holdout_rank(0, key) for key in sorted(KEYS)] and all(0 <= rank < 1 for rank in ranks)
    assert 0.2 < sum(rank < 0.25 for rank in ranks) / len(ranks) < 0.3
    assert ranks != [holdout_rank(1, key) for key in sorted(KEYS)]


def test_a_fraction_holds_out_the_same_functions_at_every_commit():
    settings = EvalSettings(fraction=0.25)
    held = {key for key in KEYS if is_held_out(settings, COMMIT, function(key), set())}
    assert 400 < len(held) < 600
    assert held == {key for key in KEYS if is_held_out(settings, "f" * 40, function(key), set())}
    assert not any(is_held_out(EvalSettings(), COMMIT, function(key), set()) for key in KEYS)  # eval: off


def test_a_count_is_recorded_once_and_only_topped_up():
    settings = EvalSettings(count=10)
    first = choose_counted(settings, set(sorted(KEYS)[:50]), [])
    assert len(first) == 10 == len(set(first))
    # a later run sees other functions (a new commit, a function gone): the recorded ones stay held out
    assert choose_counted(settings, KEYS - {first[0]}, first) == first
    grown = choose_counted(EvalSettings(count=12), KEYS, first)
    assert grown[:10] == first and len(set(grown)) == 12
    held = set(first)
    assert [key for key in KEYS if is_held_out(settings, COMMIT, function(key), held)] == \
        [key for key in KEYS if key in held]


def test_a_held_out_commit_holds_out_every_function_there():
    settings = EvalSettings(commits=["8b665e4"])
    assert all(is_held_out(settings, COMMIT, function(key), set()) for key in KEYS)
    assert not any(is_held_out(settings, "a" * 40, function(key), set()) for key in KEYS)


@pytest.mark.parametrize(("settings", "limit", "expected"), [
    (EvalSettings(fraction=0.25, tasks_per_run=3), 100, 3), (EvalSettings(fraction=0.25), 10, 3),
    (EvalSettings(fraction=0.1), 1, 1), (EvalSettings(count=4), 100, 4), (EvalSettings(commits=["abcdef0"]), 8, 8)])
def test_tasks_per_run(settings, limit, expected):
    assert tasks_per_run(settings, limit) == expected


@pytest.mark.parametrize(("text", "field"), [
    ("eval: {fraction: 0.2, count: 5}\n", "eval.count"),
    ("eval: {commits: [not-a-hash]}\n", "eval.commits.0"),
    ("eval: {fraction: 1.0}\n", "eval.fraction"),
    ("eval: {models: [student, oracle]}\n", "eval.models.1"),
])
def test_ambiguous_or_wrong_eval_settings_name_the_field(tmp_path, text, field):
    repo = tmp_path / "repo.yaml"
    repo.write_text(f"source: bundled:tinyledger\n{text}")
    with pytest.raises(ConfigError) as error:
        load_repo(repo, load_platform(ROOT / "config" / "platform.yaml"))
    assert error.value.field == field, error.value


def test_the_sample_holds_a_quarter_out():
    spec = load_repo(ROOT / "config" / "repos" / "tinyledger.yaml", load_platform(ROOT / "config" / "platform.yaml"))
    assert spec.eval.holds_out and spec.eval.fraction == 0.25 and spec.eval.seeds == 3
