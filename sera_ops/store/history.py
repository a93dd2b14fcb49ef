"""What earlier runs of a repository already covered, for incremental refreshes.

A nightly refresh of a personal repository should not pay a teacher twice for the same work: it skips commits that
an earlier run already assembled, and start functions whose exact source an earlier run already rolled out (a function
is identified by file, name and a hash of its source lines, so an edited function counts as new).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sera_ops.records import StartFunction
from sera_ops.store.io import read_json
from sera_ops.store.layout import RunStore


def fingerprint(snapshot_dir: Path, function: StartFunction) -> str:
    lines = (snapshot_dir / function.file).read_text(encoding="utf-8", errors="replace").splitlines()
    source = "\n".join(lines[function.line - 1:function.end_line])
    return hashlib.sha256(f"{function.file}\0{function.name}\0{source}".encode()).hexdigest()[:20]


def _earlier_runs(store: RunStore) -> list[RunStore]:
    repo = store.repo_store
    return [repo.run(name) for name in repo.run_names() if name != store.name]


def seen_commits(store: RunStore) -> set[str]:
    """Commits of earlier runs that got as far as an assembled dataset."""
    seen: set[str] = set()
    for run in _earlier_runs(store):
        if run.dataset.stats.exists() and run.commits.exists():
            seen.update(read_json(run.commits)["commits"])
    return seen


def seen_functions(store: RunStore) -> set[str]:
    """Fingerprints of start functions that an earlier run finished rollout one on."""
    seen: set[str] = set()
    for run in _earlier_runs(store):
        for instance_id, value in run.read_json(run.fingerprints, {}).items():
            if run.instance(instance_id).rollout_one.exists():
                seen.add(value)
    return seen
