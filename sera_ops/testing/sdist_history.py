"""A real project's history, made from its consecutive released sdists: one git commit per version, oldest first.

Tests and benchmarks need real open-source code with real dependencies, without network at run time. PyPI's sdists
(fetched once on the host with `pip download --no-binary :all: --no-deps`) are unpacked in version order into one
work tree and committed with a fixed identity and the version's index as its date, so the same sdists always give the
same commit hashes. Use it for your own dry runs: `python -m sera_ops.testing.sdist_history DEST SDIST...`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

from sera_ops.sources.repos import extract_tar

_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "sdist history",
        "GIT_AUTHOR_EMAIL": "sdist@example.invalid", "GIT_COMMITTER_NAME": "sdist history",
        "GIT_COMMITTER_EMAIL": "sdist@example.invalid"}
_FIRST_DATE = 1767225600  # 2026-01-01: recent enough for the default lookback window


def version_of(sdist: Path) -> str:
    """`flask-3.0.2.tar.gz` → `3.0.2`."""
    match = re.match(r"^.+?-(\d[^-]*?)(\.tar\.gz|\.tgz|\.zip|\.tar\.bz2)$", sdist.name)
    if not match:
        raise ValueError(f"{sdist}: not an sdist file name (<name>-<version>.tar.gz or .zip)")
    return match.group(1)


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"[.+-]", version))


def _unpack(sdist: Path, target: Path) -> None:
    """The sdist's single top-level folder becomes `target`."""
    with tempfile.TemporaryDirectory() as scratch:
        if sdist.suffix == ".zip":
            with zipfile.ZipFile(sdist) as archive:
                archive.extractall(scratch)
        else:
            with tarfile.open(sdist) as archive:
                extract_tar(archive, Path(scratch))
        roots = list(Path(scratch).iterdir())
        source = roots[0] if len(roots) == 1 and roots[0].is_dir() else Path(scratch)
        for entry in source.iterdir():
            shutil.move(str(entry), target / entry.name)


def build_history(dest: Path, sdists: list[Path]) -> list[str]:
    """A git repository at `dest` with one commit per sdist (sorted by version); returns the commit hashes."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    git = ["git", "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "--quiet"], cwd=dest, check=True, env=os.environ | _ENV)
    commits = []
    for index, sdist in enumerate(sorted(sdists, key=lambda path: _version_key(version_of(path)))):
        for entry in dest.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        _unpack(sdist, dest)
        date = f"{_FIRST_DATE + index * 86400} +0000"
        env = os.environ | _ENV | {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        subprocess.run([*git, "add", "--all", "--force"], cwd=dest, check=True, env=env)
        subprocess.run([*git, "commit", "--quiet", "--allow-empty", "-m", f"Release {version_of(sdist)}"], cwd=dest,
                       check=True, env=env)
        commits.append(subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, check=True, capture_output=True,
                                      text=True).stdout.strip())
    return commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path)
    parser.add_argument("sdists", type=Path, nargs="+")
    args = parser.parse_args()
    for commit in build_history(args.dest, args.sdists):
        print(commit)


if __name__ == "__main__":
    main()
