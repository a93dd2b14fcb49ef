"""Point a platform config at a running scripted teacher, for dry runs of the whole pipeline (demo, tests, users)."""

from __future__ import annotations

from pathlib import Path

import yaml

from sera_ops.settings import is_storage_url
from sera_ops.store.io import atomic_write_text

SCRIPTED_SERVER = "scripted"


def dry_run_platform(base_file: Path, workdir: Path, teacher_url: str, *, storage_root: Path | str | None = None,
                     repos_dir: Path | None = None, overrides: dict | None = None) -> Path:
    """A copy of `base_file` in `workdir` whose 'scripted' model server is `teacher_url` and whose relative paths
    still point where the original's did. Returns the new file's path. `storage_root` may be an object-storage URL."""
    base_file = Path(base_file).resolve()
    data = yaml.safe_load(base_file.read_text())
    for key, override in (("storage_root", storage_root), ("repos_dir", repos_dir)):
        if is_storage_url(override):
            data[key] = override
            continue
        value = Path(override) if override else Path(data.get(key, "repos" if key == "repos_dir" else "store"))
        data[key] = str(value if value.is_absolute() else (base_file.parent / value).resolve())
    servers = data.setdefault("model_servers", {})
    servers.setdefault(SCRIPTED_SERVER, {"model": "scripted-teacher"})["base_url"] = teacher_url
    data["defaults"] = data.get("defaults") or {}
    data["defaults"].setdefault("model_server", SCRIPTED_SERVER)
    for key, value in (overrides or {}).items():
        data[key] = value if not isinstance(value, dict) else {**data.get(key, {}), **value}
    target = Path(workdir) / "platform.yaml"
    atomic_write_text(target, yaml.safe_dump(data, sort_keys=False))
    return target
