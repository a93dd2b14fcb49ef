"""The stages without a scheduler (local sandbox, scripted teacher): idempotent retries, failure isolation,
timeouts, and the dataset's contents."""
import json
import os
from pathlib import Path

import pytest

from sera_ops import pipeline
from sera_ops.build.images import ImageRef
from sera_ops.pipeline import batches
from sera_ops.pipeline.context import BatchFailed, RunParams
from sera_ops.rollouts.episode import EpisodeSpec
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from sera_ops.verify import changed_lines
from tests.support.parts import require
from tests.support.pipeline import make_context, prepare


def mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*.json") if "instances" in p.parts}


def test_rerunning_stages_redoes_nothing_that_is_done(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        stats = pipeline.run_all(ctx)
        assert stats["records"]["t1"] == stats["instances"] == 4
        assert stats["verified"] == 4  # "full" mode reproduces rollout one exactly
        before, calls = mtimes(ctx.store.run_dir), teacher.stats["agent"]
        for batch in pipeline.make_batches(ctx):
            assert pipeline.rollout_one(ctx, batch)["ran"] == 0
            assert pipeline.synthesize(ctx, batch)["ran"] == 0
            assert pipeline.rollout_two(ctx, batch)["ran"] == 0
        assert teacher.stats["agent"] == calls
        unchanged = {k: v for k, v in mtimes(ctx.store.run_dir).items() if not k.endswith("verdict.json")}
        assert unchanged == {k: v for k, v in before.items() if not k.endswith("verdict.json")}


def test_teacher_outage_fails_the_batch_then_a_retry_finishes_only_the_missing(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig(error_rate=1.0)) as broken:
        ctx = make_context(tmp_path, broken.url)
        ctx.platform.model_servers["scripted"] = ctx.server.model_copy(update={"max_retries": 0})
        (batch,) = prepare(ctx)
        with pytest.raises(BatchFailed, match="only 0/4 instances got through"):
            pipeline.rollout_one(ctx, batch)
        errors = list(ctx.store.run_dir.rglob("rollout1.error.json"))
        assert len(errors) == 4
        assert all("EpisodeError" in e.read_text() and "injected by the scripted teacher" in e.read_text()
                   for e in errors)
        assert not list(ctx.store.run_dir.rglob("rollout1.json"))
    with ScriptedTeacher(ScriptedTeacherConfig()) as healthy:
        ctx.platform.model_servers["scripted"] = ctx.server.model_copy(update={"base_url": healthy.url})
        summary = pipeline.rollout_one(ctx, batch)
        assert (summary["ran"], summary["failed"]) == (4, 0)
        assert not list(ctx.store.run_dir.rglob("rollout1.error.json"))


def test_a_timed_out_episode_is_recorded_not_fatal(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig(latency_s=0.4)) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        ctx.spec = ctx.spec.model_copy(update={"rollout": ctx.spec.rollout.model_copy(
            update={"time_limit_s": 1, "max_attempts": 1})})
        (batch,) = prepare(ctx)
        assert pipeline.rollout_one(ctx, batch)["failed"] == 0
        statuses = {json.loads(p.read_text())["final"]["exit_status"]
                    for p in ctx.store.run_dir.rglob("rollout1.json")}
        assert statuses == {"TimeExceeded"}
        stats = pipeline.assemble(ctx)
        assert stats["records"] == {"t1": 0, "t2": 0}


def test_judge_rejections_retry_with_new_templates_and_are_left_out(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig(judge_reject_rate=1.0)) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        stats = pipeline.run_all(ctx)
    assert stats["judged_good"] == 0 and stats["rollout_one_attempts"] == 4 * 3
    assert stats["records"] == {"t1": 0, "t2": 0}
    assert pipeline.publish(ctx) is None and not ctx.store.repo_store.latest_dataset.exists()
    one = json.loads(next(ctx.store.run_dir.rglob("rollout1.json")).read_text())
    templates = [a["rollout"]["template_index"] for a in one["attempts"]]
    assert len(templates) == 3 and all(a["judgement"]["answer"] == "no" for a in one["attempts"])


@pytest.mark.parametrize("config", [ScriptedTeacherConfig(noop_first_attempt=True),
                                    ScriptedTeacherConfig(judge_reject_first_attempts=1.0)],
                         ids=["comment-only-edit", "judge-rejects"])
def test_a_rejected_first_attempt_is_retried_with_another_template(tmp_path, config):
    with ScriptedTeacher(config) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        (batch,) = prepare(ctx)
        assert pipeline.rollout_one(ctx, batch)["failed"] == 0
    results = [json.loads(p.read_text()) for p in ctx.store.run_dir.rglob("rollout1.json")]
    assert len(results) == 4
    for result in results:
        first, second = result["attempts"]
        assert (first["judgement"]["answer"], second["judgement"]["answer"]) == ("no", "yes")
        assert first["rollout"]["template_index"] != second["rollout"]["template_index"]
        assert result["is_good_patch"] and result["final"] == second["rollout"]
        first_lines, second_lines = (changed_lines(a["rollout"]["patch"]) for a in (first, second))
        comments_only = all(line.startswith("+") and line[1:].lstrip().startswith("#") for line in first_lines)
        assert first_lines and comments_only == config.noop_first_attempt
        assert second_lines and not all(line[1:].lstrip().startswith("#") for line in second_lines)


def test_local_episodes_do_not_see_host_secrets(tmp_path, monkeypatch):
    from sera_ops.rollouts.sandbox import open_sandbox

    require("bubblewrap")
    monkeypatch.setenv("SERA_SCRIPTED_API_KEY", "sk-local-secret-value")
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        commit = pipeline.select_commits(ctx)[0]
        image = ImageRef.from_dict(pipeline.build_image(ctx, commit))
    with open_sandbox(image, command_timeout_s=10, name="probe") as sandbox:
        output = sandbox.run("env")["output"]
        assert "sk-local-secret-value" not in output and "PATH=" in output
        assert os.path.isdir(sandbox.cwd) and sandbox.patch() == ""


def test_one_failing_instance_does_not_take_the_batch_down(tmp_path, monkeypatch):
    real_episode = batches.run_episode
    doomed: list[str] = []
    key = "sk-pipeline-test-31c0ffee"

    def flaky_episode(spec: EpisodeSpec):
        if spec.instance_id == doomed[0]:
            raise RuntimeError(f"sandbox exploded while using {key}")
        return real_episode(spec)

    monkeypatch.setattr(batches, "run_episode", flaky_episode)
    monkeypatch.setenv("SERA_SCRIPTED_API_KEY", key)
    with ScriptedTeacher(ScriptedTeacherConfig(api_key=key)) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        (batch,) = prepare(ctx)
        doomed.append(json.loads(ctx.store.instances.read_text())[1]["instance_id"])
        summary = pipeline.rollout_one(ctx, batch)
        assert (summary["ran"], summary["failed"]) == (4, 1)
        error = json.loads(ctx.store.instance(doomed[0]).error("rollout1").read_text())
        assert error["error"] == "RuntimeError: sandbox exploded while using [REDACTED]"
        for stage in (pipeline.synthesize, pipeline.rollout_two, pipeline.verify_batch):
            stage(ctx, batch)
        stats = pipeline.assemble(ctx)
    assert (stats["rollout_one"], stats["rollout1_errors"], stats["records"]["t1"]) == (3, 1, 3)


def test_text_mode_teacher_gives_the_same_dataset_shape(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        ctx.platform.model_servers["scripted"] = ctx.server.model_copy(update={"tool_calls": False})
        stats = pipeline.run_all(ctx)
    assert stats["verified"] == stats["records"]["t2"] == 4
    record = json.loads((ctx.store.dataset_dir / "t2.jsonl").read_text().splitlines()[0])
    assistant = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    assert all("<tool_call>" in content and "mswea_bash_command" not in content for content in assistant)
    observations = [m["content"] for m in record["messages"][2:] if m["role"] == "user"]
    assert observations and all(o.startswith("<tool_response>") for o in observations)


def test_patch_is_taken_from_the_work_tree_when_the_step_limit_cuts_the_episode(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        ctx.spec = ctx.spec.model_copy(update={"rollout": ctx.spec.rollout.model_copy(
            update={"step_limit": 3, "max_attempts": 1})})  # locate, show, edit: no turn left to submit
        (batch,) = prepare(ctx)
        pipeline.rollout_one(ctx, batch)
    finals = [json.loads(p.read_text())["final"] for p in ctx.store.run_dir.rglob("rollout1.json")]
    assert {f["exit_status"] for f in finals} == {"LimitsExceeded"}
    assert all(f["patch"].startswith("diff --git") and f["model_calls"] == 3 for f in finals)


@pytest.mark.slow
def test_incremental_runs_skip_what_earlier_runs_covered(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        first = make_context(tmp_path, teacher.url, "nightly-1")
        first.params = RunParams(max_functions=4, incremental=True)
        (batch,) = prepare(first)
        pipeline.rollout_one(first, batch)  # rolled out, but never assembled: its commits are not "seen" yet

        second = make_context(tmp_path, teacher.url, "nightly-2")
        second.params = RunParams(max_functions=4, incremental=True)
        stats = pipeline.run_all(second)
        assert stats["commits"]["ready"] == 2 and stats["instances"] == 4
        fingerprints = [json.loads(c.store.fingerprints.read_text()) for c in (first, second)]
        assert not set(fingerprints[0].values()) & set(fingerprints[1].values())

        third = make_context(tmp_path, teacher.url, "nightly-3")
        third.params = RunParams(max_functions=4, incremental=True)
        stats = pipeline.run_all(third)  # both commits were assembled by the second run
        assert stats["commits"]["selected"] == 0 and stats["instances"] == 0
        assert json.loads(third.store.commits.read_text())["skipped_as_seen"]

        again = make_context(tmp_path, teacher.url, "manual-4")  # not incremental: everything is fair game
        assert pipeline.run_all(again)["instances"] == 4


def test_identical_rollout_one_patches_are_collapsed_before_any_writer_call(tmp_path):
    with ScriptedTeacher(ScriptedTeacherConfig()) as teacher:
        ctx = make_context(tmp_path, teacher.url)
        (batch,) = prepare(ctx)
        pipeline.rollout_one(ctx, batch)
        owner, copy, *_ = sorted(i["instance_id"] for i in ctx.store.read_json(ctx.store.instances))
        # Two episodes that made the same edit: the copy's patch differs only in context lines and whitespace.
        first = ctx.store.read_json(ctx.store.instance(owner).rollout_one)
        second = ctx.store.read_json(ctx.store.instance(copy).rollout_one)
        assert first["is_good_patch"] and second["is_good_patch"]
        patch = first["final"]["patch"]
        second["final"]["patch"] = patch.replace("\n ", "\n  ", 1).replace("@@ -", "@@ -1", 1) + "\n"
        ctx.store.write_json(ctx.store.instance(copy).rollout_one, second)
        writer_calls = teacher.stats["writer"]
        summary = pipeline.synthesize(ctx, batch)
        assert summary["ran"] == 3 and teacher.stats["writer"] - writer_calls == 3
        # Instances run concurrently, so whichever of the two is checked first claims the patch: either may own it.
        marked = [i for i in (owner, copy) if ctx.store.instance(i).duplicate.exists()]
        assert len(marked) == 1, marked
        owner, copy = (copy, owner) if marked == [owner] else (owner, copy)
        assert ctx.store.read_json(ctx.store.instance(copy).duplicate)["duplicate_of"] == owner
        assert not ctx.store.instance(copy).synth.exists()
        assert pipeline.synthesize(ctx, batch)["ran"] == 0  # a retry keeps the same owner and redoes nothing
        pipeline.rollout_two(ctx, batch)
        pipeline.verify_batch(ctx, batch)
        stats = pipeline.assemble(ctx)
    assert stats["duplicate_patches"] == 1 and stats["records"]["t1"] == 3
    assert copy not in (ctx.store.dataset_dir / "t1.jsonl").read_text()


def test_patch_fingerprints_ignore_context_and_whitespace_but_not_files_or_lines():
    from sera_ops.verify import patch_fingerprint

    patch = ("diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -3,3 +3,3 @@ def f(x):\n     y = 1\n"
             "-    return x < y\n+    return x >= y\n")
    moved = patch.replace("@@ -3,3 +3,3 @@ def f(x):", "@@ -9,3 +9,3 @@").replace("     y = 1", "     y = 2")
    assert patch_fingerprint(patch) == patch_fingerprint(moved) == patch_fingerprint(patch.replace("< y\n", "< y \t\n"))
    assert patch_fingerprint(patch) != patch_fingerprint(patch.replace("m.py", "n.py"))
    assert patch_fingerprint(patch) != patch_fingerprint(patch.replace(">= y", "> y"))
