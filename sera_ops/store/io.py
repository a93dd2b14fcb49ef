"""Store I/O: files on local disk or object storage, written atomically, with no other project import.

`root` is a local path or an object-storage URL (`s3://bucket/prefix`, `gs://…`) as a `upath.UPath`, which
Airflow's `ObjectStoragePath` (credentials from a connection) is one of. Writes are atomic either way: locally a temp
file, fsync and rename; remotely one PUT of the whole object, so readers never see half a file. `claim` lets the first
of several concurrent writers own a name (a conditional create on object storage).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from upath import UPath

StorePath = Path | UPath
"""A file in the store: a local `Path`, or a `UPath` on object storage."""

STORAGE_OPTIONS_ENV = "SERA_STORAGE_OPTIONS"
"""JSON object of fsspec storage options (e.g. `{"endpoint_url": …}`) for a remote root outside Airflow; inside
Airflow they come from the connection `storage_conn_id` names. Never from the config file: they may hold secrets."""
LOCAL_PROTOCOLS = ("", "file", "local")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_local(path: StorePath) -> bool:
    return not isinstance(path, UPath) or path.protocol in LOCAL_PROTOCOLS


def store_root(root: str | StorePath, storage_options: dict[str, Any] | None = None) -> StorePath:
    """A storage root as a path: a local one as a plain `Path` (the layout and behaviour of a local store), a URL as a
    `UPath` with `storage_options` (default: the JSON in $SERA_STORAGE_OPTIONS). A `UPath` given (Airflow's
    `ObjectStoragePath` with its connection) is kept as it is."""
    if isinstance(root, UPath):
        return Path(root.path) if is_local(root) else root
    text = str(root)
    if not _URL.match(text) or text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    if storage_options is None:
        storage_options = json.loads(os.environ.get(STORAGE_OPTIONS_ENV) or "{}")
    return UPath(text, **storage_options)


def store_url(path: StorePath) -> str:
    """Where `path` is, as a string for records and logs: a local path, or `<protocol>://<bucket>/<key>` without
    whatever connection or credentials the path object carries."""
    return str(path) if is_local(path) else f"{path.protocol}://{path.path}"


def locate(root: StorePath, location: str) -> StorePath:
    """A location recorded with `store_url` (a job's data files, a published dataset's folder) as a path under
    `root`, so that it carries the root's connection. Local roots take the location as it is."""
    if is_local(root):
        return Path(location)
    prefix = store_url(root).rstrip("/") + "/"
    if not location.startswith(prefix):
        raise ValueError(f"{location} is not in the run store {store_url(root)}: give a location inside it")
    return root / location.removeprefix(prefix)


def default_local_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sera"


def atomic_write_bytes(path: StorePath, data: bytes) -> None:
    """Locally: a temp file in the same directory, fsync, then rename. Remotely: one PUT of the whole object (object
    stores publish an object only once its upload completed). Either way readers never see half a file."""
    if not is_local(path):
        path.fs.pipe_file(path.path, data)
        return
    path = Path(path)
    tmp = _durable_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _durable_temp(path: Path, data: bytes) -> str:
    """`data` in a fsynced temp file beside `path` (same filesystem, so it can be renamed or linked into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_text(path: StorePath, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: StorePath, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: StorePath, records: Iterable[dict]) -> int:
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def append_text(path: StorePath, text: str) -> None:
    """Add `text` to a file that only this process writes: an append locally; remotely, where objects cannot grow,
    the whole object again (one PUT), so readers still see whole lines only."""
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(text)
        return
    atomic_write_text(path, (path.read_text(encoding="utf-8") if path.exists() else "") + text)


@contextmanager
def replacing(path: StorePath) -> Iterator[Path]:
    """A local temp file for a writer that wants a file name (Parquet, plots); it replaces `path` (a rename, or one
    upload) when the block succeeds, and is removed either way."""
    local = is_local(path)
    folder = Path(path).parent if local else Path(tempfile.mkdtemp(prefix="sera-upload-"))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        yield tmp
        if local:
            os.replace(tmp, path)
        else:
            atomic_write_bytes(path, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
        if not local:
            shutil.rmtree(folder, ignore_errors=True)


def claim(path: StorePath, owner: str) -> str:
    """The owner of `path`: `owner` when this call created it, else whoever did first. Creation is atomic and the
    file is whole when it appears (locally a hard link of a written temp file, which fails when the name exists; on
    object storage a conditional PUT, `If-None-Match: *` on S3), so concurrent tasks agree on one winner, and a
    retried task finds its own claim."""
    try:
        if is_local(path):
            _link_new(Path(path), owner.encode("utf-8"))
        else:
            path.fs.pipe_file(path.path, owner.encode("utf-8"), mode="create")
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    return owner


def _link_new(path: Path, data: bytes) -> None:
    """Create `path` holding `data`, or FileExistsError: readers never see it empty, as they could an O_EXCL file
    its creator is still writing."""
    tmp = _durable_temp(path, data)
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def read_json(path: StorePath) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_json_or(path: StorePath, default: Any = None) -> Any:
    return read_json(path) if path.exists() else default
