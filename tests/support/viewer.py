"""The viewer app as a logged-in user sees it, over a store (Airflow's login itself is tested in test_viewer.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sera_ops.settings import PLATFORM_CONFIG_ENV


def logged_in_client(platform_file: Path, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    import sera_viewer

    monkeypatch.setenv(PLATFORM_CONFIG_ENV, str(platform_file))
    monkeypatch.setitem(sera_viewer.app.dependency_overrides, sera_viewer.airflow_login, lambda: None)
    return TestClient(sera_viewer.app)
