"""The package's shape, held by tests: no import cycles, no Airflow in the domain logic, leaves that import no stage,
one module that names the store's files, and production code that never imports the test doubles.

Imports are read with `ast`, function-level and `TYPE_CHECKING` ones included: a lazy import hides a cycle from the
interpreter, not from a reader.
"""
from __future__ import annotations

import ast
from pathlib import Path

from sera_ops.store.layout import FILE_NAMES
from tests.support import ROOT

PACKAGE = ROOT / "sera_ops"
LEAVES = {
    "sera_ops.records": set(),
    "sera_ops.store.io": set(),
    "sera_ops.settings": {"sera_ops.settings"},
}
"""Leaf module or package → the project modules it may import (its own package's, for a package)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "sample_repos" not in p.parts)


MODULES = {_module_name(path): path for path in _python_files("sera_ops")}


def _imported(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code, as a full dotted name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES}
    return names


def _project_imports(module: str) -> set[str]:
    """The project modules `module` makes Python run: each one it imports, and the packages above those (their
    `__init__` runs first), except its own enclosing packages, which are already running when it is imported."""
    own = {module.rsplit(".", depth)[0] for depth in range(1, module.count(".") + 1)}
    found: set[str] = set()
    for name in _imported(MODULES[module]):
        if not name.startswith("sera_ops"):
            continue
        parts = name.split(".")
        found |= {".".join(parts[:end]) for end in range(2, len(parts) + 1) if ".".join(parts[:end]) in MODULES}
    return found - own - {module, "sera_ops"}


GRAPH = {module: _project_imports(module) for module in MODULES}


def _cycle_through(start: str) -> list[str] | None:
    """A shortest import path from `start` back to itself, or None."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for following in sorted(GRAPH.get(path[-1], ())):
            if following == start:
                return [*path, start]
            if following not in seen:
                seen.add(following)
                paths.append([*path, following])
    return None


def test_no_import_cycle_among_the_modules():
    cycles = {" -> ".join(cycle) for module in GRAPH if (cycle := _cycle_through(module))}
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_the_cycle_check_sees_function_level_imports(tmp_path):
    """The checker itself: an import inside a function counts (else a lazy import would hide a cycle)."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from sera_ops.pipeline import context\n")
    assert "sera_ops.pipeline.context" in _imported(module)


def test_domain_logic_imports_nothing_from_airflow():
    """sera_ops runs and is tested without a scheduler; only dags/ and plugins/ adapt Airflow."""
    offenders = [f"{module}: {name}" for module, path in MODULES.items() for name in _imported(path)
                 if name == "airflow" or name.startswith("airflow.")]
    assert not offenders, offenders


def test_leaves_import_no_stage():
    """records, settings and store.io load without any stage: everything else may build on them."""
    offenders = []
    for leaf, allowed in LEAVES.items():
        members = [module for module in GRAPH if module == leaf or module.startswith(f"{leaf}.")]
        assert members, f"no module {leaf}"
        for module in members:
            offenders += [f"{module} imports {name}" for name in GRAPH[module]
                          if not any(name == ok or name.startswith(f"{ok}.") for ok in allowed)]
    assert not offenders, offenders


def test_every_package_says_what_it_takes_in_and_gives_out():
    missing = [module for module, path in MODULES.items()
               if path.name == "__init__.py" and not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, missing


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a Python file, f-strings' literal parts included, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


NAME_PATTERNS = (*FILE_NAMES, ".error.json", ".traj.json")
ALLOWED = {("sera_ops/prompts/__init__.py", "demo_issues.json")}
"""The packaged pool of demonstration issues has the same name as the store's cache of fetched ones."""


def test_no_module_but_the_store_layout_spells_a_store_file_name():
    """The store's layout is defined once: a stage that wrote `"rollout1.json"` itself would drift from it."""
    found = []
    for path in _python_files("sera_ops", "dags", "plugins"):
        relative = path.relative_to(ROOT).as_posix()
        if relative == "sera_ops/store/layout.py":
            continue
        for line, value in _string_constants(path):
            found += [f"{relative}:{line}: {value!r}" for name in NAME_PATTERNS
                      if (value == name or value.endswith(name) and len(value) < 60)
                      and (relative, name) not in ALLOWED]
    assert not found, "\n".join(found)


def test_production_modules_do_not_import_the_test_doubles():
    offenders = [f"{path.relative_to(ROOT)}: {name}" for path in _python_files("sera_ops", "dags", "plugins")
                 if "testing" not in path.relative_to(ROOT).parts
                 for name in _imported(path) if name.startswith("sera_ops.testing")]
    assert not offenders, offenders
