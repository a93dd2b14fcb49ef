"""Held-out evaluation end to end on the bundled sample (scripted teacher, local sandbox unless said otherwise): the
held-out functions never reach training data, in any run; an evaluation redoes only what a crash left missing; a
model without a server, or with a dead one, fails alone and by name; seeds sample differently and the summary's
mean ± std is that of the per-seed resolve rates; an evaluation environment has no git history to read the answer
from; and the report reaches the model card and the dataset card.

One generation run (module-scoped) makes the tasks most tests share. The scripted teacher plays rollout two "full"
or "partial" by a hash of the PR text and, in evaluation, of the request's seed: with {"full": 0.5, "partial": 0.5}
the sample's two tasks get both outcomes over three seeds (the choices are stable hashes, so this never flakes),
which a "full"-only teacher (every seed resolves, the same patch) could not show.
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from sera_ops import pipeline
from sera_ops.build.images import ImageRef
from sera_ops.build.inventory import inventory_from_json
from sera_ops.dataset import assemble as dataset_files
from sera_ops.dataset.card import EVALUATION_END, EVALUATION_START
from sera_ops.errors import PermanentError
from sera_ops.evaluate.holdout import holdout_rank
from sera_ops.evaluate.tasks import held_out_patches
from sera_ops.pipeline.context import RunContext, RunParams
from sera_ops.pipeline.evaluation import EvalContext, EvalParams, ModelNotServed, evaluate, evaluate_all, plan, report
from sera_ops.records import EVAL_SPLIT, EvalTask
from sera_ops.rollouts.sandbox import open_sandbox
from sera_ops.settings import EvalSettings, RepoSpec, load_platform, load_repos
from sera_ops.store.io import read_json, store_url
from sera_ops.store.layout import RunStore
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from sera_ops.train.jobs import TrainJob, prepare_job
from sera_ops.verify import patch_fingerprint
from tests.support import ROOT
from tests.support.parts import require

EVAL = EvalSettings(fraction=0.25, tasks_per_run=2, seeds=3)
MIXED = ScriptedTeacherConfig(rollout_two_modes={"full": 0.5, "partial": 0.5})
KINDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
DEAD_URL = "http://127.0.0.1:9/v1"


def context(workdir: Path, store: Path, teacher_url: str, run_id: str, spec: RepoSpec | None = None,
            params: RunParams | None = None, *, sandbox: str = "local", servers: dict | None = None) -> RunContext:
    """A run of the sample on the store at `store` (the platform file goes to `workdir`), with `spec` (default: the
    sample's, eval as `EVAL`) and extra model servers."""
    workdir.mkdir(parents=True, exist_ok=True)
    overrides: dict = {"images": {"sandbox": sandbox}, "registry": {"push": False}}
    if servers:
        overrides["model_servers"] = servers
    platform = load_platform(dry_run_platform(ROOT / "config" / "platform.yaml", workdir, teacher_url,
                                              storage_root=store, overrides=overrides))
    if spec is None:
        spec = load_repos(platform)[0][0].model_copy(update={"eval": EVAL})
    return RunContext.create(platform, spec, run_id, params or RunParams(max_functions=4))


@dataclass
class Generated:
    teacher: ScriptedTeacher
    ctx: RunContext
    stats: dict
    base: Path
    card: str
    """The dataset card as the run wrote it (an evaluation's report replaces its evaluation section)."""

    @property
    def store(self) -> Path:
        return self.base / "store"

    @property
    def tasks(self) -> list[EvalTask]:
        return self.ctx.store.repo_store.tasks()

    def eval_context(self, run_id: str, params: EvalParams, servers: dict | None = None) -> EvalContext:
        """An evaluation run `run_id` of the generated tasks (on the same store and teacher)."""
        run = context(self.base / run_id, self.store, self.teacher.url, run_id, self.ctx.spec, servers=servers)
        return EvalContext(run, params)


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> Generated:
    """One generation run of the sample with 2 of its held-out functions sampled as evaluation instances."""
    base = tmp_path_factory.mktemp("evaluation")
    with ScriptedTeacher(MIXED) as teacher:
        ctx = context(base / "gen-1", base / "store", teacher.url, "gen-1")
        stats = pipeline.run_all(ctx)
        yield Generated(teacher, ctx, stats, base, ctx.store.dataset.card.read_text())


@dataclass
class TeacherEval:
    ectx: EvalContext
    report: dict
    job: TrainJob
    agent_calls: int
    """The teacher's agent requests during the evaluation."""
    model_card: str
    dataset_card: str
    latest: dict
    """The cards and `evals/latest.json` right after it (later evaluation runs of the module replace them)."""


@pytest.fixture(scope="module")
def teacher_eval(gen) -> TeacherEval:
    """The teacher evaluated on every task and seed, after a (fake) training job on the generated dataset, so that
    the report also reaches the model card and the dataset card."""
    job = prepare_job(gen.ctx.platform.storage_root, gen.ctx.spec.name, "job-1", {}, ["t1", "t2"])
    metrics = Path(job.output_dir, "metrics.json")  # what makes a model dir complete (`RepoStore.latest_model`)
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text("{}")
    ectx = gen.eval_context("eval-teacher", EvalParams(models=["teacher"]))
    calls = gen.teacher.stats["agent"]
    result = evaluate_all(ectx)
    return TeacherEval(ectx, result, job, gen.teacher.stats["agent"] - calls,
                       ectx.repo.model_card(job.job_id).read_text(), gen.ctx.store.dataset.card.read_text(),
                       read_json(ectx.repo.latest_evaluation))


def records(store: RunStore) -> dict[str, list[dict]]:
    return {split: [json.loads(line) for line in store.dataset.split(split).read_text().splitlines()]
            for split in ("t1", "t2")}


def record_patch(store: RunStore, split: str, instance_id: str) -> str:
    """The patch a training record's trajectory made (t1: rollout one's accepted patch, t2: rollout two's)."""
    if split == "t1":
        return store.rollout_one(instance_id).final.patch
    return store.rollout_two(instance_id).patch


def instance_keys(store: RunStore) -> dict[str, set[str]]:
    """The start functions (file::name) of a run's instances, by split."""
    found: dict[str, set[str]] = {"train": set(), EVAL_SPLIT: set()}
    for instance in store.read_json(store.instances):
        found[instance["split"]].add(f"{instance['start_fn_file']}::{instance['start_fn']}")
    return found


def held_keys(ctx: RunContext, commits: list[str]) -> tuple[set[str], set[str]]:
    """Every function key of `commits`' inventories, and those `eval.fraction` holds out (computed here, by hand)."""
    keys = {function.key for commit in commits
            for function in inventory_from_json(read_json(ctx.store.repo_store.inventory_path(commit)))}
    settings = ctx.spec.eval
    return keys, {key for key in keys if holdout_rank(settings.seed, key) < settings.fraction}


def assert_never_trained_on(store: RunStore, tasks: list[EvalTask]) -> None:
    """No t1/t2 record of the run is a task's instance, carries a task's reference patch, or shows its PR."""
    task_ids = {task.task_id for task in tasks}
    references = {patch_fingerprint(task.reference_patch) for task in tasks}
    statements = [task.problem_statement.strip() for task in tasks]
    found = records(store)
    assert found["t1"], "no training records to check"
    for split, rows in found.items():
        for row in rows:
            assert row["instance_id"] not in task_ids and f"_{EVAL_SPLIT}_" not in row["instance_id"]
            assert patch_fingerprint(record_patch(store, split, row["instance_id"])) not in references
            text = "\n".join(str(message.get("content")) for message in row["messages"])
            assert not any(statement[:200] in text for statement in statements), row["instance_id"]


# ---------------------------------------------------------------------------------------------------------------------
# 1, 2: held-out instances never become training data


def test_held_out_instances_never_reach_training_records(gen):
    tasks, store, stats = gen.tasks, gen.ctx.store, gen.stats
    eval_ids = {i["instance_id"] for i in store.read_json(store.instances) if i["split"] == EVAL_SPLIT}
    assert len(eval_ids) == 2 and {task.task_id for task in tasks} <= eval_ids
    assert len(tasks) >= 1
    assert all(task.task_id.startswith(f"tinyledger_{EVAL_SPLIT}_{task.commit[:7]}_") for task in tasks)
    assert all(task.reference_patch.startswith("diff --git") and task.problem_statement for task in tasks)
    # what holds them out is the hash of their key, decided before generation
    _, held = held_keys(gen.ctx, store.read_json(store.commits)["commits"])
    assert instance_keys(store)[EVAL_SPLIT] <= held and not instance_keys(store)["train"] & held

    assert_never_trained_on(store, tasks)
    assert stats["instances"] == 4  # training instances only
    assert stats["held_out"] == {"instances": 2, "tasks": len(tasks), "tasks_in_repo": len(tasks)}
    assert stats["held_out_patches"] == 0
    assert read_json(store.dataset.stats)["held_out"] == stats["held_out"]
    card = gen.card
    assert f"| held out for evaluation | 2 instances, {len(tasks)} tasks ({len(tasks)} in the repository's store)" \
           in card
    assert "2 instances were sampled from held-out start functions" in card and "dropped (0 here)" in card
    assert held_out_patches(store.repo_store) == {patch_fingerprint(task.reference_patch) for task in tasks}


def test_a_record_whose_patch_is_a_reference_patch_is_dropped_and_counted(gen, tmp_path):
    # on a copy of the store: the shared run's dataset stays as it was made
    shutil.copytree(gen.store, tmp_path / "store", symlinks=True)
    store = RunStore(tmp_path / "store", gen.ctx.spec.name, gen.ctx.store.run_id)
    before = records(store)
    t2_ids = {row["instance_id"] for row in before["t2"]}
    victim = next(row["instance_id"] for row in before["t1"] if row["instance_id"] in t2_ids)  # in both splits
    others = {split: [row["instance_id"] for row in rows if row["instance_id"] != victim]
              for split, rows in before.items()}
    held = frozenset({patch_fingerprint(store.rollout_one(victim).final.patch)})
    header = {key: gen.stats[key] for key in ("repo", "run_id", "model_server", "threshold", "format", "commits",
                                              "functions", "held_out")}  # what `pipeline.assemble` passes

    stats = dataset_files.assemble(store, gen.ctx.spec.postprocess, header, held)

    after = records(store)
    assert stats["held_out_patches"] == 1
    assert {split: [row["instance_id"] for row in rows] for split, rows in after.items()} == others
    assert stats["records"] == {"t1": len(before["t1"]) - 1, "t2": len(before["t2"]) - 1}
    assert stats["judged_good"] == gen.stats["judged_good"]  # judged good, then dropped: not a failure
    assert stats["failed"]["instances"] == 0
    assert "dropped (1 here)" in store.dataset.card.read_text()


def test_a_second_run_of_the_repository_still_never_trains_on_a_held_out_function(gen, tmp_path):
    # A later, incremental run over the repository's other commits, on a copy of the same store (its first run, its
    # tasks and its run history are there): the same function keys are held out there too.
    shutil.copytree(gen.store, tmp_path / "store", symlinks=True)
    spec = gen.ctx.spec.model_copy(update={"n_commits": 4})
    second = context(tmp_path / "gen-2", tmp_path / "store", gen.teacher.url, "gen-2", spec,
                     RunParams(max_functions=2, incremental=True))
    stats = pipeline.run_all(second)

    commits = second.store.read_json(second.store.commits)
    assert set(commits["skipped_as_seen"]) == {task.commit for task in gen.tasks}
    assert commits["commits"] and not set(commits["commits"]) & set(commits["skipped_as_seen"])
    keys, held = held_keys(second, commits["commits"])
    first_held = instance_keys(gen.ctx.store)[EVAL_SPLIT]
    sampled = instance_keys(second.store)
    assert sampled[EVAL_SPLIT] and sampled[EVAL_SPLIT] <= held
    assert first_held & keys, "the first run's held-out functions should exist in the older commits too"
    assert not sampled["train"] & (held | first_held)
    tasks = second.store.repo_store.tasks()  # the first run's tasks and the second's, accumulated
    assert {task.task_id for task in gen.tasks} < {task.task_id for task in tasks}
    assert stats["held_out"]["tasks_in_repo"] == len(tasks)
    assert_never_trained_on(second.store, tasks)

    # Sampling every function of every commit (not incremental, no rollouts): all but the held-out ones are trained on.
    everything = context(tmp_path / "gen-3", tmp_path / "store", gen.teacher.url, "gen-3", spec,
                         RunParams(max_functions=1000, incremental=False))
    for commit in pipeline.select_commits(everything):
        pipeline.build_image(everything, commit)
        pipeline.inventory(everything, commit)
    pipeline.sample(everything)
    all_keys, all_held = held_keys(everything, everything.store.read_json(everything.store.commits)["commits"])
    sampled = instance_keys(everything.store)
    assert all_held and sampled["train"] == all_keys - all_held
    assert first_held <= all_held and not sampled["train"] & {f"{t.start_fn_file}::{t.start_fn}" for t in tasks}


# ---------------------------------------------------------------------------------------------------------------------
# 3: a cleared evaluation redoes only what is missing


def test_an_evaluation_cleared_mid_way_redoes_only_the_missing_episodes(gen, teacher_eval):
    ectx = teacher_eval.ectx
    files, label = ectx.files, "teacher"
    episodes = [(task.task_id, seed) for task in gen.tasks for seed in ectx.seeds]
    results = {key: files.result(label, *key) for key in episodes}
    trajectories = {key: files.trajectory(label, *key) for key in episodes}
    before = {key: (path.stat().st_mtime_ns, path.read_text()) for key, path in results.items()}
    traj_before = {key: path.stat().st_mtime_ns for key, path in trajectories.items()}
    deleted = episodes[::2]
    expected_calls = sum(json.loads(before[key][1])["model_calls"] for key in deleted)
    for key in deleted:
        results[key].unlink()
    files.summary(label).unlink()
    files.results(label).unlink()  # as a crash before the end would leave it: some results, no summary
    calls = gen.teacher.stats["agent"]

    summary = evaluate(ectx, label)

    assert gen.teacher.stats["agent"] - calls == expected_calls > 0  # only the missing episodes asked the teacher
    for key in episodes:
        assert results[key].exists(), key
        if key in deleted:
            redone = json.loads(results[key].read_text())
            old = json.loads(before[key][1])
            assert (redone["task_id"], redone["seed"], redone["patch"], redone["resolved"]) == \
                   (old["task_id"], old["seed"], old["patch"], old["resolved"])
        else:
            assert (results[key].stat().st_mtime_ns, results[key].read_text()) == before[key], key
            assert trajectories[key].stat().st_mtime_ns == traj_before[key], key
    assert files.summary(label).exists() and read_json(files.summary(label)) == summary
    assert summary["episodes"] == len(episodes)
    assert len(files.results(label).read_text().splitlines()) == len(episodes)
    calls = gen.teacher.stats["agent"]
    evaluate(ectx, label)  # nothing missing: nothing asked
    assert gen.teacher.stats["agent"] == calls


# ---------------------------------------------------------------------------------------------------------------------
# 4: a model that cannot be evaluated fails alone, by name


def test_a_dead_model_server_fails_that_model_by_name_while_the_others_finish(gen, tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig(error_rate=1.0)) as broken:  # answers GET /models, fails every chat
        servers = {"dead": {"base_url": DEAD_URL, "model": "dead-model", "max_retries": 0, "timeout_s": 2},
                   "broken": {"base_url": broken.url, "model": broken.config.model, "max_retries": 0,
                              "timeout_s": 5}}
        ectx = gen.eval_context("eval-dead", EvalParams(models=["teacher"], model_servers=["dead", "broken"]),
                                servers)
        result = evaluate_all(ectx)
        assert broken.stats["errors"] > 0  # it was asked, and failed
        broken_url = broken.url

    assert [s["model"] for s in result["models"]] == ["teacher"]
    assert result["models"][0]["episodes"] == len(gen.tasks) * EVAL.seeds
    failed = {failure["model"]: failure for failure in result["failed"]}
    assert set(failed) == {"dead", "broken"}
    assert failed["dead"]["server"] == "dead"
    assert "model 'dead'" in failed["dead"]["error"] and DEAD_URL in failed["dead"]["error"]
    assert "cannot be reached" in failed["dead"]["error"]
    assert "model 'broken'" in failed["broken"]["error"] and broken_url in failed["broken"]["error"]
    assert f"{len(gen.tasks) * EVAL.seeds} of {len(gen.tasks) * EVAL.seeds} episodes failed" \
           in failed["broken"]["error"]
    files = ectx.files
    assert read_json(files.summary("teacher"))["resolved_mean"] is not None
    assert not files.summary("dead").exists() and read_json(files.error("dead")) == failed["dead"]
    assert not files.summary("broken").exists()
    assert read_json(files.report) == result
    table = files.report_text.read_text()
    assert "| teacher | `scripted-teacher` on `scripted` | 2 |" in table
    assert "| dead | `dead` | — | failed: model 'dead' (server 'dead' at http://127.0.0.1:9/v1)" in table
    assert "| broken | `broken` | — | failed: model 'broken'" in table


def test_a_planned_model_without_a_server_fails_with_model_not_served_and_the_teacher_finishes(gen):
    ectx = gen.eval_context("eval-unserved", EvalParams(models=["teacher", "base"]))
    assert ectx.run.spec.eval.base_server is None
    assert plan(ectx) == ["teacher", "base"]

    with pytest.raises(ModelNotServed) as raised:
        evaluate(ectx, "base")
    message = str(raised.value)
    assert isinstance(raised.value, PermanentError)  # a setting to fix: the DAG does not retry it
    assert "model 'base'" in message and "eval.base_server" in message and "'base_server' param" in message
    assert str(ectx.run.spec.source_file) in message and ectx.run.spec.source_file.name == "tinyledger.yaml"
    summary = evaluate(ectx, "teacher")
    result = report(ectx)

    assert summary["episodes"] == len(gen.tasks) * EVAL.seeds
    assert [s["model"] for s in result["models"]] == ["teacher"]
    problem = message.removeprefix("model 'base': ")
    assert result["failed"] == [{"model": "base", "server": None, "error": problem}]
    assert read_json(ectx.files.error("base"))["error"] == problem
    table = ectx.files.report_text.read_text()
    assert "| teacher | `scripted-teacher` on `scripted` | 2 |" in table
    (row,) = [line for line in table.splitlines() if line.startswith("| base | ")]
    assert "| — | failed: no model server serves the base model: set eval.base_server" in row


# ---------------------------------------------------------------------------------------------------------------------
# 5: seeds sample differently; the summary is the per-seed resolve rates' mean ± std


def test_seeds_give_different_samples_and_the_summary_matches_the_results(gen, teacher_eval):
    ectx, result, calls = teacher_eval.ectx, teacher_eval.report, teacher_eval.agent_calls
    files, tasks, seeds = ectx.files, gen.tasks, ectx.seeds
    assert seeds == [0, 1, 2] and calls > 0
    rows = [json.loads(line) for line in files.results("teacher").read_text().splitlines()]
    assert len(rows) == len(tasks) * 3
    assert sorted((r["task_id"], r["seed"]) for r in rows) == sorted((t.task_id, s) for t in tasks for s in seeds)
    for row in rows:  # results.jsonl is the per-episode files, gathered
        assert read_json(files.result("teacher", row["task_id"], row["seed"])) == row
    distinct = {task.task_id: {r["patch"] for r in rows if r["task_id"] == task.task_id} for task in tasks}
    assert any(len(patches) >= 2 for patches in distinct.values()), distinct  # one task, different seeds' patches
    assert len({(r["resolved"], r["recall"]) for r in rows}) >= 2

    rates = {seed: statistics.fmean(r["resolved"] for r in rows if r["seed"] == seed) for seed in seeds}
    # With MIXED the seeds' resolve rates differ on the sample (stable hashes: always the same rates), so the std
    # below is checked on a real spread; should a change of the sample or the teacher make them equal, pick another
    # `ScriptedTeacherConfig.seed` for MIXED rather than dropping this.
    assert len(set(rates.values())) >= 2, rates
    summary = read_json(files.summary("teacher"))
    assert summary["resolved_per_seed"] == {str(seed): round(rate, 4) for seed, rate in rates.items()}
    assert summary["resolved_mean"] == round(statistics.fmean(rates.values()), 4)
    assert summary["resolved_std"] == round(statistics.stdev(rates.values()), 4) > 0
    assert summary["mean_recall"] == round(statistics.fmean(r["recall"] for r in rows), 4)
    assert (summary["tasks"], summary["seeds"], summary["episodes"]) == (len(tasks), 3, len(rows))
    assert summary["tests_pass_rate"] is None and all(r["tests_passed"] is None for r in rows)  # no test_cmd
    tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows) / len(rows)
    assert summary["tokens_per_task"] == round(tokens, 1) > 0
    assert result["models"] == [summary]


# ---------------------------------------------------------------------------------------------------------------------
# 6: no history after the commit in an evaluation environment


def docker_task(tmp_path: Path) -> EvalTask:
    """A minimal run of the sample in containers: one commit, one training instance, one evaluation task."""
    with ScriptedTeacher(MIXED) as teacher:
        ctx = context(tmp_path, tmp_path / "store", teacher.url, "docker-1", sandbox="docker",
                      params=RunParams(max_functions=1))
        ctx.spec = ctx.spec.model_copy(update={"n_commits": 1, "eval": EVAL.model_copy(
            update={"tasks_per_run": 1, "seeds": 1})})
        pipeline.run_all(ctx)
    tasks = ctx.store.repo_store.tasks()
    assert tasks and all(task.image["kind"] == "docker" for task in tasks)
    return tasks[0]


@pytest.mark.parametrize("kind", KINDS)
def test_an_evaluation_environment_has_no_history_after_the_commit(kind, request, tmp_path):
    if kind == "docker":
        require("docker")
        task, limits = docker_task(tmp_path), None
    else:
        gen = request.getfixturevalue("gen")
        task, limits = gen.tasks[0], gen.ctx.spec.sandbox
    added = [line[1:].strip() for line in task.reference_patch.splitlines()
             if line.startswith("+") and not line.startswith("+++") and line[1:].strip()]
    with open_sandbox(ImageRef.from_dict(task.image), command_timeout_s=60, name=f"history-{kind}", limits=limits,
                      time_limit_s=300, run_id=f"history-{kind}", allow_unconfined=True) as box:  # our own commands

        def run(command: str) -> str:
            result = box.run(command, timeout=60)
            assert result["returncode"] == 0, (command, result)
            return result["output"]

        assert run("git rev-list --all --count").strip() == "1"
        assert run("git stash list").strip() == ""
        assert len(run("git reflog").strip().splitlines()) <= 1
        assert run("git status --porcelain").strip() == ""
        assert run("git apply --check - <<'SERA_EOF'\n" + task.reference_patch + "\nSERA_EOF").strip() == ""
        tree = run("git ls-tree -r --name-only HEAD | while IFS= read -r f; do git show \"HEAD:$f\"; done")
        objects = run("git cat-file --batch-all-objects --batch") + run("git log --all -p --no-color")
    new = [line for line in added if line not in tree]  # what the reference patch adds that the commit lacks
    assert new, f"the reference patch adds nothing new: {task.reference_patch}"
    assert [line for line in new if line in objects] == []


# ---------------------------------------------------------------------------------------------------------------------
# 7: the report, and the cards it reaches


def test_the_report_and_the_cards_show_the_evaluation(gen, teacher_eval):
    ectx, result, job = teacher_eval.ectx, teacher_eval.report, teacher_eval.job
    files = ectx.files
    summary = read_json(files.summary("teacher"))
    assert read_json(files.report) == result
    assert {key: result[key] for key in ("repo", "run_id", "tasks", "seeds", "threshold", "failed")} == {
        "repo": "tinyledger", "run_id": "eval-teacher", "tasks": len(gen.tasks), "seeds": 3,
        "threshold": gen.ctx.threshold, "failed": []}
    assert result["model_dir"] == store_url(ectx.repo.model_dir(job.job_id))
    assert [s["model"] for s in result["models"]] == ["teacher"]
    text = files.report_text.read_text()
    assert text.startswith("# Evaluation: tinyledger\n")
    assert ("| model | served as | tasks | resolved (mean ± std) | mean recall | tests pass | tokens / task | "
            "cost / task |") in text
    row = (f"| teacher | `scripted-teacher` on `scripted` | {len(gen.tasks)} | "
           f"{100 * summary['resolved_mean']:.1f}% ± {100 * summary['resolved_std']:.1f}% | "
           f"{summary['mean_recall']:g} | — | {summary['tokens_per_task']:g} | $0.0000 |")
    assert row in text
    assert f"{len(gen.tasks)} held-out tasks of `tinyledger`, 3 seeds per model" in text
    assert files.report_plot.read_bytes().startswith(b"\x89PNG")

    assert teacher_eval.model_card.startswith("# tinyledger student (job-1)\n")  # no card before: one is made
    for card in (teacher_eval.model_card, teacher_eval.dataset_card):
        block = card.split(EVALUATION_START, 1)[1].split(EVALUATION_END, 1)[0]
        assert row in block and "Evaluation run `eval-teacher`" in block and "Not evaluated yet" not in block
    assert teacher_eval.dataset_card.split(EVALUATION_START, 1)[0] == \
           gen.card.split(EVALUATION_START, 1)[0]  # the rest of the dataset card is kept
    assert teacher_eval.latest["run_id"] == "eval-teacher"
    assert teacher_eval.latest["report"] == store_url(files.report)


def test_the_repository_tests_run_with_the_patch_applied(gen, tmp_path):
    """`eval.test_cmd`: the tests run in a fresh sandbox of the task's image with the model's patch applied; a patch
    that breaks them, or one that does not apply, does not pass."""
    from sera_ops.evaluate.harness import EvalSetup, tests_pass

    task = gen.tasks[0]
    image, test_cmd = ImageRef.from_dict(task.image), "python3 -m unittest discover -s tests -q"
    setup = EvalSetup(rollout=gen.ctx.spec.rollout, seeds=[0], threshold=1.0)
    work = tmp_path / "work"
    shutil.copytree(image.workdir, work, symlinks=True)
    target = next(work.glob("tinyledger/money.py"))
    target.write_text(target.read_text().replace("def parse_amount(", "def parse_amount(*_):\n    raise SystemExit(3)\n"
                                                 "\n\ndef _parse_amount_was(", 1))
    broken = subprocess.run(["git", "diff"], cwd=work, capture_output=True, text=True, check=True).stdout
    assert broken.startswith("diff --git")

    def passes(patch: str) -> bool:
        return tests_pass(image, patch, test_cmd, setup, True, name=f"{task.task_id}-tests")

    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=work, check=True)
    readme = work / "README.md"
    readme.write_text(readme.read_text() + "\nA harmless line.\n")
    harmless = subprocess.run(["git", "diff"], cwd=work, capture_output=True, text=True, check=True).stdout
    stale = harmless.replace("\n ", "\n stale context ", 1)  # the same change against a README it does not fit

    assert passes("") and passes(harmless)
    assert not passes(broken)
    assert not passes(stale)


def test_configured_models_without_a_server_are_reported_not_evaluated(gen):
    """A scheduled evaluation (no params) of a repository with no student or base server scores the teacher and
    says, in the table, why the others are missing; the run does not fail for it."""
    ectx = gen.eval_context("eval-configured", EvalParams(seeds=1))
    assert plan(ectx) == ["teacher"]
    result = evaluate_all(ectx)
    assert [row["model"] for row in result["models"]] == ["teacher"]
    skipped = {failure["model"]: failure for failure in result["failed"]}
    assert set(skipped) == {"base", "base+guide", "student"} and all(f["skipped"] for f in skipped.values())
    assert "eval.student_server" in skipped["student"]["error"]
    table = ectx.files.report_text.read_text()
    assert "| student | `—` | — | not evaluated: no model server serves the student model" in table


def test_a_hostile_model_is_evaluated_confined_and_sees_no_secret(gen, tmp_path, monkeypatch):
    """The model under evaluation is untrusted like a teacher: its commands run confined (bubblewrap here), change
    nothing on the host, never see its API key, and its evaluation ends with results, not a broken run."""
    from sera_ops.testing.hostile_teacher import HostileTeacher

    require("bubblewrap")
    key = "sk-hostile-eval-5c1e0b"
    monkeypatch.setenv("SERA_TEST_HOSTILE_KEY", key)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(key)
    (outside / "sentinel.txt").write_text("untouched")
    config = ScriptedTeacherConfig(model="hostile-model", api_key=key)
    with HostileTeacher(config, outside=[str(outside / "sentinel.txt")], reads=[str(outside / "secret.txt")],
                        attacks=("environ", "read_outside", "write_outside", "network", "linger")) as hostile:
        servers = {"hostile": {"base_url": hostile.url, "model": "hostile-model", "max_retries": 0,
                               "api_key": {"env": "SERA_TEST_HOSTILE_KEY"}}}
        ectx = gen.eval_context("eval-hostile", EvalParams(model_servers=["hostile"], seeds=1), servers=servers)
        result = evaluate_all(ectx)
        observations = "\n".join(hostile.observations)

    assert [row["model"] for row in result["models"]] == ["hostile"] and not result["failed"], result["failed"]
    assert (outside / "sentinel.txt").read_text() == "untouched" and sorted(outside.iterdir()) == [
        outside / "secret.txt", outside / "sentinel.txt"]
    assert key not in observations and "blocked 127.0.0.1" in observations
    written = [path for path in Path(ectx.files.report).parent.rglob("*") if path.is_file()]
    assert written and not [path for path in written if key.encode() in path.read_bytes()]
