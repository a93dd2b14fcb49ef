"""Where an agent's commands run: a confined container of the commit's image, or a confined local copy of the snapshot.

Both are mini-swe-agent environments, so the agent loop does not know which one it has. Every episode starts from the
pristine snapshot and is thrown away afterwards; the patch is taken from the work tree with `git diff`, whatever
the agent printed, so an episode cut off by the step limit still yields what it changed.

A teacher is an untrusted program author: every command it emits runs here. Containers run as an unprivileged uid
with no capabilities, a read-only root file system (only the work tree and /tmp are writable), no network, and cgroup
limits on CPU, memory and processes. Local episodes run each command in bubblewrap: new user, PID, network, IPC and
mount namespaces, an empty environment, only the work tree writable, and rlimits. In both, no command may run past the
episode's wall clock, and the limits an episode ran into are recorded (`Sandbox.limits_hit`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sera_ops.build.images import TESTBED, ImageRef
from sera_ops.settings import ModelServer, SandboxLimits

log = logging.getLogger(__name__)

AGENT_ENV = {"PAGER": "cat", "MANPAGER": "cat", "LESS": "-R", "PIP_PROGRESS_BAR": "off", "TQDM_DISABLE": "1",
             "GIT_PAGER": "cat", "HOME": "/tmp", "LANG": "C.UTF-8"}
AGENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Host variables an unconfined local episode may see; everything else (tokens, API keys, cloud credentials) is blanked.
_LOCAL_PASSTHROUGH = ("PATH", "LC_ALL", "TERM", "TMPDIR", "USER")
PATCH_COMMAND = "git add --all && git diff --cached --no-color --no-ext-diff --binary"

SCRIPTED_TEACHER_MODEL = "scripted-teacher"
"""The scripted teacher (the `scripted_teacher` test double) plays a fixed, reviewed script, so on loopback it is the
one teacher a local episode may run unconfined for when bubblewrap is missing."""
BWRAP_HINT = "install bubblewrap (apt-get install bubblewrap)"

DOCKER_CLI = "docker"
RUN_LABEL, EPISODE_LABEL, OWNER_LABEL = "sera.run", "sera.episode", "sera.owner"
AGENT_UID = 1000
"""The container user of agent commands; the work tree is handed to it by a root setup step."""
_CONTAINER_GRACE_S = 3600
"""A container's main process outlives the episode's wall clock by this much, then the engine removes it: the safety
net for containers whose worker died (model calls may still be retrying when the wall clock runs out)."""
_LOCAL_UID_BASE = 1_100_000
"""When the worker is root, each local episode runs as its own unprivileged uid from here on, so RLIMIT_NPROC counts
only that episode's processes (root ignores it) and episodes cannot signal each other."""
_ETC_FILES = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group",
              "nsswitch.conf", "ssl/certs", "ca-certificates", "gitconfig", "mime.types", "python3", "python3.11")
"""What a local episode sees of /etc: enough for the dynamic loader, awk/python alternatives and git; no secrets."""
_MIB = 1024 * 1024
_local_uids = itertools.count()


class SandboxError(RuntimeError):
    """The sandbox could not be set up, or could not give the patch back (e.g. the agent deleted .git)."""


class SandboxRefused(SandboxError):
    """A local episode would run unconfined for a teacher that is not trusted with that."""


@dataclass
class EpisodeClock:
    """The episode's wall clock, enforced outside the agent loop: a command gets at most the time that is left, and
    none once it is spent; every limit the episode ran into is noted with its reason."""

    time_limit_s: float | None
    started: float = field(default_factory=time.monotonic)
    limits_hit: list[str] = field(default_factory=list)
    running: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> None:
        """Start counting now: setting the sandbox up is not the agent's time."""
        self.started = time.monotonic()

    def hit(self, reason: str) -> None:
        with self._lock:
            if reason not in self.limits_hit:
                self.limits_hit.append(reason)

    def budget(self, timeout: float) -> int | None:
        """Seconds the next command may take, or None when the wall clock is spent."""
        if not self.running or self.time_limit_s is None:
            return math.ceil(timeout)
        left = self.time_limit_s - (time.monotonic() - self.started)
        if left <= 0:
            self.hit(f"wall clock limit of {self.time_limit_s:g} s reached")
            return None
        return max(1, math.ceil(min(timeout, left)))


class _Clocked:
    """Mixin for mini-swe-agent environments: confine each command and hold it to the episode's clock."""

    clock: EpisodeClock
    config: Any

    def _confine(self, command: str) -> str:
        return command

    def execute(self, action: dict, cwd: str = "", *, timeout: int | None = None) -> dict[str, Any]:
        budget = self.clock.budget(timeout or self.config.timeout)
        if budget is None:
            return {"output": "", "returncode": -1, "exception_info": "not run: the episode's wall clock is spent"}
        command = action.get("command", "")
        confined = self._confine(command)
        result = super().execute({**action, "command": confined}, cwd, timeout=budget)  # type: ignore[misc]
        extra = result.get("extra") or {}
        if extra.get("exception_type") == "TimeoutExpired":
            self.clock.hit(f"command timeout ({budget} s)")
        if confined != command:  # error messages quote the command: show the agent its own, not the jail's argv
            result["exception_info"] = result.get("exception_info", "").replace(confined, command)
            if "exception" in extra:
                extra["exception"] = extra["exception"].replace(confined, command)
        return result

    def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
        """Only the environment's own settings: never the host's environment variables."""
        return self.config.model_dump() | kwargs


def _docker_environment_class() -> type:
    from minisweagent.environments.docker import DockerEnvironment

    class ConfinedDockerEnvironment(_Clocked, DockerEnvironment):
        """mini-swe-agent's docker environment, held to the episode's wall clock."""

    return ConfinedDockerEnvironment


def _local_environment_class() -> type:
    from minisweagent.environments.local import LocalEnvironment

    class ConfinedLocalEnvironment(_Clocked, LocalEnvironment):
        """mini-swe-agent's local environment: each command runs in `jail` (bubblewrap), or, for a trusted teacher
        without bubblewrap, directly with the host's secrets blanked from its environment."""

        jail: tuple[str, ...] = ()

        def _confine(self, command: str) -> str:
            return f"exec {shlex.join([*self.jail, command])}" if self.jail else command

        def execute(self, action: dict, cwd: str = "", *, timeout: int | None = None) -> dict[str, Any]:
            self.config.env = scrubbed_environ() | AGENT_ENV
            return super().execute(action, cwd, timeout=timeout)

        def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
            """In the jail the work tree is at /testbed, whatever its host path: that is where the agent is sent."""
            return super().get_template_vars(**kwargs) | ({"cwd": TESTBED} if self.jail else {})

    return ConfinedLocalEnvironment


def scrubbed_environ() -> dict[str, str]:
    """An override for every host variable: kept as is when harmless, else blanked."""
    return {key: (value if key in _LOCAL_PASSTHROUGH else "") for key, value in os.environ.items()}


@dataclass
class Sandbox:
    env: Any
    cwd: str
    clock: EpisodeClock
    kind: str

    @property
    def limits_hit(self) -> list[str]:
        return list(self.clock.limits_hit)

    def run(self, command: str, timeout: int = 120) -> dict[str, Any]:
        return self.env.execute({"command": command}, timeout=timeout)

    def patch(self) -> str:
        """Stop whatever the agent left running, then read the work tree's diff (not held to the wall clock)."""
        self.clock.running = False
        if self.kind == "docker":
            _settle_container(self.env, self.clock)
        result = self.run(PATCH_COMMAND)
        if result["returncode"] != 0:
            raise SandboxError(f"could not read the patch from {self.cwd}: "
                               f"{(result['output'] + result.get('exception_info', ''))[-2000:]}")
        return result["output"]


def trusted_unconfined(server: ModelServer) -> bool:
    """Whether `server` is the scripted teacher on loopback, whose script may run unconfined."""
    return server.model == SCRIPTED_TEACHER_MODEL and urlsplit(server.base_url).hostname in ("127.0.0.1", "localhost",
                                                                                             "::1")


@contextmanager
def open_sandbox(image: ImageRef, *, command_timeout_s: float, name: str, limits: SandboxLimits | None = None,
                 time_limit_s: float | None = None, run_id: str | None = None, allow_unconfined: bool = False
                 ) -> Iterator[Sandbox]:
    """A fresh sandbox for one episode, removed on exit. `allow_unconfined` lets a local episode run without
    bubblewrap when it is missing (the scripted teacher, or `images.allow_unconfined_local`)."""
    clock, limits = EpisodeClock(time_limit_s), limits or SandboxLimits()
    if image.kind == "docker":
        opened = _docker_sandbox(image, command_timeout_s, name, limits, clock, run_id)
    else:
        opened = _local_sandbox(image, command_timeout_s, name, limits, clock, allow_unconfined)
    with opened as sandbox:
        clock.start()
        yield sandbox


# ---------------------------------------------------------------------------------------------------------------------
# Containers


def _owner() -> str:
    """This worker process as host:pid:start-time, so a later task can tell whether a container's owner is alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's worker: not ours to judge; its container ends with its own sleep
    return _start_time(int(pid)) == started


_EPISODE_OBJECTS = {"container": (["ps", "-a"], ".ID", ["rm", "-f", "-v"]),
                    "volume": (["volume", "ls"], ".Name", ["volume", "rm", "-f"])}


def reap_orphans(run_id: str, executable: str = DOCKER_CLI) -> list[str]:
    """Remove the containers and work-tree volumes of run `run_id` whose worker process on this machine is gone (e.g.
    killed mid-episode); those of live workers, such as a parallel batch task of the same run, are left alone."""
    removed = []
    for kind, (listing, key, remove) in _EPISODE_OBJECTS.items():
        found = subprocess.run([executable, *listing, "--filter", f"label={RUN_LABEL}={run_id}", "--format",
                                f'{{{{{key}}}}} {{{{.Label "{OWNER_LABEL}"}}}}'], capture_output=True, text=True,
                               timeout=60)
        if found.returncode != 0:
            log.warning("could not list the %ss of run %s: %s", kind, run_id, found.stderr.strip())
            continue
        orphans = [line.split()[0] for line in found.stdout.splitlines()
                   if line.strip() and not _owner_alive(line.partition(" ")[2].strip())]
        if orphans:
            subprocess.run([executable, *remove, *orphans], capture_output=True, timeout=120)
            log.warning("run %s: removed %d orphaned episode %s(s): %s", run_id, len(orphans), kind,
                        ", ".join(orphans))
            removed += orphans
    return removed


def _labels(name: str, run_id: str | None) -> list[str]:
    labels = {EPISODE_LABEL: name, OWNER_LABEL: _owner(), **({RUN_LABEL: run_id} if run_id else {})}
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]


def docker_run_args(workdir: str, volume: str, name: str, limits: SandboxLimits, run_id: str | None) -> list[str]:
    """`docker run` options of an episode container: the agent's uid, no capabilities and no way to gain any, a
    read-only root file system with only the work tree (`volume`) and a /tmp tmpfs writable, and the limits."""
    return ["--rm", "--network", limits.network, "--user", f"{AGENT_UID}:{AGENT_UID}", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges", "--read-only", "--mount", f"type=volume,src={volume},dst={workdir}",
            "--tmpfs", f"/tmp:rw,exec,nosuid,nodev,size={limits.tmp_mb}m",
            "--cpus", f"{limits.cpus:g}", "--memory", f"{limits.memory_mb}m", "--memory-swap", f"{limits.memory_mb}m",
            "--pids-limit", str(limits.pids), *_labels(name, run_id)]


def _work_tree_volume(executable: str, image: ImageRef, name: str, run_id: str | None) -> str:
    """A volume holding the image's work tree, owned by the agent's uid. The engine copies the image's tree into a
    new volume on first mount; a throwaway root container with CHOWN as its one capability hands it over (a container
    running as the agent's uid cannot get capabilities back, not even for `docker exec -u 0`)."""
    volume = _docker(executable, "volume", "create", *_labels(name, run_id)).strip()
    try:
        _docker(executable, "run", "--rm", "--network", "none", "--user", "0", "--cap-drop", "ALL", "--cap-add",
                "CHOWN", "--security-opt", "no-new-privileges", "--read-only", "--mount",
                f"type=volume,src={volume},dst={image.workdir}", image.image, "chown", "-R",
                f"{AGENT_UID}:{AGENT_UID}", image.workdir)
    except BaseException:
        subprocess.run([executable, "volume", "rm", "-f", volume], capture_output=True, timeout=60)
        raise
    return volume


@contextmanager
def _docker_sandbox(image: ImageRef, command_timeout_s: float, name: str, limits: SandboxLimits,
                    clock: EpisodeClock, run_id: str | None) -> Iterator[Sandbox]:
    executable = DOCKER_CLI
    lifetime = math.ceil((clock.time_limit_s or 0) + command_timeout_s + _CONTAINER_GRACE_S)
    volume = _work_tree_volume(executable, image, name, run_id)
    env = None
    try:
        env = _docker_environment_class()(
            image=image.image, cwd=image.workdir, timeout=int(command_timeout_s), env=AGENT_ENV, executable=executable,
            run_args=docker_run_args(image.workdir, volume, name, limits, run_id), interpreter=["bash", "-c"],
            pull_timeout=300, container_timeout=f"{lifetime}s")
        env.clock = clock
        yield Sandbox(env=env, cwd=image.workdir, clock=clock, kind="docker")
    finally:
        if env is not None and env.container_id:
            container, env.container_id = env.container_id, None  # stop mini-swe-agent's background cleanup
            subprocess.run([executable, "rm", "-f", "-v", container], capture_output=True, timeout=60)
        subprocess.run([executable, "volume", "rm", "-f", volume], capture_output=True, timeout=60)


def _docker(executable: str, *args: str) -> str:
    result = subprocess.run([executable, *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SandboxError(f"docker {args[0]} failed: {(result.stdout + result.stderr).strip()[-2000:]}")
    return result.stdout


_SETTLE = ("for pass in 1 2 3; do kill -9 -1 2>/dev/null; done; cat /sys/fs/cgroup/memory/memory.oom_control "
           "/sys/fs/cgroup/memory.events /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/pids.events 2>/dev/null; true")
"""Kill every process of the agent's uid (the container's init ignores it; passes catch what forked meanwhile), then
print the cgroup v1/v2 counters of OOM kills and refused forks."""


def _settle_container(env: Any, clock: EpisodeClock) -> None:
    """Stop the agent's leftover processes (a fork bomb would starve the patch command) and note the container limits
    it ran into. The process limit is raised a little first: a fork bomb leaves no room even for `docker exec`, which
    then retries for many seconds before it fails."""
    limits = env.config.run_args
    pids = int(limits[limits.index("--pids-limit") + 1])
    subprocess.run([env.config.executable, "update", "--pids-limit", str(pids + 16), env.container_id],
                   capture_output=True, timeout=60)  # best effort: an engine without it still gets the exec below
    counters = _docker(env.config.executable, "exec", env.container_id, "bash", "-c", _SETTLE)
    for line in counters.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip() not in ("", "0"):
            memory = limits[limits.index("--memory") + 1]
            clock.hit(f"memory limit ({memory}): {value.strip()} process(es) killed")
        elif key == "max" and value.strip() not in ("", "0"):
            clock.hit(f"process limit ({pids}): {value.strip()} fork(s) refused")


# ---------------------------------------------------------------------------------------------------------------------
# Local


def bubblewrap() -> str | None:
    return shutil.which("bwrap")


def local_jail(workdir: str, limits: SandboxLimits, cpu_s: int, uid: int | None) -> list[str]:
    """The argv prefix that runs one command confined: as `uid` (when the worker is root), with rlimits, in
    bubblewrap with fresh namespaces, the host's /usr and a little of /etc read-only, its own /proc, /dev and /tmp,
    and `workdir` mounted at /testbed as the only writable host path."""
    prefix = ["env", "-i", f"PATH={AGENT_PATH}"]  # nothing of the worker's environment reaches the jail's init
    if uid is not None:
        prefix += [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                  "--inh-caps=-all"]
    prefix += [shutil.which("prlimit") or "prlimit", f"--nproc={limits.pids}", f"--as={limits.memory_mb * _MIB}",
               f"--cpu={cpu_s}", f"--fsize={limits.file_size_mb * _MIB}", "--"]
    jail = [bubblewrap() or "bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--clearenv", "--setenv", "PATH", AGENT_PATH]
    if limits.network != "none":
        jail.append("--share-net")
    for key, value in AGENT_ENV.items():
        jail += ["--setenv", key, value]
    jail += ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = f"/{top}"
        if os.path.islink(path):
            jail += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            jail += ["--ro-bind", path, path]
    for entry in _ETC_FILES:
        jail += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
    jail += ["--dev", "/dev", "--proc", "/proc", "--size", str(limits.tmp_mb * _MIB), "--tmpfs", "/tmp",
             "--bind", workdir, TESTBED, "--chdir", TESTBED]
    return [*prefix, *jail, "bash", "-c"]


def _local_uid() -> int | None:
    """A fresh unprivileged uid for this episode when the worker is root (pid-spread so that workers differ)."""
    if os.geteuid() != 0:
        return None
    return _LOCAL_UID_BASE + (os.getpid() % 4096) * 256 + next(_local_uids) % 256


@contextmanager
def _local_sandbox(image: ImageRef, command_timeout_s: float, name: str, limits: SandboxLimits, clock: EpisodeClock,
                   allow_unconfined: bool) -> Iterator[Sandbox]:
    if bubblewrap() is None and not allow_unconfined:
        raise SandboxRefused(f"local episode {name}: bubblewrap is not installed, and without it a teacher's commands "
                             "would run unconfined as the worker; " + BWRAP_HINT + ", use a Docker engine, or set "
                             "images.allow_unconfined_local: true in the platform file to accept the risk")
    scratch = tempfile.mkdtemp(prefix=f"sera-{name[:40]}-")
    workdir = os.path.join(scratch, "testbed")
    try:
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", image.workdir, workdir], check=True,
                       capture_output=True)
        subprocess.run(["git", "remote", "remove", "origin"], cwd=workdir, check=True, capture_output=True)
        env_class = _local_environment_class()
        env = env_class(cwd=workdir, timeout=int(command_timeout_s))
        env.clock = clock
        if bubblewrap() is None:
            log.warning("local episode %s runs UNCONFINED: %s to confine local episodes", name, BWRAP_HINT)
        else:
            uid = _local_uid()
            if uid is not None:
                for path in (scratch, *_tree(workdir)):
                    os.lchown(path, uid, uid)
            cpu_s = math.ceil(clock.time_limit_s or command_timeout_s)
            env.jail = tuple(local_jail(workdir, limits, cpu_s, uid))
            probe = subprocess.run([*env.jail, "true"], capture_output=True, text=True, timeout=60)
            if probe.returncode != 0:  # e.g. user namespaces disabled: every command would fail the same way
                raise SandboxError(f"local episode {name}: bubblewrap cannot start here: {probe.stderr.strip()}")
        yield Sandbox(env=env, cwd=workdir, clock=clock, kind="local")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _tree(root: str) -> Iterator[str]:
    yield root
    for directory, subdirs, files in os.walk(root):
        for entry in (*subdirs, *files):
            yield os.path.join(directory, entry)
