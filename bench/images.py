"""Image build time for a real project's consecutive commits: the shared dependency layer against one layer per commit.

Flask 3.0.1 → 3.0.2 → 3.0.3 as three git commits (from their PyPI sdists), dependencies from a wheelhouse served on
loopback (scripts/fetch_test_data.sh fetches both). Two modes side by side, each from a cold engine (its images
removed first, nothing pushed, so nothing is reused from elsewhere):
- `single layer` (the baseline: `dependency_layer: false`): every commit runs `install_cmds` in full;
- `shared layer` (the default): the first commit builds the dependency layer, later commits with the same dependency
  inputs only install their own source on top of it.
Target P4: the second commit's build ≤ 0.25× the first. Needs a Docker engine (`eval "$(scripts/services.sh env)"`).

    python bench/images.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sera_ops.build import images  # noqa: E402
from sera_ops.settings import ImageSettings, RegistrySettings, RepoSpec  # noqa: E402
from sera_ops.sources import repos  # noqa: E402
from sera_ops.testing.sdist_history import build_history  # noqa: E402
from sera_ops.testing.wheelhouse import Wheelhouse  # noqa: E402

TESTDATA = ROOT / "var" / "testdata"
INSTALL = ["pip install -e .", "pip install pytest"]


def remove_images(client, repo: str) -> None:
    for image in client.images.list(filters={"label": f"sera.repo={repo}"}):
        client.images.remove(image.id, force=True)


def build_all(client, work: Path, commits: list[str], wheelhouse: Wheelhouse, layered: bool) -> list[float]:
    repo = f"bench-flask-{'layered' if layered else 'single'}"
    remove_images(client, repo)
    settings = ImageSettings(build_network="host", build_env=wheelhouse.pip_env())
    spec = RepoSpec(name=repo, source=str(work / "flask"), install_cmds=INSTALL, dependency_layer=layered,
                    top_level_folder=["src/flask"])
    recipe = images.build_recipe(settings, spec)
    seconds = []
    for commit in commits:
        snapshot = repos.snapshot(work / "flask", commit, work / "snapshots" / commit, repo)
        started = time.perf_counter()
        images.build_commit_image(client, recipe, commit=commit, snapshot_dir=Path(snapshot.workdir),
                                  top_level_folder=spec.top_level_folder, registry=RegistrySettings(push=False),
                                  registry_password=None)
        seconds.append(time.perf_counter() - started)
    remove_images(client, repo)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    subprocess.run([str(ROOT / "scripts" / "fetch_test_data.sh")], check=True)
    client = images.docker_client()
    if client is None:
        sys.exit("no Docker engine: run `scripts/services.sh start` and `eval \"$(scripts/services.sh env)\"`")
    runs: dict[bool, list[list[float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="sera-bench-images-") as scratch, \
            Wheelhouse(TESTDATA / "wheelhouse") as wheelhouse:
        work = Path(scratch)
        commits = build_history(work / "flask", sorted((TESTDATA / "sdists").glob("flask-*.tar.gz")))
        for _ in range(args.repeats):
            for layered in (False, True):
                runs[layered].append(build_all(client, work, commits, wheelhouse, layered))
    median = {mode: [statistics.median(run[i] for run in rows) for i in range(len(commits))]
              for mode, rows in runs.items()}
    print(f"flask 3.0.1 -> 3.0.2 -> 3.0.3, dependencies from a loopback wheelhouse, median of {args.repeats} cold "
          "runs")
    print("| mode | commit 1 s | commit 2 s | commit 3 s | commit 2 / commit 1 |")
    print("|---|---:|---:|---:|---:|")
    for mode, label in ((False, "single layer (baseline)"), (True, "shared dependency layer")):
        first, second, third = median[mode]
        print(f"| {label} | {first:.1f} | {second:.1f} | {third:.1f} | {second / first:.2f}x |")
    saved = sum(median[False]) / sum(median[True])
    print(f"all three commits: shared layer {sum(median[True]):.1f} s vs {sum(median[False]):.1f} s "
          f"({saved:.2f}x faster)")
    print(f"second_commit_ratio={median[True][1] / median[True][0]:.2f}")


if __name__ == "__main__":
    main()
