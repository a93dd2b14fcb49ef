"""The run store: portable directory names for run ids, atomic writes that never leave half a file."""
import json

import pytest

from sera_ops.store import RunStore, atomic_write_json, safe_name


def test_run_ids_become_portable_directory_names():
    assert safe_name("manual__2026-11-25T07:50:14.007087+00:00") == "manual__2026-11-25T07_50_14.007087_00_00"
    assert safe_name("scheduled__x/../y") == "scheduled__x_.._y"
    with pytest.raises(ValueError):
        safe_name("///")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a" / "result.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_layout_separates_runs_and_shares_caches(tmp_path):
    one, two = RunStore(tmp_path, "repo", "run:1"), RunStore(tmp_path, "repo", "run:2")
    assert one.instance_file("i1", "rollout1.json") != two.instance_file("i1", "rollout1.json")
    assert one.inventory_path("abc") == two.inventory_path("abc")
    assert one.read_json(one.path("missing.json"), default=[]) == []
