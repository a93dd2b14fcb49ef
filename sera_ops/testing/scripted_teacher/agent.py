"""The agent's script: the next (thought, command) from the target and the turns so far.

Locate the start function (searching the repository when the PR does not say where it is), print its source, make
one edit by absolute line number, review `git diff`, submit. The commands are shell with Python heredocs, kept
runnable on old container Pythons (no f-strings inside the scripts); their comments (notes) are how the next turn,
the judge and the writer tell what a command was.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from typing import Any

from sera_ops.testing.scripted_teacher.config import LOCATE_NOTE, SUBMIT_MARKER
from sera_ops.testing.scripted_teacher.conversation import Target, Turn
from sera_ops.testing.scripted_teacher.edits import Edit, choose_edit, read_listing

MAX_AGENT_TURNS = 8
"""After this many assistant turns the teacher always submits, whatever the observations say."""

_SEARCH_NOTE = "# search the repository for "
_SEARCH_HIT = re.compile(r"^(?:\./)?([^:\s]+\.py):(\d+):(\s*)")
_SHOW_NOTE = "# print the source of "
_EDIT_NOTE = "# rewrite "
"""Begins the note on the edit command; replies.py reads the kind of edit back from that note."""
_PLANS = {
    "compare": "The comparison on line {line} of `{path}` is the wrong way round; I will flip it.",
    "constant": "The constant on line {line} of `{path}` is off by one; I will correct it.",
    "negate": "The condition on line {line} of `{path}` sends `{fn}` down the wrong branch; I will negate it.",
    "guard": "`{fn}` never checks `{subject}`; right after line {line} of `{path}` I will make it reject None.",
    "comment": "I will write down what to check in `{fn}` in a comment after line {line} of `{path}`.",
}
"""The thought before each kind of edit."""
_EXPLORE = "ls"
_REVIEW = "git diff"
_SUBMIT = f"echo {SUBMIT_MARKER}"

_SHOW_BODY = """\
import ast
import inspect
import sys
with open(path, encoding="utf-8", errors="replace") as handle:
    source = handle.read()
lines = source.split("\\n")
found = []
def visit(node, prefix):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + child.name
            if not isinstance(child, ast.ClassDef) and (name == wanted or name.endswith("." + wanted)):
                found.append((name != wanted, child.lineno, child))
            visit(child, name + ".")
        else:
            visit(child, prefix)
visit(ast.parse(source), "")
if not found:
    sys.exit("no function %s in %s" % (wanted, path))
node = min(found, key=lambda item: item[:2])[2]
end = getattr(node, "end_lineno", None)
if end is None:
    end = node.lineno + len(inspect.getblock([line + "\\n" for line in lines[node.lineno - 1:]])) - 1
print("FUNCTION %d %d" % (node.lineno, end))
for line in lines[node.lineno - 1:end]:
    print(line)"""

_EDIT_BODY = """\
import sys
with open(path, encoding="utf-8", newline="") as handle:
    lines = handle.readlines()
original = "".join(lines)
current = lines[number - 1] if 0 < number <= len(lines) else ""
text = current.rstrip("\\r\\n")
if text.rstrip() != expected.rstrip():
    sys.exit("%s:%d is not the line that was read before; not editing" % (path, number))
ending = current[len(text):]
lines[number - 1] = (ending or "\\n").join(([text] if keep else []) + new_lines) + ending
updated = "".join(lines)
try:
    compile(original, path, "exec")
except (SyntaxError, ValueError):
    pass
else:
    try:
        compile(updated, path, "exec")
    except SyntaxError as error:
        sys.exit("the edit would break %s: %s" % (path, error))
with open(path, "w", encoding="utf-8", newline="") as handle:
    handle.write(updated)
print("rewrote %s line %d" % (path, number))"""


def _heredoc(note: str, assignments: dict[str, Any], body: str) -> str:
    values = [f"{name} = {value!r}" for name, value in assignments.items()]
    return "\n".join(["python3 - <<'EOF'", note, *values, body, "EOF"])


def _locate_command(target: Target) -> str:
    name = target.start_fn.rsplit(".", 1)[-1]
    pattern = f"^[[:space:]]*(async[[:space:]]+)?def[[:space:]]+{name}\\b"
    return f"grep -nE '{pattern}' {shlex.quote(target.path)}  # locate {target.start_fn} in {target.path}"


def _search_command(target: Target) -> str:
    name = target.start_fn.rsplit(".", 1)[-1]
    pattern = f"^[[:space:]]*(async[[:space:]]+)?def[[:space:]]+{name}\\b"
    return f"grep -rnE --include='*.py' '{pattern}' .  {_SEARCH_NOTE}{target.start_fn}"


def _searched_path(target: Target, turn: Turn) -> str | None:
    """The file a search found the target in: library code before tests; a method (dotted name) indented, a
    module-level function not."""
    hits = [match for match in map(_SEARCH_HIT.match, turn.output.splitlines()) if match]
    method = "." in target.start_fn

    def rank(match: re.Match) -> tuple[bool, bool, str]:
        path, indented = match.group(1), bool(match.group(3))
        return ("test" in path.rsplit("/", 1)[-1] or "/tests/" in f"/{path}", indented != method, path)

    return min(hits, key=rank).group(1) if hits else None


def _show_command(target: Target) -> str:
    note = f"{_SHOW_NOTE}{target.start_fn} in {target.path}"
    return _heredoc(note, {"path": target.path, "wanted": target.start_fn}, _SHOW_BODY)


def _edit_command(target: Target, start_line: int, edit: Edit) -> str:
    number = start_line + edit.offset
    note = f"{_EDIT_NOTE}{target.path} line {number} ({target.start_fn}): {edit.kind} {edit.subject}".rstrip()
    assignments = {"path": target.path, "number": number, "expected": edit.expected, "keep": edit.keep,
                   "new_lines": list(edit.new_lines)}
    return _heredoc(note, assignments, _EDIT_BODY)


def _kind(command: str) -> str:
    if LOCATE_NOTE.search(command.split("\n", 1)[0]):
        return "locate"
    if _SHOW_NOTE in command:
        return "show"
    if _EDIT_NOTE in command:
        return "edit"
    return {_EXPLORE: "explore", _REVIEW: "review"}.get(command.strip(), "other")


def next_action(target: Target | None, turns: list[Turn]) -> tuple[str, str]:
    """(thought, command) for the next agent turn, derived only from the task and the observations so far."""
    submit = ("I have done what I can for this task, so I am submitting.", _SUBMIT)
    if len(turns) >= MAX_AGENT_TURNS:
        return submit
    if target is None:
        if turns:
            return submit
        return "The task names no function I can find, so I will look at the repository layout.", _EXPLORE
    if not target.path:
        if not turns:
            return (f"The report is about `{target.start_fn}` but does not say where it lives; I will search the "
                    "repository for its definition.", _search_command(target))
        found = _searched_path(target, turns[0])
        if found is None:
            return ("The search found no definition; I will look at the repository layout.", _EXPLORE) \
                if len(turns) == 1 else submit
        target, turns = replace(target, path=found), turns[1:]
    if not turns:
        return (f"The report points at `{target.start_fn}` in `{target.path}`; I will find where it is defined.",
                _locate_command(target))
    last = turns[-1]
    kind = _kind(last.command)
    if kind == "locate":
        if last.returncode != 0 or not last.output.strip():
            return "The definition is not where the report says; I will look at the repository layout.", _EXPLORE
        return f"Found it. I will print the whole of `{target.start_fn}` to read its body.", _show_command(target)
    if kind == "show":
        listing = read_listing(last.output) if last.returncode == 0 else None
        edit = choose_edit(listing[1], target) if listing else None
        if listing and edit:
            thought = _PLANS[edit.kind].format(fn=target.start_fn, path=target.path, line=listing[0] + edit.offset,
                                               subject=edit.subject)
            return thought, _edit_command(target, listing[0], edit)
        return "I will review the state of the working tree before submitting.", _REVIEW
    if kind == "edit":
        return "Let me review the change.", _REVIEW
    return submit
