"""Function inventory speed and coverage on Django, against code2flow (the call-graph tool SERA ran per commit).

Both sides read the same files: `sera_ops.build.inventory.code_files` of the `django` folder at depth <= 3 with tests
skipped, handed to code2flow 2.5.1's Python API as an explicit list (`no_trimming=True`, JSON output). Django 5.1 and
5.2 are committed one after the other to a git repository and snapshotted the way the pipeline does, so that:

- cold: our inventory of 5.2 with an empty blob cache (the cache file is written, as in the pipeline);
- warm: the same call again with the cache present (no file is parsed);
- second commit: 5.1 cold, then 5.2 with 5.1's cache; the ratio is the second call's time over the first's (a
  feature release apart: 104 of 371 files, 65% of the bytes, changed, and those are parsed again);
- next commit: a third commit that edits one file of 5.2, after 5.2 cold (the everyday case: a nightly refresh).

Coverage is the share of code2flow's functions (its per-file `(global)` nodes left out) that our inventory also
finds. code2flow names a function `<file basename>::<Class.method>` with its line in the label, so a node counts as
found when we have a function in a file with that basename and either the same `Class.method` name or the same line.
Each timing is the median of `--repeat` runs (`--code2flow-repeat` for code2flow, about 12 s a run on 2 cores).

    python bench/inventory.py [--repeat 5] [--code2flow-repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import code2flow  # noqa: E402

from sera_ops import records
from sera_ops.build import inventory
from sera_ops.sources import repos  # noqa: E402

CACHE = ROOT / "var" / "bench-cache"
VERSIONS = ("5.1", "5.2")  # committed in this order
FOLDERS = ["django"]
MAX_DEPTH = 3
EDITED = "django/utils/text.py"


def sdist(version: str) -> Path:
    """Django's sdist, downloaded once (pip takes one version of a package per call)."""
    archive = CACHE / f"Django-{version}.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"django=={version}", "-d", str(CACHE)], check=True)
    return archive


def git_repo(work: Path) -> tuple[Path, list[str]]:
    """A repository with one commit per Django version (each commit the whole sdist tree) and a third commit that
    edits one file of the last version, and the commit ids."""
    repo = work / "django-src"
    repo.mkdir()
    repos.git("init", "--quiet", cwd=repo)
    commits = []
    for version in VERSIONS:
        for entry in repo.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        with tarfile.open(sdist(version)) as tar:
            tar.extractall(work / version, filter="data")
        (top,) = (work / version).iterdir()  # Django-<version>/
        for entry in top.iterdir():
            entry.rename(repo / entry.name)
        repos.git("add", "--all", cwd=repo)
        repos.git(*repos.SNAPSHOT_IDENTITY, "commit", "--quiet", "-m", f"Django {version}", cwd=repo)
        commits.append(repos.git("rev-parse", "HEAD", cwd=repo).decode().strip())
    with (repo / EDITED).open("a", encoding="utf-8") as handle:
        handle.write("\n\ndef added_by_the_benchmark():\n    return None\n")
    repos.git(*repos.SNAPSHOT_IDENTITY, "commit", "--quiet", "--all", "-m", f"edit {EDITED}", cwd=repo)
    commits.append(repos.git("rev-parse", "HEAD", cwd=repo).decode().strip())
    return repo, commits


def median_time(run: Callable[[], object], repeat: int, before: Callable[[], object] = lambda: None) -> float:
    """Median wall time of `run` over `repeat` runs, `before` (untimed) ahead of each."""
    times = []
    for _ in range(repeat):
        before()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def code2flow_nodes(workdir: Path, files: list[str], output: Path) -> list[dict]:
    code2flow.code2flow([str(workdir / relative) for relative in files], str(output), language="py",
                        no_trimming=True, skip_parse_errors=True, level=logging.ERROR)
    return list(json.loads(output.read_text())["graph"]["nodes"].values())


def coverage(ours: list[records.StartFunction], nodes: list[dict]) -> tuple[int, int]:
    """(code2flow functions, of which we find); see the module docstring for the matching."""
    by_name = {(Path(f.file).stem, f.name) for f in ours}
    by_line = {(Path(f.file).stem, f.line) for f in ours}
    theirs = [node for node in nodes if not node["name"].endswith("::(global)")]
    found = 0
    for node in theirs:
        stem, name = node["name"].split("::", 1)
        line = int(node["label"].split(":", 1)[0])
        found += (stem, name) in by_name or (stem, line) in by_line
    return len(theirs), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing of our inventory")
    parser.add_argument("--code2flow-repeat", type=int, default=3, help="runs per code2flow timing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # code2flow warns about every duplicate class name
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sera-bench-inventory-") as scratch:
        work = Path(scratch)
        repo, commits = git_repo(work)
        old, new, edited = (Path(repos.snapshot(repo, commit, work / "snapshots" / commit, "django").workdir)
                            for commit in commits)
        blobs = work / "cache" / "inventory" / "blobs.json"

        def clear_cache() -> None:
            blobs.unlink(missing_ok=True)

        def ours(workdir: Path) -> list[records.StartFunction]:
            return inventory.list_functions(workdir, FOLDERS, MAX_DEPTH, blob_cache=blobs)

        files = inventory.code_files(new, FOLDERS, MAX_DEPTH)
        nodes: list[dict] = []  # code2flow's answer, kept from its last timed run

        def run_code2flow() -> None:
            nodes[:] = code2flow_nodes(new, files, work / "code2flow.json")

        theirs_s = median_time(run_code2flow, args.code2flow_repeat)
        cold_s = median_time(lambda: ours(new), args.repeat, before=clear_cache)
        found = ours(new)
        warm_s = median_time(lambda: ours(new), args.repeat)
        first_s = median_time(lambda: ours(old), args.repeat, before=clear_cache)
        second_s = median_time(lambda: ours(new), args.repeat, before=lambda: (clear_cache(), ours(old)))
        next_s = median_time(lambda: ours(edited), args.repeat, before=lambda: (clear_cache(), ours(new)))
        total, matched = coverage(found, nodes)
        changed = [f for f in files if not (old / f).is_file() or (old / f).read_bytes() != (new / f).read_bytes()]
        changed_share = sum((new / f).stat().st_size for f in changed) / sum((new / f).stat().st_size for f in files)

    speedup, ratio, next_ratio, share = theirs_s / cold_s, second_s / first_s, next_s / cold_s, matched / total
    print(f"Django {VERSIONS[1]}: {len(files)} files (django/, depth <= {MAX_DEPTH}, tests skipped), "
          f"{len(found)} functions found by us, {total} by code2flow; {len(changed)} files ({changed_share:.0%} of the "
          f"bytes) differ from {VERSIONS[0]}, so the second commit parses them again")
    print(f"median of {args.repeat} runs (code2flow: {args.code2flow_repeat})")
    print("| measurement | wall s | ratio | target |")
    print("|---|---:|---:|---|")
    print(f"| code2flow 2.5.1 (baseline) | {theirs_s:.3f} | 1x | |")
    print(f"| ours, cold (no blob cache) | {cold_s:.3f} | {speedup:.1f}x faster | >= 20x |")
    print(f"| ours, warm (blob cache present) | {warm_s:.3f} | {theirs_s / warm_s:.0f}x faster | < 0.2 s |")
    print(f"| ours, first commit ({VERSIONS[0]}, cold) | {first_s:.3f} | | |")
    print(f"| ours, second commit ({VERSIONS[1]}, 5.1's cache) | {second_s:.3f} | {ratio:.2f}x of first | <= 0.1x |")
    print(f"| ours, next commit (1 file edited, 5.2's cache) | {next_s:.3f} | {next_ratio:.2f}x of cold | |")
    print(f"| code2flow functions we find | {matched}/{total} | {share:.3f} | >= 0.95 |")
    print(f"speedup_cold={speedup:.1f} warm_s={warm_s:.3f} second_commit_ratio={ratio:.3f} "
          f"next_commit_ratio={next_ratio:.3f} coverage={share:.3f}")


if __name__ == "__main__":
    main()
