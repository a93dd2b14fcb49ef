"""Where an agent's commands run: a fresh container of the commit's image, or a private local copy of the snapshot.

Both are mini-swe-agent environments, so the agent loop does not know which one it has. Every episode starts from the
pristine snapshot and is thrown away afterwards; the patch is taken from the work tree with `git diff`, whatever
the agent printed, so an episode cut off by the step limit still yields what it changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sera_ops.images import ImageRef

AGENT_ENV = {"PAGER": "cat", "MANPAGER": "cat", "LESS": "-R", "PIP_PROGRESS_BAR": "off", "TQDM_DISABLE": "1",
             "GIT_PAGER": "cat"}
# Host variables a local episode may see; everything else (tokens, API keys, cloud credentials) is blanked.
_LOCAL_PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER")
PATCH_COMMAND = "git add --all && git diff --cached --no-color --no-ext-diff --binary"


def _local_environment_class() -> type:
    from minisweagent.environments.local import LocalEnvironment

    class ScrubbedLocalEnvironment(LocalEnvironment):
        """mini-swe-agent's local environment, minus the host's secrets: commands like `env` show nothing."""

        def execute(self, action: dict, cwd: str = "", *, timeout: int | None = None) -> dict[str, Any]:
            self.config.env = scrubbed_environ() | AGENT_ENV
            return super().execute(action, cwd, timeout=timeout)

        def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
            return self.config.model_dump() | kwargs

    return ScrubbedLocalEnvironment


def scrubbed_environ() -> dict[str, str]:
    """An override for every host variable: kept as is when harmless, else blanked."""
    return {key: (value if key in _LOCAL_PASSTHROUGH else "") for key, value in os.environ.items()}


@dataclass
class Sandbox:
    env: Any
    cwd: str

    def run(self, command: str, timeout: int = 120) -> dict[str, Any]:
        return self.env.execute({"command": command}, timeout=timeout)

    def patch(self) -> str:
        result = self.run(PATCH_COMMAND)
        if result["returncode"] != 0:
            raise RuntimeError(f"could not read the patch from {self.cwd}: {result['output'][-2000:]}")
        return result["output"]


@contextmanager
def open_sandbox(image: ImageRef, *, command_timeout_s: float, name: str) -> Iterator[Sandbox]:
    if image.kind == "docker":
        with _docker_sandbox(image, command_timeout_s, name) as sandbox:
            yield sandbox
    else:
        with _local_sandbox(image, command_timeout_s, name) as sandbox:
            yield sandbox


@contextmanager
def _docker_sandbox(image: ImageRef, command_timeout_s: float, name: str) -> Iterator[Sandbox]:
    from minisweagent.environments.docker import DockerEnvironment

    env = DockerEnvironment(image=image.image, cwd=image.workdir, timeout=int(command_timeout_s), env=AGENT_ENV,
                            run_args=["--rm", "--network", "none", "--label", f"sera.episode={name}"],
                            interpreter=["bash", "-c"], pull_timeout=300)
    try:
        yield Sandbox(env=env, cwd=image.workdir)
    finally:
        container, env.container_id = env.container_id, None  # stop mini-swe-agent's background cleanup
        if container:
            subprocess.run([env.config.executable, "rm", "-f", container], capture_output=True, timeout=60)


@contextmanager
def _local_sandbox(image: ImageRef, command_timeout_s: float, name: str) -> Iterator[Sandbox]:
    scratch = tempfile.mkdtemp(prefix=f"sera-{name[:40]}-")
    workdir = os.path.join(scratch, "testbed")
    try:
        subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", image.workdir, workdir], check=True,
                       capture_output=True)
        subprocess.run(["git", "remote", "remove", "origin"], cwd=workdir, check=True, capture_output=True)
        env = _local_environment_class()(cwd=workdir, timeout=int(command_timeout_s))
        yield Sandbox(env=env, cwd=workdir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
