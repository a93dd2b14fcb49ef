"""The run store: every stage's results are files under a storage root, written atomically.

Layout (one directory per repository and DAG run; names are filesystem-safe versions of the run id):

    <root>/<repo>/sources/                        bare clone / bundled sample of the repository
    <root>/<repo>/cache/inventory/<commit>.json   function inventory, shared by all runs (keyed by full commit)
    <root>/<repo>/runs/<run>/commits.json          selected commits
    <root>/<repo>/runs/<run>/images/<commit>.json  image (or local sandbox) per commit
    <root>/<repo>/runs/<run>/instances.json        sampled instances; batches.json: their split into batches
    <root>/<repo>/runs/<run>/instances/<id>/       rollout1.json, rollout1.traj.json, synth.json, rollout2.json,
                                                   rollout2.traj.json, verdict.json, <stage>.error.json
    <root>/<repo>/runs/<run>/dataset/              t1.jsonl, t2.jsonl, stats.json
    <root>/<repo>/datasets/latest.json             the latest published dataset (and one pointer per run)

A file's presence means its step is done, so a retried or cleared task redoes only what is missing.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def safe_name(value: str) -> str:
    """A run id like 'manual__2026-11-25T07:00:00+00:00' as a portable directory name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._")
    if not cleaned:
        raise ValueError(f"cannot make a directory name from {value!r}")
    return cleaned


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: Path, records: Iterable[dict]) -> int:
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def claim(path: Path, owner: str) -> str:
    """The owner of `path`: `owner` when this call created it, else whoever did first. Creation is atomic
    (O_EXCL), so concurrent tasks agree on one winner, and a retried task finds its own claim."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip() or owner  # the winner is still writing: same name soon
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(owner)
    return owner


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


class RunStore:
    """Paths and atomic reads/writes for one repository's run."""

    def __init__(self, root: Path, repo: str, run_id: str):
        self.root = Path(root)
        self.repo = repo
        self.run_id = run_id
        self.repo_dir = self.root / safe_name(repo)
        self.run_dir = self.repo_dir / "runs" / safe_name(run_id)

    @property
    def sources_dir(self) -> Path:
        return self.repo_dir / "sources"

    def inventory_path(self, commit: str) -> Path:
        return self.repo_dir / "cache" / "inventory" / f"{safe_name(commit)}.json"

    def snapshot_dir(self, commit: str) -> Path:
        """A plain checkout of one commit, shared by runs (used for inventory and the local sandbox)."""
        return self.repo_dir / "cache" / "snapshots" / safe_name(commit)

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    def instance_dir(self, instance_id: str) -> Path:
        return self.run_dir / "instances" / safe_name(instance_id)

    def instance_file(self, instance_id: str, name: str) -> Path:
        return self.instance_dir(instance_id) / name

    @property
    def dataset_dir(self) -> Path:
        return self.run_dir / "dataset"

    @property
    def published_dir(self) -> Path:
        """One pointer file per published run, and `latest.json`: what training uses unless told otherwise."""
        return self.repo_dir / "datasets"

    @property
    def latest_dataset(self) -> Path:
        return self.published_dir / "latest.json"

    def write_json(self, path: Path, data: Any) -> None:
        atomic_write_json(path, data)

    def read_json(self, path: Path, default: Any = None) -> Any:
        return read_json(path) if path.exists() else default
