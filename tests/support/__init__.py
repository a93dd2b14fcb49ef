"""Helpers the test modules share (conftest.py only sets up the session and its fixtures)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The project's root: the repository checkout the tests run in."""


def docker_engine_reachable() -> bool:
    """True when a Docker engine answers. Where every part was set up (SERA_REQUIRE_PARTS=1: `make test` as root,
    CI), a missing engine is an error, not a reason to take another path."""
    from tests.support import parts  # not at import: `python -m tests.support.parts` runs that module as __main__

    if parts.docker_engine_reachable():
        return True
    if os.environ.get(parts.REQUIRE_ENV) == "1":
        raise RuntimeError(f"no Docker engine answers at DOCKER_HOST={os.environ.get('DOCKER_HOST')}, but "
                           f"{parts.REQUIRE_ENV}=1 says it was started")
    return False
