"""The zero-training baseline's repository guide: a short AGENTS.md-style file written from the inventory.

Users will ask whether fine-tuning beats simply telling the base model about the repository; the `base+guide` row of
the evaluation report answers that. The guide says what an agent would read first: the layout, the main modules and
their largest functions, and how to run the tests.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sera_ops.records import StartFunction

MAX_MODULES = 12
FUNCTIONS_PER_MODULE = 5
TEST_DIRS = ("tests", "test", "testing")


def repository_guide(repo: str, snapshot_dir: Path, functions: list[StartFunction], test_cmd: str | None) -> str:
    """The guide's Markdown, from the commit's tree and function inventory (deterministic: same inputs, same text)."""
    per_module = Counter(function.file for function in functions)
    top = sorted(per_module, key=lambda file: (-per_module[file], file))[:MAX_MODULES]
    folders = sorted({Path(file).parts[0] for file in per_module if len(Path(file).parts) > 1})
    tests = [name for name in TEST_DIRS if (snapshot_dir / name).is_dir()]
    lines = [f"# AGENTS.md: {repo}", "", "## Layout", ""]
    lines += [f"- `{folder}/`: {sum(n for f, n in per_module.items() if f.startswith(folder + '/'))} functions"
              for folder in folders] or ["- a flat module layout"]
    if tests:
        lines.append(f"- tests in {', '.join(f'`{name}/`' for name in tests)}")
    lines += ["", "## Main modules", ""]
    for file in top:
        largest = sorted((f for f in functions if f.file == file), key=lambda f: (f.line - f.end_line, f.name))
        names = ", ".join(f"`{f.name}`" for f in largest[:FUNCTIONS_PER_MODULE])
        lines.append(f"- `{file}` ({per_module[file]} functions): {names}")
    command = test_cmd or ("python -m pytest -q" if tests else "python -c 'import " + repo.replace("-", "_") + "'")
    lines += ["", "## Running the tests", "", f"`{command}`", "",
              "## Working here", "", "- Make the smallest change that fixes the issue; do not edit tests to pass.",
              "- Look at the functions named in the issue first, then their callers."]
    return "\n".join(lines) + "\n"


def with_guide(guide: str, problem_statement: str) -> str:
    """The `base+guide` task: the guide, then the problem statement (the guide stays out of the work tree, so it can
    never show up in the patch)."""
    return f"The repository's guide (AGENTS.md):\n\n{guide}\n---\n\n{problem_statement}"
