"""Function inventory: which functions of a repository snapshot can be a rollout's start function, and which to use.

SERA ran the code2flow CLI through a shell with globs and mapped its nodes back to files by basename and substring,
which silently dropped ambiguous names, nested functions and methods defined in several files. Here the inventory is
read straight from each file's AST, so every `def` is found exactly once with its file and lines; a per-repository
cache keyed by git blob id means a commit re-parses only the files it changed. SERA's call graph is not computed:
nothing downstream used it. Sampling is seeded and `fns_per_repo` limits the whole repository, not each commit.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import random
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from sera_ops.records import Instance, StartFunction
from sera_ops.sources.repos import SourceError, git
from sera_ops.store.io import atomic_write_text

logger = logging.getLogger(__name__)

INVENTORY_FORMAT_VERSION = 2  # 2: no call edges
FIRST_INSTANCE_NUMBER = 10000

_TEST_DIRECTORIES = frozenset({"tests"})
_TEST_MODULES = frozenset({"tests", "conftest"})
# Top-level folders never auto-detected as code; `test`/`testing` here are suites (pytest keeps its own in testing/).
_NOT_CODE_FOLDERS = frozenset({"test", "tests", "testing", "doc", "docs", "example", "examples", "benchmark",
                               "benchmarks", "bench"})
_STATEMENT_LISTS = ("body", "orelse", "finalbody", "handlers", "cases")
_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # what parses, and how, depends on the grammar
_MAX_CACHED_BLOBS = 20_000

# (dotted name, line, end line) of each function in one file (lists, once read back from the blob cache).
_Definitions = list[tuple[str, int, int]]


class InventoryError(ValueError):
    """The repository's code cannot be located or an inventory cannot be read; the message says what to change."""


def detect_code_folders(workdir: Path, repo_name: str, top_level_folder: list[str] | None) -> list[str]:
    """Repo-relative folders holding the code to inventory.

    Listed folders are unioned (SERA kept only the last existing one). Without a list, candidates are tried in order:
    the repository name and its lower-case/underscore spellings, the same under `src/`, every package (a directory
    with `__init__.py`) at the top level or under `src/` that is not tests/docs/examples/benchmarks, then `src`.
    `repo_name` may be `owner/name`; only the name is used.
    """
    workdir = Path(workdir)
    if top_level_folder:
        tried = list(dict.fromkeys(_normalise_folder(workdir, folder) for folder in top_level_folder))
        found = [folder for folder in tried if (workdir / folder).is_dir()]
        if found:
            return found
        raise _no_code_folder_error(workdir, tried)

    name = repo_name.rstrip("/").rsplit("/", 1)[-1]
    spellings = list(dict.fromkeys([name, name.lower(), name.replace("-", "_"), name.lower().replace("-", "_")]))
    tried = [*spellings, *(f"src/{spelling}" for spelling in spellings)]
    for candidate in tried:
        if (workdir / candidate).is_dir():
            return [candidate]
    packages = sorted(_packages_in(workdir, "") + _packages_in(workdir, "src"))
    if packages:
        return packages
    if (workdir / "src").is_dir():
        return ["src"]
    tried += ["any package with __init__.py (not tests/docs/examples/benchmarks)", "src"]
    raise _no_code_folder_error(workdir, tried)


def _normalise_folder(workdir: Path, folder: str) -> str:
    """A listed folder as a clean repo-relative POSIX path; folders outside the repository are refused."""
    relative = PurePosixPath(folder.strip().replace("\\", "/"))
    resolved_root = workdir.resolve()
    if relative.is_absolute() or not (workdir / relative).resolve().is_relative_to(resolved_root):
        raise InventoryError(f"top_level_folder entry {folder!r} is outside the repository; list folders relative to "
                             "the repository root, e.g. 'src/mypackage'")
    return str(relative)


def _packages_in(workdir: Path, parent: str) -> list[str]:
    base = workdir / parent
    if not base.is_dir():
        return []
    return [str(PurePosixPath(parent, entry.name)) for entry in base.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and entry.name.lower() not in _NOT_CODE_FOLDERS
            and (entry / "__init__.py").is_file()]


def _no_code_folder_error(workdir: Path, tried: list[str]) -> InventoryError:
    return InventoryError(
        f"no code folder found in {workdir} (tried: {', '.join(tried)}); set `top_level_folder` in the repository's "
        "config to the folder(s) holding its Python code, e.g. top_level_folder: [src/mypackage]")


def is_test_path(relative_path: str) -> bool:
    """True for the repository's own tests: anything under a `tests` directory, and files named `test_*.py`,
    `*_test.py`, `tests.py` or `conftest.py` (what pytest and Django's test runner collect).

    Modules and packages named `test` or `testing` are code: in a library they are the test *support* its users import
    (`werkzeug.test`, `django.test`, `click.testing`, `numpy.testing`, Django's `manage.py test` command), and the test
    modules kept inside such a package are still caught by their file names. Whole path components are compared, so
    `latests.py` or `contest/` are code too (SERA's substring check on `tests` dropped e.g. `latests.py`).
    """
    *directories, filename = relative_path.lower().split("/")
    if any(directory in _TEST_DIRECTORIES for directory in directories):
        return True
    stem = filename.removesuffix(".py")
    return stem in _TEST_MODULES or stem.startswith("test_") or stem.endswith("_test")


def list_functions(workdir: Path, folders: list[str], max_depth: int | None = 3,
                   blob_cache: Path | None = None) -> list[StartFunction]:
    """Every function, async function, method and nested function in the folders' non-test `.py` files.

    A file's depth is its number of path components below the folder (`pkg/a/b/c.py` under `pkg` is 3, as SERA
    counted `*`s in `pkg/*/*/*.py`); files deeper than `max_depth` are left out, `None` or 0 keeps all. Files that do
    not parse are logged and skipped. Sorted by (file, line); a name defined twice in a file keeps its first `def`.

    `blob_cache` (a JSON file shared by all commits of one repository) makes later commits cheap: when `workdir` is
    the top of a git work tree, each file's definitions are stored under its git blob id, so only files whose content
    is new get parsed. Files git does not track, or that differ from its index, are always parsed; without a cache
    file or a git work tree every file is.
    """
    workdir = Path(workdir)
    files = code_files(workdir, folders, max_depth)
    blob_ids = _blob_ids(workdir, folders) if blob_cache else {}
    cached = _read_blob_cache(blob_cache) if blob_cache and blob_ids else {}
    by_blob: dict[str, _Definitions | None] = {}
    read = 0
    found: list[StartFunction] = []
    for relative in files:
        blob = blob_ids.get(relative)
        if blob in cached:
            definitions = cached[blob]
            if definitions is None:
                logger.warning("skipping %s: it did not parse (result cached for blob %s)", relative, blob)
        else:
            source = _read(workdir / relative)
            if source is None:
                continue
            definitions = _parse(source, workdir / relative)
            read += 1
        if blob:
            by_blob[blob] = definitions
        found.extend(StartFunction(name, relative, line, end_line) for name, line, end_line in definitions or ())
    if blob_cache and by_blob.keys() - cached.keys():
        _write_blob_cache(blob_cache, by_blob)
    logger.info("inventory of %s: %d functions in %d files, %d read, the rest from the blob cache", workdir,
                len(found), len(files), read)
    return found


def code_files(workdir: Path, folders: list[str], max_depth: int | None = 3) -> list[str]:
    """The files `list_functions` reads: sorted repo-relative paths of the folders' non-test `.py` files."""
    return sorted({relative for folder in folders for relative in _python_files(Path(workdir), folder, max_depth)})


def _python_files(workdir: Path, folder: str, max_depth: int | None) -> Iterator[str]:
    """Repo-relative paths of the folder's non-test `.py` files within the depth limit; hidden directories skipped."""
    root = workdir / folder
    if not root.is_dir():
        raise InventoryError(f"code folder {folder!r} does not exist in {workdir}")
    for directory, subdirectories, filenames in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        depth_of_directory = len(Path(directory).relative_to(root).parts)
        if max_depth and depth_of_directory + 1 > max_depth:
            subdirectories[:] = []
            continue
        relative_directory = Path(directory).relative_to(workdir).as_posix()
        for filename in filenames:
            relative = f"{relative_directory}/{filename}"
            if filename.endswith(".py") and not is_test_path(relative) \
                    and not os.path.islink(os.path.join(directory, filename)):
                yield relative


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError as error:  # not cached: unlike a syntax error it says nothing about the content
        logger.warning("skipping %s: cannot read it (%s)", path, error)
        return None


def _parse(source: bytes, path: Path) -> _Definitions | None:
    """The file's definitions, or None (logged) when it is not valid Python: one broken file must not sink the
    inventory. A file without the keyword `def` has none and is not parsed at all."""
    if b"def" not in source:
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences etc. are the repository's business
            tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        logger.warning("skipping %s: cannot parse it (%s: %s)", path, type(error).__name__, error)
        return None
    return _definitions(tree)


def _definitions(tree: ast.Module) -> _Definitions:
    """(dotted name, line, end line) of every function, sorted by line; a name defined twice keeps its first `def`.

    Only statement lists are walked, with an explicit stack: a `def` cannot occur inside an expression, and skipping
    expressions (most of a tree's nodes) makes this several times faster than a generic `ast` visit.
    """
    found: list[tuple[str, int, int]] = []
    pending: list[tuple[list[Any], str]] = [(tree.body, "")]
    while pending:
        statements, prefix = pending.pop()
        for node in statements:
            kind = type(node)
            if kind is ast.FunctionDef or kind is ast.AsyncFunctionDef:
                name = prefix + node.name
                found.append((name, node.lineno, node.end_lineno or node.lineno))
                pending.append((node.body, name + "."))
            elif kind is ast.ClassDef:
                pending.append((node.body, f"{prefix}{node.name}."))
            else:  # if/for/while/with/try/match: their nested statement lists (handlers and cases have a body)
                pending.extend((nested, prefix) for field in _STATEMENT_LISTS if (nested := getattr(node, field, None)))
    found.sort(key=lambda definition: definition[1])
    first: dict[str, tuple[str, int, int]] = {}
    for definition in found:
        first.setdefault(definition[0], definition)
    return list(first.values())


def _blob_ids(workdir: Path, folders: list[str]) -> dict[str, str]:
    """Repo-relative path -> git blob id of the folders' files that git tracks unchanged in `workdir`, from one
    `git ls-files` call; empty when `workdir` is not the top of a git work tree or git fails (then every file is
    parsed)."""
    if not (workdir / ".git").exists():
        return {}
    try:  # `-t` tags index entries `H` and, with `-m`, files whose work-tree copy differs from the index `C`
        listing = git("--literal-pathspecs", "ls-files", "--stage", "--modified", "-t", "-z", "--", *folders,
                      cwd=workdir)
    except (SourceError, OSError) as error:
        logger.info("no blob ids for %s, parsing every file: %s", workdir, error)
        return {}
    blobs: dict[str, str] = {}
    changed: set[str] = set()
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        info, _, path = entry.partition(b"\t")
        tag, _mode, blob, stage = info.decode().split(" ")
        if tag == "H" and stage == "0":
            blobs[os.fsdecode(path)] = blob
        else:
            changed.add(os.fsdecode(path))
    return {path: blob for path, blob in blobs.items() if path not in changed}


def _read_blob_cache(path: Path) -> dict[str, _Definitions | None]:
    """The cached definitions by blob id; empty when the file is missing, unreadable or of another format/Python."""
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("version") != INVENTORY_FORMAT_VERSION \
            or document.get("python") != _PYTHON or not isinstance(document.get("blobs"), dict):
        logger.info("blob cache %s is of another format or Python version; starting a new one", path)
        return {}
    return document["blobs"]


def _write_blob_cache(path: Path, by_blob: dict[str, _Definitions | None]) -> None:
    """Merge this commit's blobs into the cache file and replace it atomically.

    Tasks of different commits may write concurrently: each re-reads the file just before replacing it, so at worst a
    racing writer's new entries are lost and parsed again later. This commit's blobs go last and only the newest
    `_MAX_CACHED_BLOBS` are kept, so the file (read whole by every inventory) stays small.
    """
    merged = {blob: definitions for blob, definitions in _read_blob_cache(path).items() if blob not in by_blob}
    merged.update(by_blob)
    kept = dict(list(merged.items())[-_MAX_CACHED_BLOBS:])
    document = {"version": INVENTORY_FORMAT_VERSION, "python": _PYTHON, "blobs": kept}
    atomic_write_text(path, json.dumps(document, separators=(",", ":")))


def inventory_to_json(functions: list[StartFunction]) -> dict[str, Any]:
    """The per-commit cache document; versioned so a format change is noticed rather than misread."""
    return {"version": INVENTORY_FORMAT_VERSION, "functions": [function.to_dict() for function in functions]}


def inventory_from_json(data: dict[str, Any]) -> list[StartFunction]:
    """Inverse of `inventory_to_json`; a cache of another version or shape raises InventoryError (recompute it)."""
    if not isinstance(data, dict) or data.get("version") != INVENTORY_FORMAT_VERSION:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise InventoryError(f"inventory cache has version {found!r}, expected {INVENTORY_FORMAT_VERSION}; "
                             "delete it so the inventory is recomputed")
    try:
        return [StartFunction.from_dict(item) for item in data["functions"]]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InventoryError(f"inventory cache is malformed ({type(error).__name__}: {error}); delete it so the "
                             "inventory is recomputed") from error


def sample_instances(repo: str, functions_by_commit: dict[str, list[StartFunction]], fns_per_repo: int,
                     insts_per_fn: int, seed: int) -> list[Instance]:
    """Choose at most `fns_per_repo` start functions for the whole repository and make `insts_per_fn` instances each.

    Each commit's functions are shuffled with a generator seeded by `seed` and the commit, then taken round-robin
    across commits (in the dict's order), so every commit is represented and the result depends only on the inputs.
    Ids are `<repo>_<commit[:7]>_<n>` with n from 10000 per commit in selection order, plus `-<copy>` when
    `insts_per_fn` > 1.
    """
    for argument, value in (("fns_per_repo", fns_per_repo), ("insts_per_fn", insts_per_fn)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{argument} must be an integer >= 1, got {value!r}")
    shuffled: dict[str, list[StartFunction]] = {}
    for commit, functions in functions_by_commit.items():
        ordered = sorted(functions, key=lambda function: (function.file, function.line, function.name))
        random.Random(f"{seed}:{commit}").shuffle(ordered)
        shuffled[commit] = ordered

    longest = max((len(functions) for functions in shuffled.values()), default=0)
    round_robin = [(commit, functions[position]) for position in range(longest)
                   for commit, functions in shuffled.items() if position < len(functions)]

    instances: list[Instance] = []
    next_number: dict[str, int] = defaultdict(lambda: FIRST_INSTANCE_NUMBER)
    for commit, function in round_robin[:fns_per_repo]:
        base_id = f"{repo}_{commit[:7]}_{next_number[commit]}"
        next_number[commit] += 1
        for copy_index in range(insts_per_fn):
            instance_id = f"{base_id}-{copy_index}" if insts_per_fn > 1 else base_id
            instances.append(Instance(instance_id, repo, commit, function.name, function.file, copy_index))
    return instances
