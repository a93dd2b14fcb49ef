"""A scripted teacher: a deterministic stand-in for a teacher LLM behind the real OpenAI chat-completions protocol.

It lets the whole SERA pipeline (mini-swe-agent's agent loop, real sandboxes, real HTTP clients, judge and synthetic-PR
writer) run without a GPU, for tests and for users' dry runs. It is not a model: it plays a fixed script. As the agent
it locates the start function named in the task, prints its source with a small `ast` script, makes one edit that
changes behaviour by rewriting a line by absolute line number (flips a comparison, bumps a numeric constant, negates
an `if` test, or, where none of those applies, inserts a guard that raises on a None argument), reviews `git diff`
and submits. The kind of edit is a seeded choice per function and vague report (so each attempt may pick another);
the synthetic PR describes the symptom of that kind, and rollout two derives the same edit from the function and the
symptom, so mode "full" reproduces rollout one's patch exactly, "partial" writes the same line another way (sharing
the removed line, or the guard's `if`) and "none" changes nothing. The judge turns down empty patches and patches that
change no Python code (comments, blank lines, spacing). All randomness (edit kinds, modes, judge rejections, injected
errors and stalls) comes from stable hashes of the seed and the request, so a run is reproducible.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import hmac
import io
import json
import os
import re
import shlex
import signal
import threading
import time
import tokenize
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from types import MappingProxyType
from typing import Any

from sera_ops.prompts import (
    JUDGE_SYSTEM,
    ROLLOUT_ONE_COUNT,
    WRITER_SYSTEM,
    match_rollout_one,
    render_rollout_one,
)
from sera_ops.testing.loopback import LoopbackHTTPServer, LoopbackServer

MODES = ("full", "partial", "none")
SUBMIT_MARKER = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
MAX_AGENT_TURNS = 8
"""After this many assistant turns the teacher always submits, whatever the observations say."""

LOCATE_NOTE = re.compile(r"# locate ([A-Za-z_][\w.]*) in (\S+?\.py)(?![\w/.])")
"""The comment on the teacher's first command; the judge and the writer read the target back from it."""

_TEXT_ACTION = re.compile(r"```mswea_bash_command\s*\n(.*?)\n```", re.DOTALL)
_PR_DESCRIPTION = re.compile(r"<pr_description>(.*?)</pr_description>", re.DOTALL)
_PR_TARGET = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)` in `([^`\s]+\.py)`")
_PR_FUNCTION = re.compile(r"Calling `([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)`")
_SEARCH_NOTE = "# search the repository for "
_SEARCH_HIT = re.compile(r"^(?:\./)?([^:\s]+\.py):(\d+):(\s*)")
_LISTING_HEADER = re.compile(r"FUNCTION (\d+) (\d+)")
_SHOW_NOTE = "# print the source of "
_EDIT_NOTE = "# rewrite "
_EDIT_DONE = re.compile(r"^# rewrite \S+ line \d+ \(.*\): (\w+)(?: ([\w.]+))?$", re.MULTILINE)
"""The note on the edit command (see _edit_command): the kind of edit and its subject, for the PR writer."""
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


@dataclass(frozen=True)
class ScriptedTeacherConfig:
    """How the scripted teacher behaves; every random-looking choice is a stable hash of `seed` and the request.

    `judge_reject_first_attempts` (a share) and `noop_first_attempt` (a comment-only edit, which the judge turns
    down) make rollout one's first attempt at a function fail, so that the pipeline's retry with another vague report
    is exercised. The first attempt is the first vague report about that function this teacher sees.
    """

    model: str = "scripted-teacher"
    api_key: str | None = field(default=None, repr=False)
    rollout_two_modes: Mapping[str, float] = field(default_factory=lambda: {"full": 1.0})
    judge_reject_rate: float = 0.0
    judge_reject_first_attempts: float = 0.0
    noop_first_attempt: bool = False
    latency_s: float = 0.0
    error_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 30.0
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.rollout_two_modes) - set(MODES)
        if unknown:
            raise ValueError(f"rollout_two_modes: unknown mode(s) {sorted(unknown)}; expected some of {MODES}")
        weights = list(self.rollout_two_modes.values())
        if any(weight < 0 for weight in weights) or sum(weights) <= 0:
            raise ValueError("rollout_two_modes: weights must be non-negative with a positive sum")
        for name in ("judge_reject_rate", "judge_reject_first_attempts", "error_rate", "stall_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.latency_s < 0 or self.stall_s < 0:
            raise ValueError("latency_s and stall_s must not be negative")
        object.__setattr__(self, "rollout_two_modes", MappingProxyType(dict(self.rollout_two_modes)))


def stable_fraction(seed: int, *parts: str) -> float:
    """A number in [0, 1) that depends only on the seed and the parts (unlike hash(), stable across processes)."""
    key = "\x1f".join([str(seed), *parts]).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def rollout_two_mode(config: ScriptedTeacherConfig, pr_text: str) -> str:
    """The mode (full/partial/none) the teacher plays for a rollout-two task; the same PR text always gets the same."""
    total = sum(config.rollout_two_modes.values())
    point = stable_fraction(config.seed, "mode", pr_text.strip()) * total
    chosen = "none"
    for mode in MODES:
        weight = config.rollout_two_modes.get(mode, 0.0)
        if weight <= 0:
            continue
        chosen = mode
        if point < weight:
            break
        point -= weight
    return chosen


# ---------------------------------------------------------------------------------------------------------------------
# Reading the conversation


@dataclass(frozen=True)
class _Target:
    """What an episode is about. Rollout one: `report` is the index of its vague report (attempts differ in it),
    `pick` the seeded point that chooses the kind of edit, `noop` asks for a comment-only edit; rollout two: `kind`
    is the edit that the PR's symptom points to (None: none recognised)."""

    start_fn: str
    path: str
    mode: str
    report: int | None = None
    pick: float = 0.0
    kind: str | None = None
    noop: bool = False


@dataclass(frozen=True)
class _Turn:
    """One earlier assistant action and what the environment answered."""

    command: str
    returncode: int | None
    output: str


def _text(content: Any) -> str:
    """Message content as text; list content (multimodal parts) is joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _first(messages: list[dict], role: str) -> str:
    return next((_text(message.get("content")) for message in messages if message.get("role") == role), "")


def _target(task: str, config: ScriptedTeacherConfig) -> _Target | None:
    """Rollout one when the task holds a known vague prompt; otherwise rollout two, aimed at the PR's "`X` in `Y`"."""
    rollout_one = match_rollout_one(task)
    if rollout_one is not None:
        start_fn, path = rollout_one
        report = _report_index(task, start_fn, path)
        pick = stable_fraction(config.seed, "edit", start_fn, path, str(report))
        return _Target(start_fn, path, "full", report, pick)
    wrapped = _PR_DESCRIPTION.search(task)
    pr_text = wrapped.group(1) if wrapped else task
    named = _PR_TARGET.search(pr_text) or _PR_FUNCTION.search(pr_text)
    if named is None:
        return None
    kind = next((kind for kind, marker in _SYMPTOM_MARKERS.items() if marker in pr_text), None)
    path = named.group(2) if named.re is _PR_TARGET else ""  # "": the PR does not say where; search for it
    return _Target(named.group(1), path, rollout_two_mode(config, pr_text), kind=kind)


def _report_index(task: str, start_fn: str, path: str) -> int:
    """Which of the vague reports the task holds (-1: none verbatim); the pipeline gives each attempt another one."""
    words = " ".join(task.split())
    return next((index for index in range(ROLLOUT_ONE_COUNT)
                 if " ".join(render_rollout_one(index, start_fn, path).split()) in words), -1)


def _action_of(message: dict) -> str:
    for call in message.get("tool_calls") or []:
        try:
            return str(json.loads(call["function"]["arguments"])["command"])
        except (KeyError, TypeError, ValueError):
            return ""
    found = _TEXT_ACTION.search(_text(message.get("content")))
    return found.group(1) if found else ""


def _read_observation(content: str) -> tuple[int | None, str]:
    """Return code and output from an observation rendered by any of mini-swe-agent's templates (JSON or tags)."""
    stripped = content.strip()
    try:
        data = json.loads(stripped)
    except ValueError:
        data = None
    if isinstance(data, dict) and "returncode" in data:
        return _as_int(data["returncode"]), str(data.get("output", ""))
    code = re.search(r"<returncode>\s*(-?\d+)\s*</returncode>", stripped)
    if code is None:
        code = re.search(r"returncode\W{1,4}(-?\d+)", stripped)
    start, end = stripped.find("<output>"), stripped.rfind("</output>")
    output = stripped[start + len("<output>"):end].removeprefix("\n") if 0 <= start < end else stripped
    return (_as_int(code.group(1)) if code else None), output


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _history(messages: list[dict]) -> list[_Turn]:
    """Pair each assistant action with the observation after it (tool messages, or user messages in text mode)."""
    first_user = next((i for i, message in enumerate(messages) if message.get("role") == "user"), len(messages))
    turns: list[_Turn] = []
    pending: str | None = None
    for message in messages[first_user + 1:]:
        role = message.get("role")
        if role == "assistant":
            if pending is not None:
                turns.append(_Turn(pending, None, ""))
            pending = _action_of(message)
        elif role in ("tool", "user") and pending is not None:
            turns.append(_Turn(pending, *_read_observation(_text(message.get("content")))))
            pending = None
    if pending is not None:
        turns.append(_Turn(pending, None, ""))
    return turns


# ---------------------------------------------------------------------------------------------------------------------
# Deriving the edit from the function's printed source

EDIT_KINDS = ("compare", "constant", "negate")
"""The behaviour-changing edits the teacher picks from; a `None` guard only where none of them applies."""

_FLIPPED = {ast.Lt: ">=", ast.GtE: "<", ast.Gt: "<=", ast.LtE: ">", ast.Eq: "!=", ast.NotEq: "==",
            ast.Is: "is not", ast.IsNot: "is", ast.In: "not in", ast.NotIn: "in"}
_OPERATOR = re.compile(r"([\s)]*)(<=|>=|==|!=|<|>|is\s+not|is|not\s+in|in)([\s(]*)")
"""What lies between a comparison's left operand and its first comparator: the operator, maybe parentheses."""
_ATOMS = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant)
_NOT_DESCENDED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.JoinedStr)


@dataclass(frozen=True)
class _Edit:
    """Rewrite one line of the function (0-based `offset`): keep it and add lines after it, or replace it.
    `kind` is one of EDIT_KINDS, "guard" or "comment"; `subject` is the argument a guard checks."""

    offset: int
    expected: str
    keep: bool
    new_lines: tuple[str, ...]
    kind: str
    subject: str = ""


def _listing(output: str) -> tuple[int, list[str]] | None:
    """The start line and source lines printed under the `FUNCTION <start> <end>` header, if complete."""
    lines = output.split("\n")
    for index, line in enumerate(lines):
        header = _LISTING_HEADER.fullmatch(line.strip())
        if header:
            start, end = int(header.group(1)), int(header.group(2))
            source = lines[index + 1:index + 2 + end - start]
            return (start, source) if end >= start and len(source) == end - start + 1 else None
    return None


_AST_LOCK = threading.Lock()


def _parse(source: str) -> ast.Module:
    """`ast.parse` under a lock: this server answers on many threads, and CPython 3.11's AST constructor is not
    thread-safe (gh-106905: "AST constructor recursion depth mismatch")."""
    with _AST_LOCK:
        return ast.parse(source)


def _leading_space(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t"))]


def _starts_its_line(node: ast.stmt, lines: list[str]) -> bool:
    line = lines[node.lineno - 1].encode("utf-8")
    return not line[:node.col_offset].strip()


@dataclass(frozen=True)
class _Function:
    """The printed function parsed on its own: `relative` is `lines` without the def line's indentation, so node
    offsets (UTF-8 bytes, as `ast` counts them) index `relative`."""

    lines: list[str]
    relative: list[str]
    node: ast.FunctionDef | ast.AsyncFunctionDef
    dump: str

    @classmethod
    def parse(cls, lines: list[str]) -> _Function | None:
        lines = [line.rstrip("\r") for line in lines]  # a CRLF file: the edit script puts the endings back
        indent = _leading_space(lines[0]) if lines else ""
        relative = [line[len(indent):] if line.startswith(indent) else line for line in lines]
        try:
            module = _parse("\n".join(relative))
        except SyntaxError:
            return None
        if not module.body or not isinstance(module.body[0], ast.FunctionDef | ast.AsyncFunctionDef):
            return None
        return cls(lines, relative, module.body[0], ast.dump(module))

    @property
    def indent(self) -> str:
        return _leading_space(self.lines[0])

    def nodes(self) -> list[ast.AST]:
        """The body's nodes in source order, leaving out nested functions, classes, lambdas and f-strings."""
        found, stack = [], list(self.node.body)
        while stack:
            node = stack.pop()
            found.append(node)
            if not isinstance(node, _NOT_DESCENDED):
                stack.extend(ast.iter_child_nodes(node))
        return sorted((node for node in found if hasattr(node, "end_lineno")),
                      key=lambda node: (node.lineno, node.col_offset))

    def source(self, node: ast.AST) -> str:
        return self.relative[node.lineno - 1].encode("utf-8")[node.col_offset:node.end_col_offset].decode("utf-8")

    def rewrite(self, kind: str, lineno: int, start: int, end: int, text: str) -> _Edit | None:
        """Replace bytes [start, end) of line `lineno` with `text`; None where the line is not under the def."""
        original = self.lines[lineno - 1]
        if not original.startswith(self.indent):
            return None
        raw = self.relative[lineno - 1].encode("utf-8")
        new = (raw[:start] + text.encode("utf-8") + raw[end:]).decode("utf-8")
        return _Edit(lineno - 1, original, False, (self.indent + new,), kind)

    def replace(self, kind: str, node: ast.AST, text: str) -> _Edit | None:
        return self.rewrite(kind, node.lineno, node.col_offset, node.end_col_offset, text)

    def body_top(self) -> tuple[int, str] | None:
        """(0-based line after which a first statement can go, the body's indentation): after the docstring."""
        first = self.node.body[0]
        has_docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                         and isinstance(first.value.value, str))
        decorators = getattr(first, "decorator_list", [])
        first_line = min([first.lineno] + [decorator.lineno for decorator in decorators])
        if first_line <= self.node.lineno or (not decorators and not _starts_its_line(first, self.relative)):
            return None  # the body shares a line with the def header
        after = first.end_lineno if has_docstring else first_line - 1
        return after - 1, _leading_space(self.lines[first_line - 1])

    def changes_code(self, edit: _Edit | None) -> bool:
        """Whether the edit leaves valid Python with another syntax tree (the container checks syntax again)."""
        if edit is None:
            return False
        relative = list(self.relative)
        kept = [relative[edit.offset]] if edit.keep else []
        relative[edit.offset:edit.offset + 1] = kept + [line[len(self.indent):] for line in edit.new_lines]
        try:
            return ast.dump(_parse("\n".join(relative))) != self.dump
        except SyntaxError:
            return False


_Pair = tuple[_Edit | None, _Edit | None]
"""An edit as rollout one makes it ("full") and the other way a partial rollout two writes the same line."""


def _comparisons(function: _Function) -> Iterator[_Pair]:
    """Flip the operator (`<` to `>=`, `==` to `!=`, `in` to `not in`); partial: `not (...)` around the comparison."""
    for node in function.nodes():
        if not isinstance(node, ast.Compare) or node.lineno != node.end_lineno:
            continue
        left, right = node.left, node.comparators[0]
        gap = function.relative[node.lineno - 1].encode("utf-8")[left.end_col_offset:right.col_offset]
        operator = _OPERATOR.fullmatch(gap.decode("utf-8"))
        if operator:
            flipped = operator.group(1) + _FLIPPED[type(node.ops[0])] + operator.group(3)
            yield (function.rewrite("compare", node.lineno, left.end_col_offset, right.col_offset, flipped),
                   function.replace("compare", node, f"not ({function.source(node)})"))


def _constants(function: _Function) -> Iterator[_Pair]:
    """A numeric literal n becomes n + 1; partial: n + 2."""
    for node in function.nodes():
        if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.lineno == node.end_lineno:
            yield (function.replace("constant", node, repr(node.value + 1)),
                   function.replace("constant", node, repr(node.value + 2)))


def _negations(function: _Function) -> Iterator[_Pair]:
    """An `if` test c becomes `not c` (`not x` becomes `x`); partial: `not bool(c)` (`bool(x)`)."""
    for node in function.nodes():
        test = node.test if isinstance(node, ast.If) else None
        if test is None or test.lineno != test.end_lineno:
            continue
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = function.source(test.operand)
            texts = (inner, f"bool({inner})")
        else:
            inner = function.source(test)
            texts = (f"not {inner}" if isinstance(test, _ATOMS) else f"not ({inner})", f"not bool({inner})")
        yield tuple(function.replace("negate", test, text) for text in texts)


def _guards(function: _Function) -> Iterator[_Pair]:
    """`if <first argument> is None: raise ValueError(...)` at the top of the body (a method without arguments: the
    first attribute of self it reads); partial: raises TypeError."""
    arguments = function.node.args.posonlyargs + function.node.args.args + function.node.args.kwonlyargs
    names = [argument.arg for argument in arguments]
    if names[:1] in (["self"], ["cls"]):
        receiver, names = names[0], names[1:]
        nodes = function.nodes()
        called = {id(node.func) for node in nodes if isinstance(node, ast.Call)}  # methods are never None
        names = names or [f"{receiver}.{node.attr}" for node in nodes if isinstance(node, ast.Attribute)
                          and isinstance(node.value, ast.Name) and node.value.id == receiver and id(node) not in called]
    top = function.body_top()
    if top is None or not names:
        return
    after, indent = top
    step = indent[len(function.indent):] or "    "
    check = f"{indent}if {names[0]} is None:"
    yield tuple(_Edit(after, function.lines[after], True,
                      (check, f'{indent}{step}raise {error}("{names[0]} must not be None")'), "guard", names[0])
                for error in ("ValueError", "TypeError"))


def _edits(lines: list[str]) -> dict[str, tuple[_Edit, _Edit]]:
    """Per kind that applies to the function, its first (full, partial) pair that really changes the code."""
    function = _Function.parse(lines)
    if function is None:
        return {}
    found = {}
    for kind, pairs in (("compare", _comparisons), ("constant", _constants), ("negate", _negations),
                        ("guard", _guards)):
        pair = next((pair for pair in pairs(function) if all(map(function.changes_code, pair))), None)
        if pair is not None:
            found[kind] = pair
    return found


def _comment_edit(lines: list[str], start_fn: str) -> _Edit | None:
    """A comment line at the top of the body: a patch that changes no code (the judge must turn it down)."""
    function = _Function.parse(lines)
    if function is None:
        return None
    after, indent = function.body_top() or (0, function.indent + "    ")
    return _Edit(after, function.lines[after], True, (f"{indent}# TODO: double-check the edge cases of {start_fn}",),
                 "comment")


def _choose_edit(lines: list[str], target: _Target) -> _Edit | None:
    """Rollout one: the kind at `target.pick` among the applicable EDIT_KINDS, else a guard (or, on request, a
    comment); rollout two: the kind the PR describes, written as `target.mode` says."""
    if target.mode == "none":
        return None
    if target.noop:
        return _comment_edit(lines, target.start_fn)
    edits = _edits(lines)
    kind = target.kind
    if kind is None:
        behavioural = [kind for kind in EDIT_KINDS if kind in edits]
        kind = behavioural[int(target.pick * len(behavioural))] if behavioural else "guard"
    pair = edits.get(kind)
    return pair[0 if target.mode == "full" else 1] if pair else None


# ---------------------------------------------------------------------------------------------------------------------
# The commands the teacher sends (kept runnable on old container Pythons: no f-strings inside the scripts)

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


def _locate_command(target: _Target) -> str:
    name = target.start_fn.rsplit(".", 1)[-1]
    pattern = f"^[[:space:]]*(async[[:space:]]+)?def[[:space:]]+{name}\\b"
    return f"grep -nE '{pattern}' {shlex.quote(target.path)}  # locate {target.start_fn} in {target.path}"


def _search_command(target: _Target) -> str:
    name = target.start_fn.rsplit(".", 1)[-1]
    pattern = f"^[[:space:]]*(async[[:space:]]+)?def[[:space:]]+{name}\\b"
    return f"grep -rnE --include='*.py' '{pattern}' .  {_SEARCH_NOTE}{target.start_fn}"


def _searched_path(target: _Target, turn: _Turn) -> str | None:
    """The file a search found the target in: library code before tests; a method (dotted name) indented, a
    module-level function not."""
    hits = [match for match in map(_SEARCH_HIT.match, turn.output.splitlines()) if match]
    method = "." in target.start_fn

    def rank(match: re.Match) -> tuple[bool, bool, str]:
        path, indented = match.group(1), bool(match.group(3))
        return ("test" in path.rsplit("/", 1)[-1] or "/tests/" in f"/{path}", indented != method, path)

    return min(hits, key=rank).group(1) if hits else None


def _show_command(target: _Target) -> str:
    note = f"{_SHOW_NOTE}{target.start_fn} in {target.path}"
    return _heredoc(note, {"path": target.path, "wanted": target.start_fn}, _SHOW_BODY)


def _edit_command(target: _Target, start_line: int, edit: _Edit) -> str:
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


def _next_action(target: _Target | None, turns: list[_Turn]) -> tuple[str, str]:
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
        listing = _listing(last.output) if last.returncode == 0 else None
        edit = _choose_edit(listing[1], target) if listing else None
        if listing and edit:
            thought = _PLANS[edit.kind].format(fn=target.start_fn, path=target.path, line=listing[0] + edit.offset,
                                               subject=edit.subject)
            return thought, _edit_command(target, listing[0], edit)
        return "I will review the state of the working tree before submitting.", _REVIEW
    if kind == "edit":
        return "Let me review the change.", _REVIEW
    return submit


# ---------------------------------------------------------------------------------------------------------------------
# Judge and synthetic-PR writer

_INITIAL_PROMPT = re.compile(r"<initial_prompt>(.*?)</initial_prompt>", re.DOTALL)
_HUNK_HEADER = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
_SYMPTOMS = {
    "compare": "Calling `{fn}`{where} treats inputs on one side of the check it makes like those on the other "
               "side, as if a comparison were the wrong way round.",
    "constant": "Calling `{fn}`{where} is off by one: what it produces is always one step away from what I "
                "expect.",
    "negate": "Calling `{fn}`{where} takes the wrong branch: the case it should treat specially goes down the "
              "ordinary path, and the ordinary case gets the special treatment.",
    "guard": "Calling `{fn}`{where} with `{subject}` set to None does not fail up front: it carries on and breaks "
             "later with a confusing error far from the call. I expected a ValueError saying that `{subject}` must "
             "not be None.",
}
"""What a user of the function sees before each kind of fix, as the synthetic PR reports it."""
_REVEAL_LOCATION = "the file it lives in"
"""Words of the writer prompt's guideline that asks for the location (synth.reveal_location)."""
_SYMPTOM_MARKERS = {kind: max(re.split(r"\{\w+\}", text), key=len) for kind, text in _SYMPTOMS.items()}
"""The longest fixed piece of each symptom: how rollout two tells from the PR which fix it asks for."""
_VAGUE_SYMPTOM = ("Calling `{fn}`{where} gives unexpected results. The value it hands back does not match what "
                  "its callers expect, so code built on top of it misbehaves.")


def _hunks(patch: str) -> list[tuple[str, list[str], list[str]]]:
    """(file, old side, new side) of every hunk of a unified diff, context lines on both sides."""
    hunks: list[tuple[str, list[str], list[str]]] = []
    path, old_left, new_left = "", 0, 0
    for line in patch.splitlines():
        if old_left > 0 or new_left > 0:
            sign = line[:1]
            if sign == "\\":  # "\ No newline at end of file"
                continue
            _, before, after = hunks[-1]
            if sign != "+":  # a removed or context line (a blank context line may have lost its space)
                before.append(line[1:])
                old_left -= 1
            if sign != "-":
                after.append(line[1:])
                new_left -= 1
        elif line.startswith("diff --git "):
            path = line.rsplit(" b/", 1)[-1].rstrip('"')  # the new name (a quoted header keeps its whole line)
        elif header := _HUNK_HEADER.match(line):
            old_left, new_left = int(header.group(1) or 1), int(header.group(2) or 1)
            hunks.append((path, [], []))
    return hunks


def _code_line(line: str) -> str:
    """A line's tokens without comment and spacing, led by its indentation width; "" for a blank or comment line.
    A line that does not tokenize on its own (part of a bracket or string) only loses a trailing quote-free comment."""
    text = line.strip()
    try:
        body = " ".join(token.string for token in tokenize.generate_tokens(io.StringIO(text).readline)
                        if token.type not in _LAYOUT)
    except (tokenize.TokenError, SyntaxError):
        body = " ".join(re.sub(r"#[^'\"]*$", "", text).split())
    return f"{len(line) - len(line.lstrip())}:{body}" if body else ""


def _changes_python_code(patch: str) -> bool:
    """Whether a hunk of a .py file differs in more than comments, blank lines and spacing; when none does, no
    syntax tree changed. Read line by line, so a hunk that starts inside a string or bracket is no problem."""
    def code(lines: list[str]) -> list[str]:
        return [text for text in map(_code_line, lines) if text]

    return any(path.endswith(".py") and code(before) != code(after) for path, before, after in _hunks(patch))


def _judge_reply(prompt: str, config: ScriptedTeacherConfig, first_attempt: bool) -> str:
    """No for an empty patch, for one that changes no Python code, and for the configured share of the rest."""
    start = prompt.rfind("<patch>")
    patch = prompt[start:prompt.rfind("</patch>")] if start >= 0 else ""
    if not re.search(r"^diff --git ", patch, re.MULTILINE):
        return "The final patch is empty, so the agent did not change anything.\n<output>no</output>"
    if not _changes_python_code(patch):
        return ("The patch only touches comments, blank lines or spacing (or no Python at all): the code does exactly "
                "what it did before, so it cannot fix anything.\n<output>no</output>")
    first_share = config.judge_reject_first_attempts if first_attempt else 0.0
    if (stable_fraction(config.seed, "judge", prompt) < config.judge_reject_rate
            or stable_fraction(config.seed, "judge-first", prompt) < first_share):
        return "The patch changes code, but I am not convinced it addresses the reported problem.\n<output>no</output>"
    return "The patch changes the function the task points at and stays consistent with it.\n<output>yes</output>"


def _writer_reply(prompt: str) -> str:
    """A bug report, in the demonstration's heading style, of the symptom that the agent's edit (its note) removes."""
    note = LOCATE_NOTE.search(prompt)
    if note is None:
        return "I could not tell from the trajectory which function the change is about."
    start_fn, path = note.groups()
    edit = _EDIT_DONE.search(prompt)
    kind, subject = edit.groups() if edit else (None, None)
    demonstration = prompt[prompt.rfind("<demonstration_issue>"):] if "<demonstration_issue>" in prompt else ""
    heading = re.search(r"^(#{1,6})[ \t]+\S", demonstration, re.MULTILINE)
    lines = [f"Wrong behaviour of `{start_fn}`", ""]
    if heading:
        lines += [f"{heading.group(1)} Description", ""]
    where = f" in `{path}`" if _REVEAL_LOCATION in prompt else ""  # SERA's PRs leave the agent to find the code
    lines.append(_SYMPTOMS.get(kind, _VAGUE_SYMPTOM).format(fn=start_fn, where=where, subject=subject))
    return "<output>\n" + "\n".join(lines) + "\n</output>"


# ---------------------------------------------------------------------------------------------------------------------
# HTTP


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _error(status: HTTPStatus, message: str, kind: str, code: str | None = None) -> tuple[HTTPStatus, dict]:
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        """Quiet: requests are counted in `stats`; prompts may be large and are not echoed."""

    def do_GET(self) -> None:
        teacher = self.server.double
        if self.path.rstrip("/") == "/health":
            self._send(HTTPStatus.OK, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            if self._authorised():
                self._send(HTTPStatus.OK, {"object": "list", "data": [
                    {"id": teacher.config.model, "object": "model", "created": 0, "owned_by": "scripted-teacher"}]})
        else:
            self._send(*_error(HTTPStatus.NOT_FOUND, f"no route {self.path}", "invalid_request_error"))

    def do_POST(self) -> None:
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        except ValueError:
            self.close_connection = True
            self._send(*_error(HTTPStatus.BAD_REQUEST, "bad Content-Length", "invalid_request_error"))
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(*_error(HTTPStatus.NOT_FOUND, f"no route {self.path}", "invalid_request_error"))
            return
        if not self._authorised():
            return
        try:
            request = json.loads(body)
        except ValueError as error:
            self._send(*_error(HTTPStatus.BAD_REQUEST, f"request body is not JSON: {error}", "invalid_request_error"))
            return
        status, payload = self.server.double.answer(request)
        self._send(status, payload)

    def _authorised(self) -> bool:
        key = self.server.double.config.api_key
        if key is None or hmac.compare_digest(self.headers.get("Authorization", "").encode(), f"Bearer {key}".encode()):
            return True
        self._send(*_error(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided.", "invalid_request_error",
                           "invalid_api_key"))
        return False

    def _send(self, status: HTTPStatus, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.TOO_MANY_REQUESTS:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. timed out on a stall)


class InFlightMeter:
    """Requests in flight over time, as the server sees them: the time-weighted mean is how busy a client keeps it
    (a benchmark divides it by the configured concurrency: the saturation)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._current, self._area, self._changed = 0, 0.0, 0.0
            self._first: float | None = None
            self._last = 0.0

    def _move(self, delta: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._first is None:
                self._first, self._changed = now, now
            self._area += self._current * (now - self._changed)
            self._current += delta
            self._changed = self._last = now

    def enter(self) -> None:
        self._move(+1)

    def leave(self) -> None:
        self._move(-1)

    def mean(self) -> float:
        """Mean requests in flight from the first request's arrival to the last answer."""
        with self._lock:
            span = self._last - (self._first or self._last)
            return self._area / span if span > 0 else 0.0


class ScriptedTeacher(LoopbackServer):
    """The scripted teacher served over HTTP on loopback; use as a context manager or start()/stop()."""

    handler = _Handler
    name = "scripted teacher"

    def __init__(self, config: ScriptedTeacherConfig | None = None) -> None:
        self.config = config or ScriptedTeacherConfig()
        super().__init__(self.config.host, self.config.port)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._counts = dict.fromkeys(("agent", "judge", "writer", "errors", "stalls"), 0)
        self._requests = 0
        self._reports: dict[tuple[str, str], list[int]] = {}
        self.in_flight = InFlightMeter()

    def _before_start(self) -> None:
        self._stopping.clear()

    def _before_stop(self) -> None:
        self._stopping.set()  # stalled requests are released at once

    @property
    def url(self) -> str:
        """The base URL for OpenAI clients: http://127.0.0.1:PORT/v1."""
        return f"{self.address}/v1"

    @property
    def stats(self) -> dict[str, int]:
        """Answered requests per kind (agent, judge, writer) and injected errors and stalls."""
        with self._lock:
            return dict(self._counts)

    def _count(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] += 1

    def answer(self, request: Any) -> tuple[HTTPStatus, dict]:
        """The HTTP status and JSON body for one chat-completions request."""
        self.in_flight.enter()
        try:
            return self._answer(request)
        finally:
            self.in_flight.leave()

    def _answer(self, request: Any) -> tuple[HTTPStatus, dict]:
        messages = request.get("messages") if isinstance(request, dict) else None
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return _error(HTTPStatus.BAD_REQUEST, "'messages' must be a non-empty list of objects",
                          "invalid_request_error")
        if request.get("stream"):
            return _error(HTTPStatus.BAD_REQUEST, "the scripted teacher does not stream", "invalid_request_error")
        if request.get("model") != self.config.model:
            return _error(HTTPStatus.NOT_FOUND, f"The model `{request.get('model')}` does not exist.",
                          "NotFoundError", "model_not_found")
        with self._lock:
            self._requests += 1
            number = self._requests
        if self.config.latency_s:
            self._stopping.wait(self.config.latency_s)
        if stable_fraction(self.config.seed, "error", str(number)) < self.config.error_rate:
            self._count("errors")
            if number % 2:
                return _error(HTTPStatus.TOO_MANY_REQUESTS, "Rate limit reached (injected by the scripted teacher).",
                              "rate_limit_exceeded", "rate_limit_exceeded")
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal error (injected by the scripted teacher).",
                          "server_error")
        if stable_fraction(self.config.seed, "stall", str(number)) < self.config.stall_rate:
            self._count("stalls")
            self._stopping.wait(self.config.stall_s)
        return HTTPStatus.OK, self._completion(request, messages, number)

    def agent_action(self, task: str, messages: list[dict]) -> tuple[str, str]:
        """(thought, command) of the next agent turn; subclasses play other scripts."""
        target = _target(task, self.config)
        if target is not None and target.report is not None:
            target = replace(target, noop=self._attempt(target) == 0 and self.config.noop_first_attempt)
        return _next_action(target, _history(messages))

    def _attempt(self, target: _Target) -> int:
        """Rollout one's attempt at the target's function: how many other vague reports about it came first."""
        with self._lock:
            seen = self._reports.setdefault((target.start_fn, target.path), [])
            if target.report not in seen:
                seen.append(target.report)
            return seen.index(target.report)

    def _judges_first_attempt(self, prompt: str) -> bool:
        initial = _INITIAL_PROMPT.search(prompt)
        target = _target(initial.group(1), self.config) if initial else None
        return target is not None and target.report is not None and self._attempt(target) == 0

    def _completion(self, request: dict, messages: list[dict], number: int) -> dict:
        system, user = _first(messages, "system").strip(), _first(messages, "user")
        tools = bool(request.get("tools"))
        if system == JUDGE_SYSTEM.strip():
            reply = _judge_reply(user, self.config, self._judges_first_attempt(user))
            kind, message = "judge", {"role": "assistant", "content": reply}
        elif system == WRITER_SYSTEM.strip():
            kind, message = "writer", {"role": "assistant", "content": _writer_reply(user)}
        else:
            kind = "agent"
            thought, command = self.agent_action(user, messages)
            if tools:
                turn = sum(m.get("role") == "assistant" for m in messages)
                message = {"role": "assistant", "content": f"THOUGHT: {thought}", "tool_calls": [
                    {"id": f"call_{number}_{turn}", "type": "function",
                     "function": {"name": "bash", "arguments": json.dumps({"command": command})}}]}
            else:
                message = {"role": "assistant",
                           "content": f"THOUGHT: {thought}\n\n```mswea_bash_command\n{command}\n```"}
        self._count(kind)
        prompt_tokens = sum(_tokens(_text(m.get("content"))) for m in messages)
        # what the model wrote, not the call ids (numbered by this server's request counter): same run, same usage
        completion_tokens = _tokens(_text(message["content"]) + "".join(
            call["function"]["arguments"] for call in message.get("tool_calls", [])))
        return {
            "id": f"chatcmpl-scripted-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if "tool_calls" in message else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def _parse_modes(text: str) -> dict[str, float]:
    modes: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, separator, weight = item.partition("=")
        if not separator:
            raise argparse.ArgumentTypeError(f"expected mode=weight, got {item!r}")
        try:
            modes[name.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {weight!r}") from None
    return modes


def main(argv: list[str] | None = None) -> None:
    """Serve the scripted teacher until SIGTERM or SIGINT; prints the base URL once."""
    parser = argparse.ArgumentParser(prog="python -m sera_ops.testing.scripted_teacher", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18765)
    parser.add_argument("--model", default=ScriptedTeacherConfig.model)
    parser.add_argument("--api-key-env", metavar="VAR",
                        help="require 'Authorization: Bearer <key>' with the key read from this environment variable")
    parser.add_argument("--rollout-two-modes", type=_parse_modes, default={"full": 1.0},
                        help="weights per mode, e.g. full=0.7,partial=0.2,none=0.1")
    parser.add_argument("--judge-reject-rate", type=float, default=0.0)
    parser.add_argument("--judge-reject-first-attempts", type=float, default=0.0,
                        help="share of rollout one's first attempts at a function that the judge rejects")
    parser.add_argument("--noop-first-attempt", action="store_true",
                        help="make a comment-only edit in rollout one's first attempt at a function")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every chat request")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered with 500/429")
    parser.add_argument("--stall-rate", type=float, default=0.0, help="share of requests that stall first")
    parser.add_argument("--stall", type=float, default=30.0, help="seconds a stalled request waits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is empty or not set")
    try:
        config = ScriptedTeacherConfig(
            model=args.model, api_key=api_key, rollout_two_modes=args.rollout_two_modes,
            judge_reject_rate=args.judge_reject_rate, judge_reject_first_attempts=args.judge_reject_first_attempts,
            noop_first_attempt=args.noop_first_attempt, latency_s=args.latency, error_rate=args.error_rate,
            stall_rate=args.stall_rate, stall_s=args.stall, seed=args.seed, host=args.host, port=args.port)
    except ValueError as error:
        parser.error(str(error))
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with ScriptedTeacher(config) as teacher:
        print(teacher.url, flush=True)
        done.wait()


if __name__ == "__main__":
    main()
