"""The edit the teacher makes: derived with `ast` from the target function's printed source.

Per kind (flip a comparison, bump a numeric constant, negate an `if` test, or guard an argument against None) it
finds the first place in the function where that edit really changes the syntax tree, both as rollout one writes it
("full") and as a partial rollout two writes the same line another way. It is separate from the agent's commands
because it is the only part that runs `ast.parse`, under the one lock that makes it safe on the server's threads.
"""

from __future__ import annotations

import ast
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from sera_ops.testing.scripted_teacher.conversation import Target

EDIT_KINDS = ("compare", "constant", "negate")
"""The behaviour-changing edits the teacher picks from; a `None` guard only where none of them applies."""

_FLIPPED = {ast.Lt: ">=", ast.GtE: "<", ast.Gt: "<=", ast.LtE: ">", ast.Eq: "!=", ast.NotEq: "==",
            ast.Is: "is not", ast.IsNot: "is", ast.In: "not in", ast.NotIn: "in"}
_OPERATOR = re.compile(r"([\s)]*)(<=|>=|==|!=|<|>|is\s+not|is|not\s+in|in)([\s(]*)")
"""What lies between a comparison's left operand and its first comparator: the operator, maybe parentheses."""
_ATOMS = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant)
_NOT_DESCENDED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.JoinedStr)
_LISTING_HEADER = re.compile(r"FUNCTION (\d+) (\d+)")
"""The first line the show command (agent.py) prints: the function's first and last line numbers."""


@dataclass(frozen=True)
class Edit:
    """Rewrite one line of the function (0-based `offset`): keep it and add lines after it, or replace it.
    `kind` is one of EDIT_KINDS, "guard" or "comment"; `subject` is the argument a guard checks."""

    offset: int
    expected: str
    keep: bool
    new_lines: tuple[str, ...]
    kind: str
    subject: str = ""


def read_listing(output: str) -> tuple[int, list[str]] | None:
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

    def rewrite(self, kind: str, lineno: int, start: int, end: int, text: str) -> Edit | None:
        """Replace bytes [start, end) of line `lineno` with `text`; None where the line is not under the def."""
        original = self.lines[lineno - 1]
        if not original.startswith(self.indent):
            return None
        raw = self.relative[lineno - 1].encode("utf-8")
        new = (raw[:start] + text.encode("utf-8") + raw[end:]).decode("utf-8")
        return Edit(lineno - 1, original, False, (self.indent + new,), kind)

    def replace(self, kind: str, node: ast.AST, text: str) -> Edit | None:
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

    def changes_code(self, edit: Edit | None) -> bool:
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


_Pair = tuple[Edit | None, Edit | None]
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
    yield tuple(Edit(after, function.lines[after], True,
                      (check, f'{indent}{step}raise {error}("{names[0]} must not be None")'), "guard", names[0])
                for error in ("ValueError", "TypeError"))


def _edits(lines: list[str]) -> dict[str, tuple[Edit, Edit]]:
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


def _comment_edit(lines: list[str], start_fn: str) -> Edit | None:
    """A comment line at the top of the body: a patch that changes no code (the judge must turn it down)."""
    function = _Function.parse(lines)
    if function is None:
        return None
    after, indent = function.body_top() or (0, function.indent + "    ")
    return Edit(after, function.lines[after], True, (f"{indent}# TODO: double-check the edge cases of {start_fn}",),
                 "comment")


def choose_edit(lines: list[str], target: Target) -> Edit | None:
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
