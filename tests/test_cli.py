"""The `sera` command: validate, run without a scheduler, stats."""
import json

from sera_ops.cli import main
from sera_ops.testing.dry_run import dry_run_platform
from sera_ops.testing.scripted_teacher import ScriptedTeacher
from tests.conftest import ROOT


def test_validate_reports_every_file(tmp_path, capsys):
    repos = tmp_path / "repos"
    repos.mkdir()
    (repos / "good.yaml").write_text("source: bundled:tinyledger\n")
    (repos / "bad.yaml").write_text("source: bundled:tinyledger\ninsts_per_fn: 0\n")
    platform = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, "http://127.0.0.1:9/v1",
                                repos_dir=repos)
    assert main(["--platform", str(platform), "validate"]) == 1
    out = capsys.readouterr().out
    assert "ok     sera__good" in out and "bad.yaml: field 'insts_per_fn'" in out


def test_run_then_stats(tmp_path, capsys):
    with ScriptedTeacher() as teacher:
        platform = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, teacher.url,
                                    storage_root=tmp_path / "store", overrides={"images": {"sandbox": "local"}})
        assert main(["--platform", str(platform), "run", "tinyledger", "--run-id", "cli-1", "--max-functions",
                     "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("dataset: ")
    assert main(["--platform", str(platform), "stats", "tinyledger", "cli-1"]) == 0
    assert json.loads(capsys.readouterr().out)["instances"] == 2
    assert main(["--platform", str(platform), "stats", "tinyledger", "nope"]) == 2
    assert main(["--platform", str(platform), "run", "nope"]) == 2
    assert main(["--platform", str(platform), "run", "tinyledger", "--model-server", "ghost"]) == 2


def test_pools_file_has_one_pool_per_model_server(tmp_path, capsys):
    platform = dry_run_platform(ROOT / "config" / "platform.yaml", tmp_path, "http://127.0.0.1:9/v1",
                                overrides={"model_servers": {"big": {"base_url": "http://127.0.0.1:8/v1", "model": "m",
                                                                     "parallel_batches": 6}}})
    assert main(["--platform", str(platform), "pools", "--out", str(tmp_path / "pools.json")]) == 0
    pools = json.loads((tmp_path / "pools.json").read_text())
    assert {name: pool["slots"] for name, pool in pools.items()} == {"sera_model_scripted": 2, "sera_model_big": 6}
