"""Function inventory: which functions of a repository snapshot can be a rollout's start function, and which to use.

SERA ran the code2flow CLI through a shell with globs and mapped its nodes back to files by basename and substring,
which silently dropped ambiguous names, nested functions and methods defined in several files. Here the inventory is
read straight from each file's AST, so every `def` is found exactly once with its file and lines. Sampling is seeded
and `fns_per_repo` limits the whole repository, not each commit.
"""

from __future__ import annotations

import ast
import logging
import os
import random
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

logger = logging.getLogger(__name__)

INVENTORY_FORMAT_VERSION = 1
FIRST_INSTANCE_NUMBER = 10000

_TEST_NAMES = frozenset({"test", "tests", "testing"})
_NOT_CODE_FOLDERS = _TEST_NAMES | {"doc", "docs", "example", "examples", "benchmark", "benchmarks", "bench"}
_FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
_SCOPE_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class InventoryError(ValueError):
    """The repository's code cannot be located or an inventory cannot be read; the message says what to change."""


@dataclass(frozen=True)
class StartFunction:
    """A function a rollout can start from; `name` is dotted through enclosing classes and functions."""

    name: str
    file: str
    line: int
    end_line: int

    @property
    def key(self) -> str:
        """Unique within a snapshot, and the form SERA's graph used: `path/to/file.py::Class.method`."""
        return f"{self.file}::{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StartFunction:
        return cls(name=str(data["name"]), file=str(data["file"]), line=int(data["line"]),
                   end_line=int(data["end_line"]))


@dataclass(frozen=True)
class Instance:
    """One rollout-one starting point: an unmodified repository at `commit`, pointed at one start function."""

    instance_id: str
    repo: str
    commit: str
    start_fn: str
    start_fn_file: str
    copy_index: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        return cls(**{field.name: data[field.name] for field in fields(cls)})


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
    """True for test code: a `test`/`tests`/`testing` directory, or a `test_*.py`/`*_test.py`/`conftest.py` file.

    Whole path components are compared, so `testing_utils.py` or `contest/` are code (SERA's substring check on
    `tests` dropped e.g. `latests.py` and kept `test/`).
    """
    *directories, filename = PurePosixPath(relative_path).parts
    if any(directory.lower() in _TEST_NAMES for directory in directories):
        return True
    stem = filename.lower().removesuffix(".py")
    return stem in _TEST_NAMES or stem == "conftest" or stem.startswith("test_") or stem.endswith("_test")


def list_functions(workdir: Path, folders: list[str], max_depth: int | None = 3) -> list[StartFunction]:
    """Every function, async function, method and nested function in the folders' non-test `.py` files.

    A file's depth is its number of path components below the folder (`pkg/a/b/c.py` under `pkg` is 3, as SERA
    counted `*`s in `pkg/*/*/*.py`); files deeper than `max_depth` are left out, `None` or 0 keeps all. Files that do
    not parse are logged and skipped. Sorted by (file, line); a name defined twice in a file keeps its first `def`.
    """
    workdir = Path(workdir)
    files: set[str] = set()
    for folder in folders:
        files.update(_python_files(workdir, folder, max_depth))
    by_key: dict[str, StartFunction] = {}
    for relative in sorted(files):
        tree = _parse(workdir / relative)
        if tree is None:
            continue
        for qualified_name, node, _ in _definitions(tree):
            function = StartFunction(qualified_name, relative, node.lineno, node.end_lineno or node.lineno)
            by_key.setdefault(function.key, function)
    return sorted(by_key.values(), key=lambda function: (function.file, function.line, function.name))


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
        for filename in filenames:
            path = Path(directory, filename)
            if not filename.endswith(".py") or path.is_symlink():
                continue
            relative = path.relative_to(workdir).as_posix()
            if not is_test_path(relative):
                yield relative


def _parse(path: Path) -> ast.Module | None:
    """The file's AST, or None (logged) when it is not valid Python: one broken file must not sink the inventory."""
    try:
        source = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences etc. are the repository's business
            return ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError, RecursionError, OSError) as error:  # UnicodeDecodeError is a ValueError
        logger.warning("skipping %s: cannot parse it (%s: %s)", path, type(error).__name__, error)
        return None


def _definitions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, str | None]]:
    """(dotted name, node, enclosing class's dotted name or None) for every function, in source order."""

    def visit(node: ast.AST, prefix: str, enclosing_class: str | None) -> Iterator[tuple[Any, ...]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _SCOPE_NODES):
                qualified_name = f"{prefix}{child.name}"
                if isinstance(child, ast.ClassDef):
                    yield from visit(child, f"{qualified_name}.", qualified_name)
                else:
                    yield qualified_name, child, enclosing_class
                    yield from visit(child, f"{qualified_name}.", None)
            else:
                yield from visit(child, prefix, enclosing_class)

    yield from visit(tree, "", None)


def call_edges(workdir: Path, functions: list[StartFunction]) -> dict[str, list[str]]:
    """For each function key, the sorted keys of inventory functions it calls (the "downstream" of a start function).

    A call is resolved by its simple name: `self.f`/`cls.f` inside a method prefers the method's own class; otherwise
    a unique match in the caller's file, else a unique match in the whole inventory. A bare `f(...)` never means a
    method. Ambiguous or unknown names (builtins, libraries) are skipped. Calls inside a nested function belong to it.
    """
    workdir = Path(workdir)
    keys = {function.key for function in functions}
    calls_by_key: dict[str, tuple[str | None, list[_CallSite]]] = {}
    method_keys: set[str] = set()
    for relative in sorted({function.file for function in functions}):
        tree = _parse(workdir / relative)
        if tree is None:
            continue
        for qualified_name, node, enclosing_class in _definitions(tree):
            key = f"{relative}::{qualified_name}"
            if key in keys and key not in calls_by_key:
                calls_by_key[key] = (enclosing_class, [_call_site(call) for call in _calls_in(node)])
                if enclosing_class:
                    method_keys.add(key)

    by_simple_name: dict[str, list[StartFunction]] = defaultdict(list)
    for function in functions:
        by_simple_name[function.name.rsplit(".", 1)[-1]].append(function)
    edges: dict[str, list[str]] = {}
    for function in functions:
        enclosing_class, call_sites = calls_by_key.get(function.key, (None, []))
        callees = set()
        for simple_name, receiver in call_sites:
            candidates = [candidate for candidate in by_simple_name.get(simple_name, [])
                          if receiver is not None or candidate.key not in method_keys]
            callee = _resolve(candidates, simple_name, receiver, function.file, enclosing_class)
            if callee:
                callees.add(callee)
        edges[function.key] = sorted(callees)
    return edges


# (simple name, receiver): `f(...)` → ("f", None); `x.f(...)` → ("f", "x"); `a.b.f(...)` → ("f", "").
_CallSite = tuple[str, str | None]


def _calls_in(function: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.Call]:
    """Calls made by the function's own body and signature, not by functions or classes defined inside it."""
    pending: list[ast.AST] = [*function.decorator_list, function.args, *function.body]
    if function.returns:
        pending.append(function.returns)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Call):
            yield node
        if not isinstance(node, _SCOPE_NODES):
            pending.extend(ast.iter_child_nodes(node))


def _call_site(call: ast.Call) -> _CallSite:
    target = call.func
    if isinstance(target, ast.Name):
        return target.id, None
    if isinstance(target, ast.Attribute):
        return target.attr, target.value.id if isinstance(target.value, ast.Name) else ""
    return "", None  # e.g. `handlers[name](...)`: no name to resolve


def _resolve(candidates: list[StartFunction], simple_name: str, receiver: str | None, caller_file: str,
             caller_class: str | None) -> str | None:
    if caller_class and receiver in ("self", "cls"):
        own_method = [candidate for candidate in candidates
                      if candidate.file == caller_file and candidate.name == f"{caller_class}.{simple_name}"]
        if own_method:
            return own_method[0].key
    same_file = [candidate for candidate in candidates if candidate.file == caller_file]
    if same_file:
        return same_file[0].key if len(same_file) == 1 else None
    return candidates[0].key if len(candidates) == 1 else None


def inventory_to_json(functions: list[StartFunction], edges: dict[str, list[str]]) -> dict[str, Any]:
    """The per-commit cache document; versioned so a format change is noticed rather than misread."""
    return {
        "version": INVENTORY_FORMAT_VERSION,
        "functions": [function.to_dict() for function in functions],
        "edges": {key: list(callees) for key, callees in sorted(edges.items())},
    }


def inventory_from_json(data: dict[str, Any]) -> tuple[list[StartFunction], dict[str, list[str]]]:
    """Inverse of `inventory_to_json`; a cache of another version or shape raises InventoryError (recompute it)."""
    if not isinstance(data, dict) or data.get("version") != INVENTORY_FORMAT_VERSION:
        found = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise InventoryError(f"inventory cache has version {found!r}, expected {INVENTORY_FORMAT_VERSION}; "
                             "delete it so the inventory is recomputed")
    try:
        functions = [StartFunction.from_dict(item) for item in data["functions"]]
        edges = {str(key): [str(callee) for callee in callees] for key, callees in data.get("edges", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise InventoryError(f"inventory cache is malformed ({type(error).__name__}: {error}); delete it so the "
                             "inventory is recomputed") from error
    return functions, edges


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
