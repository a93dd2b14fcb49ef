"""Confinement of agent episodes against a hostile teacher, in both sandboxes, through the real rollout path: the
hostile teacher's commands must change nothing outside the work tree, see no secret, leave nothing running, and end
as a failed or limited episode with a reason while the rest of the batch finishes."""
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from sera_ops import pipeline
from sera_ops.build.images import ImageRef
from sera_ops.pipeline.context import RunContext, RunParams
from sera_ops.rollouts import sandbox
from sera_ops.rollouts.episode import Confinement, EpisodeSpec, EpisodeTeacher, run_episode
from sera_ops.settings import EvalSettings, ModelServer, SandboxLimits, load_platform, load_repos
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.hostile_teacher import DEFAULT_ATTACKS, REACHED, HostileTeacher
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig
from tests.support import ROOT
from tests.support.parts import require

KEY = "sk-hostile-test-7d41c9e05b"
LIMITS = SandboxLimits(cpus=1, memory_mb=256, pids=64, tmp_mb=32, file_size_mb=64)
KINDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


def require_sandbox(kind: str) -> None:
    require("docker" if kind == "docker" else "bubblewrap")


def make_context(tmp_path: Path, teacher: ScriptedTeacher, kind: str, **platform_overrides) -> RunContext:
    platform_file = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, teacher.url,
                                     storage_root=tmp_path / "store",
                                     overrides={"images": {"sandbox": kind, **platform_overrides},
                                                "registry": {"push": False}})
    platform = load_platform(platform_file)
    spec = load_repos(platform)[0][0].model_copy(update={"eval": EvalSettings()})  # counts of training ones
    rollout = spec.rollout.model_copy(update={"command_timeout_s": 3, "time_limit_s": 60, "max_attempts": 1,
                                              "step_limit": 12})
    ctx = RunContext.create(platform, spec.model_copy(update={"sandbox": LIMITS, "rollout": rollout}), "confine-1",
                            RunParams(max_functions=4))
    ctx.platform.model_servers["scripted"] = ctx.server.model_copy(update={"model": teacher.config.model})
    return ctx


def prepare(ctx: RunContext) -> str:
    for commit in pipeline.select_commits(ctx):
        pipeline.build_image(ctx, commit)
        pipeline.inventory(ctx, commit)
    pipeline.sample(ctx)
    (batch,) = pipeline.make_batches(ctx)
    return batch


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """Every file under `paths` with its content, except the run's own output (which the episodes are meant to add)."""
    found = {}
    for root in paths:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            if path.is_file() and "runs" not in path.relative_to(root).parts:
                found[str(path)] = path.read_text(errors="replace")
    return found


def stray_processes() -> list[str]:
    """Processes the attacks leave behind when a sandbox fails to end them."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "while :; do :; done" in text or "sleep 100000" in text or text.startswith("bash -c bomb"):
            found.append(text)
    return found


def docker_leftovers(run_id: str) -> list[str]:
    label = f"label={sandbox.RUN_LABEL}={run_id}"
    listings = [["ps", "-aq", "--filter", label], ["volume", "ls", "-q", "--filter", label]]
    return [line for args in listings
            for line in subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.split()]


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_episodes_are_confined_and_the_batch_finishes(kind, tmp_path, monkeypatch):
    require_sandbox(kind)
    monkeypatch.setenv("SERA_SCRIPTED_API_KEY", KEY)
    outside, store = tmp_path / "outside", tmp_path / "store"
    outside.mkdir()
    store.mkdir()
    (outside / "secret.txt").write_text(KEY)
    (outside / "sentinel.txt").write_text("untouched")
    (store / "sentinel.txt").write_text("untouched")
    platform_file = tmp_path / "platform.yaml"
    config = ScriptedTeacherConfig(model="hostile-teacher", api_key=KEY)
    targets = [str(outside / "sentinel.txt"), str(store / "sentinel.txt"), str(platform_file)]
    with HostileTeacher(config, outside=targets, reads=[str(outside / "secret.txt"), str(platform_file)]) as teacher:
        ctx = make_context(tmp_path, teacher, kind)
        batch = prepare(ctx)
        instances = json.loads(ctx.store.instances.read_text())
        names = [i["start_fn"] for i in instances]
        unique = [i for i in instances if names.count(i["start_fn"]) == 1]
        attacked, wrecked = unique[0], unique[1]
        teacher.victims = {attacked["start_fn"]: DEFAULT_ATTACKS, wrecked["start_fn"]: ("delete_git",)}
        before = fingerprint([outside, store, platform_file])
        started = time.monotonic()
        summary = pipeline.rollout_one(ctx, batch)
        elapsed = time.monotonic() - started
        observations = "\n".join(teacher.observations)

    assert (summary["ran"], summary["failed"]) == (4, 1), summary
    assert fingerprint([outside, store, platform_file]) == before
    assert KEY not in observations and REACHED not in observations
    assert "blocked 127.0.0.1" in observations  # the network attack ran, and its own teacher was out of reach

    error = json.loads(ctx.store.instance(wrecked["instance_id"]).error("rollout1").read_text())
    assert "EpisodeError" in error["error"] and "could not read the patch" in error["error"]
    hostile = json.loads(ctx.store.instance(attacked["instance_id"]).rollout_one.read_text())["final"]
    assert hostile["patch"] == "" and "command timeout (3 s)" in hostile["limits_hit"]
    if kind == "docker":
        assert any(hit.startswith("memory limit (256m)") for hit in hostile["limits_hit"])
        assert any(hit.startswith("process limit (64)") for hit in hostile["limits_hit"])
        assert docker_leftovers(ctx.store.run_id) == []
    for instance in instances:
        if instance not in (attacked, wrecked):
            result = json.loads(ctx.store.instance(instance["instance_id"]).rollout_one.read_text())
            assert result["is_good_patch"] and result["final"]["exit_status"] == "Submitted"
            assert result["final"]["patch"].startswith("diff --git") and result["final"]["limits_hit"] == []
    assert stray_processes() == []
    assert elapsed < 60


@pytest.mark.parametrize("kind", KINDS)
def test_no_command_outlives_the_wall_clock(kind, tmp_path):
    require_sandbox(kind)
    with ScriptedTeacher() as teacher:
        ctx = make_context(tmp_path, teacher, kind)
        image = ImageRef.from_dict(pipeline.build_image(ctx, pipeline.select_commits(ctx)[0]))
    with sandbox.open_sandbox(image, command_timeout_s=20, name="clock", limits=LIMITS, time_limit_s=2) as box:
        assert box.run("pwd")["output"].strip() == box.env.get_template_vars()["cwd"] == "/testbed"
        started = time.monotonic()
        slow = box.run("sleep 30 & echo started; wait", timeout=20)
        assert slow["returncode"] == -1 and time.monotonic() - started < 5
        assert "sleep 30 & echo started; wait" in slow["exception_info"]  # the agent's command, not the jail's argv
        refused = box.run("touch late")
        assert refused["returncode"] == -1 and "wall clock" in refused["exception_info"]
        assert box.patch() == ""  # read after the agent's processes were stopped; `late` never ran
        assert box.limits_hit == ["command timeout (2 s)", "wall clock limit of 2 s reached"]
    assert stray_processes() == []


def test_local_episodes_without_bubblewrap_run_only_the_scripted_teacher(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "bubblewrap", lambda: None)
    with HostileTeacher(ScriptedTeacherConfig(model="hostile-teacher")) as teacher:
        ctx = make_context(tmp_path, teacher, "local")
        image = ImageRef.from_dict(pipeline.build_image(ctx, pipeline.select_commits(ctx)[0]))
        episode = {"instance_id": "i-1", "stage": 1, "attempt": 0, "task": "Fix it.", "image": image,
                   "settings": ctx.spec.rollout, "secrets": []}

        def spec(server: ModelServer, trajectory: str, allow_unconfined_local: bool = False) -> EpisodeSpec:
            return EpisodeSpec(teacher=EpisodeTeacher(server, None), trajectory_path=tmp_path / trajectory,
                               confinement=Confinement(LIMITS, allow_unconfined_local=allow_unconfined_local),
                               **episode)

        with pytest.raises(sandbox.SandboxRefused, match=r"apt-get install bubblewrap.*allow_unconfined_local"):
            run_episode(spec(ctx.server, "refused.traj.json"))
        assert teacher.observations == []  # refused before the teacher was asked anything
    with ScriptedTeacher() as scripted:
        server = ctx.server.model_copy(update={"base_url": scripted.url, "model": sandbox.SCRIPTED_TEACHER_MODEL})
        assert sandbox.trusted_unconfined(server)
        assert not sandbox.trusted_unconfined(server.model_copy(update={"base_url": "http://gpu-node:8000/v1"}))
        rollout = run_episode(spec(server, "scripted.traj.json"))
        assert rollout.exit_status == "Submitted"
    with ScriptedTeacher(ScriptedTeacherConfig(model="real-teacher")) as real:  # the platform accepts the risk
        opted_in = make_context(tmp_path / "opt-in", real, "local", allow_unconfined_local=True)
        assert opted_in.platform.images.allow_unconfined_local
        rollout = run_episode(spec(opted_in.server, "opted-in.traj.json", allow_unconfined_local=True))
        assert rollout.exit_status == "Submitted"
    assert ScriptedTeacherConfig().model == sandbox.SCRIPTED_TEACHER_MODEL


@pytest.mark.docker
def test_episode_containers_are_locked_down_and_removed(tmp_path):
    require_sandbox("docker")
    with ScriptedTeacher() as teacher:
        ctx = make_context(tmp_path, teacher, "docker")
        image = ImageRef.from_dict(pipeline.build_image(ctx, pipeline.select_commits(ctx)[0]))
    with sandbox.open_sandbox(image, command_timeout_s=10, name="inspect", limits=LIMITS, run_id="inspect-run",
                              time_limit_s=60) as box:
        container = box.env.container_id
        info = json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                                         check=True).stdout)[0]
        host = info["HostConfig"]
        assert info["Config"]["User"] == f"{sandbox.AGENT_UID}:{sandbox.AGENT_UID}"
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["NetworkMode"] == "none" and "no-new-privileges" in host["SecurityOpt"]
        assert (host["PidsLimit"], host["Memory"], host["NanoCpus"]) == (64, 256 * 2**20, 10**9)
        assert info["Config"]["Labels"][sandbox.RUN_LABEL] == "inspect-run"
        status = box.run("grep CapEff /proc/self/status; id -u; touch mine /tmp/scratch && echo writable")["output"]
        assert "0000000000000000" in status and f"\n{sandbox.AGENT_UID}\n" in status and "writable" in status
        assert "Read-only file system" in box.run("touch /usr/pwned")["output"]
    assert docker_leftovers("inspect-run") == []


@pytest.mark.docker
def test_reap_orphans_removes_only_what_dead_workers_left(tmp_path):
    require_sandbox("docker")
    run_id = f"reap-{os.getpid()}"
    dead = subprocess.Popen(["true"])
    dead.wait()
    owners = {"dead": f"{socket.gethostname()}:{dead.pid}:1", "alive": sandbox._owner(), "elsewhere": "other-host:1:1"}
    created = {}
    for who, owner in owners.items():
        labels = ["--label", f"{sandbox.RUN_LABEL}={run_id}", "--label", f"{sandbox.OWNER_LABEL}={owner}"]
        created[who] = subprocess.run(["docker", "run", "-d", "--network", "none", *labels, "sera-base:bookworm",
                                       "sleep", "60"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        assert sandbox.reap_orphans(run_id) == [created["dead"][:12]]
        assert sorted(docker_leftovers(run_id)) == sorted(created[w][:12] for w in ("alive", "elsewhere"))
    finally:
        subprocess.run(["docker", "rm", "-f", *created.values()], capture_output=True)
