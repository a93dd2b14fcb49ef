"""The test suite's own contract with the machine: a missing part skips its tests with the command that provides it,
except where `make test` as root set every part up (then the same absence fails)."""
import dataclasses
import subprocess
import sys

import pytest

from tests.support import ROOT, parts


@pytest.fixture
def absent_browser(monkeypatch):
    gone = dataclasses.replace(parts.PARTS["chromium"], present=lambda: False)
    monkeypatch.setitem(parts.PARTS, "chromium", gone)


def test_a_missing_part_skips_naming_it_and_the_command_that_provides_it(absent_browser, monkeypatch):
    monkeypatch.delenv(parts.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"missing part 'chromium'.*sudo make test"):
        parts.require("chromium")


def test_where_every_part_was_set_up_a_missing_one_fails(absent_browser, monkeypatch):
    monkeypatch.setenv(parts.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="chromium"):
        parts.require("chromium")


def test_the_report_lists_each_missing_part_in_one_block():
    env = {"PATH": "/nonexistent", "DOCKER_HOST": "unix:///nonexistent.sock"}
    result = subprocess.run([sys.executable, "-m", "tests.support.parts"], cwd=ROOT, env=env, capture_output=True,
                            text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].endswith("will be SKIPPED:") and "sudo make test" in lines[-1]
    assert {line.split(":")[0].strip(" -") for line in lines[1:-1]} == set(parts.PARTS)
    assert result.stderr == ""
