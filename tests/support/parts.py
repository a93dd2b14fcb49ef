"""The parts of the machine some tests need (an engine, bubblewrap, a browser, ...), checked in one place.

A test that needs a missing part skips with the part's name and the command that provides it; `make test` as root
installs and starts every part first and sets SERA_REQUIRE_PARTS=1, so that there a missing part fails the test
instead of hiding it. `python -m tests.support.parts` prints, before a run, which parts are missing and what skips.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

REQUIRE_ENV = "SERA_REQUIRE_PARTS"
ENABLE = ("`sudo make test` (as root it installs the system packages of scripts/test-packages.txt and starts the "
          "Docker engine and registry)")


def docker_engine_reachable() -> bool:
    """True when a Docker engine answers at DOCKER_HOST (or the default socket)."""
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


def _services_engine() -> bool:
    """Root and the engine of scripts/services.sh (a unix socket it owns), where a second engine can be started."""
    return os.geteuid() == 0 and os.environ.get("DOCKER_HOST", "").startswith("unix://") and docker_engine_reachable()


@dataclass(frozen=True)
class Part:
    name: str
    present: Callable[[], bool]
    needed_by: str


PARTS = {part.name: part for part in (
    Part("docker", docker_engine_reachable, "image builds, container sandboxes, existing images, real projects, the "
         "end-to-end and live runs (tests marked docker, most of tests/e2e and tests/live)"),
    Part("registry", lambda: bool(os.environ.get("SERA_REGISTRY")), "pushes and pulls on the loopback registry "
         "(SERA_REGISTRY, set by `eval \"$(scripts/services.sh env)\"`)"),
    Part("bubblewrap", lambda: shutil.which("bwrap") is not None, "confined local episodes (the local sandbox)"),
    Part("chromium", lambda: shutil.which("chromium") is not None, "the viewer in a real browser"),
    Part("docker-compose", lambda: shutil.which("docker-compose") is not None, "the compose stack (tests/live)"),
    Part("redis", lambda: shutil.which("redis-server") is not None, "the CeleryExecutor stack (tests/live)"),
    Part("root-engine", _services_engine, "a second Docker engine beside the first (the Celery test's two workers)"),
)}


def require(name: str) -> None:
    """Skip the calling test when part `name` is missing, saying what provides it; fail instead where
    SERA_REQUIRE_PARTS=1 (`make test` as root, CI), since there every part was installed first."""
    import pytest

    part = PARTS[name]
    if part.present():
        return
    message = f"missing part '{name}' (needed for {part.needed_by}); to have it: {ENABLE}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} — but {REQUIRE_ENV}=1 says it was set up")
    pytest.skip(message)


def missing() -> list[Part]:
    return [part for part in PARTS.values() if not part.present()]


def main() -> int:
    """Print the up-front block: which parts are missing and which tests will skip because of them."""
    absent = missing()
    if not absent:
        print("[test] every part the suite needs is here: no test will skip for want of one")
    else:
        lines = [f"  - {part.name}: {part.needed_by}" for part in absent]
        print("[test] these parts are missing, so the tests that need them will be SKIPPED:", *lines,
              f"[test] to run them too: {ENABLE}", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
