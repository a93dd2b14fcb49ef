"""A scripted teacher: a deterministic stand-in for a teacher LLM behind the real OpenAI chat-completions protocol.

It lets the whole SERA pipeline (mini-swe-agent's agent loop, real sandboxes, real HTTP clients, judge and synthetic-PR
writer) run without a GPU, for tests and for users' dry runs. It is not a model: it plays a fixed script. As the agent
it locates the start function named in the task, prints its source with a small `ast` script, rewrites one line by
absolute line number (or inserts a harmless guard), reviews `git diff` and submits. The edit is derived only from the
function's source, so a rollout-two episode in mode "full" reproduces rollout one's patch exactly, "partial" shares
some changed lines and "none" changes nothing. All randomness (modes, judge rejections, injected errors and stalls)
comes from stable hashes of the seed and the request, so a run is reproducible.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import hmac
import json
import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from types import MappingProxyType
from typing import Any

from sera_ops.prompts import JUDGE_SYSTEM, WRITER_SYSTEM, match_rollout_one
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
_LISTING_HEADER = re.compile(r"FUNCTION (\d+) (\d+)")
_SHOW_NOTE = "# print the source of "
_EDIT_NOTE = "# rewrite "
_EXPLORE = "ls"
_REVIEW = "git diff"
_SUBMIT = f"echo {SUBMIT_MARKER}"


@dataclass(frozen=True)
class ScriptedTeacherConfig:
    """How the scripted teacher behaves; every random-looking choice is a stable hash of `seed` and the request."""

    model: str = "scripted-teacher"
    api_key: str | None = field(default=None, repr=False)
    rollout_two_modes: Mapping[str, float] = field(default_factory=lambda: {"full": 1.0})
    judge_reject_rate: float = 0.0
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
        for name in ("judge_reject_rate", "error_rate", "stall_rate"):
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
    start_fn: str
    path: str
    mode: str


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
        return _Target(rollout_one[0], rollout_one[1], "full")
    wrapped = _PR_DESCRIPTION.search(task)
    pr_text = wrapped.group(1) if wrapped else task
    named = _PR_TARGET.search(pr_text)
    if named is None:
        return None
    return _Target(named.group(1), named.group(2), rollout_two_mode(config, pr_text))


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


@dataclass(frozen=True)
class _Edit:
    """Rewrite one line of the function (0-based `offset`): keep it and add lines after it, or replace it."""

    offset: int
    expected: str
    keep: bool
    new_lines: tuple[str, ...]


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


def _leading_space(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t"))]


def _own_returns(function: ast.AST) -> Iterator[ast.Return]:
    """Return statements of the function itself, not of nested functions or classes."""
    stack = list(ast.iter_child_nodes(function))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def _unused_name(base: str, source: str) -> str:
    candidates = [base, f"{base}_"] + [f"{base}_{n}" for n in range(2, 1000)]
    return next(name for name in candidates if not re.search(rf"\b{re.escape(name)}\b", source))


def _starts_its_line(node: ast.stmt, lines: list[str]) -> bool:
    line = lines[node.lineno - 1].encode("utf-8")
    return not line[:node.col_offset].strip()


def _function_edit(lines: list[str], mode: str) -> _Edit | None:
    """Full: name the returned value `result` (or guard with `if False: pass`); partial: a variant sharing one line."""
    if mode == "none" or not lines:
        return None
    def_indent = _leading_space(lines[0])
    relative = [line[len(def_indent):] if line.startswith(def_indent) else line for line in lines]
    try:
        module = ast.parse("\n".join(relative))
    except SyntaxError:
        return None
    if not module.body or not isinstance(module.body[0], ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    function = module.body[0]
    for node in sorted(_own_returns(function), key=lambda node: (node.lineno, node.col_offset)):
        if node.value is None or node.lineno != node.end_lineno:
            continue
        raw = relative[node.lineno - 1].encode("utf-8")
        if raw[:node.col_offset].strip() or raw[node.end_col_offset:].strip():
            continue
        expression = raw[node.col_offset:node.end_col_offset].decode("utf-8").removeprefix("return").strip()
        original = lines[node.lineno - 1]
        indent = _leading_space(original)
        name = _unused_name("result" if mode == "full" else "value", "\n".join(lines))
        return _Edit(node.lineno - 1, original, False, (f"{indent}{name} = {expression}", f"{indent}return {name}"))
    return _guard_insertion(function, lines, relative, mode)


def _guard_insertion(function: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str], relative: list[str],
                     mode: str) -> _Edit | None:
    """Insert an `if False:` guard as the first statement after the docstring (never changes behaviour)."""
    first = function.body[0]
    has_docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                     and isinstance(first.value.value, str))
    decorators = getattr(first, "decorator_list", [])
    first_line = min([first.lineno] + [decorator.lineno for decorator in decorators])
    if first_line <= function.lineno or (not decorators and not _starts_its_line(first, relative)):
        return None  # the body shares a line with the def header
    after = first.end_lineno if has_docstring else first_line - 1
    indent = _leading_space(lines[first_line - 1])
    step = indent[len(_leading_space(lines[0])):] or "    "
    second = "pass" if mode == "full" else "..."
    return _Edit(after - 1, lines[after - 1], True, (f"{indent}if False:", f"{indent}{step}{second}"))


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


def _show_command(target: _Target) -> str:
    note = f"{_SHOW_NOTE}{target.start_fn} in {target.path}"
    return _heredoc(note, {"path": target.path, "wanted": target.start_fn}, _SHOW_BODY)


def _edit_command(target: _Target, start_line: int, edit: _Edit) -> str:
    number = start_line + edit.offset
    note = f"{_EDIT_NOTE}{target.path} line {number} ({target.start_fn})"
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
        edit = _function_edit(listing[1], target.mode) if listing else None
        if listing and edit:
            number = listing[0] + edit.offset
            thought = (f"I will add an explicit guard to `{target.start_fn}` after line {number} of `{target.path}`."
                       if edit.keep else
                       f"I will name the value `{target.start_fn}` returns on line {number} of `{target.path}`.")
            return thought, _edit_command(target, listing[0], edit)
        return "I will review the state of the working tree before submitting.", _REVIEW
    if kind == "edit":
        return "Let me review the change.", _REVIEW
    return submit


# ---------------------------------------------------------------------------------------------------------------------
# Judge and synthetic-PR writer


def _judge_reply(prompt: str, config: ScriptedTeacherConfig) -> str:
    if not re.search(r"^diff --git ", prompt, re.MULTILINE):
        return "The final patch is empty, so the agent did not change anything.\n<output>no</output>"
    if stable_fraction(config.seed, "judge", prompt) < config.judge_reject_rate:
        return "The patch changes code, but I am not convinced it addresses the reported problem.\n<output>no</output>"
    return "The patch changes the function the task points at and stays consistent with it.\n<output>yes</output>"


def _writer_reply(prompt: str) -> str:
    note = LOCATE_NOTE.search(prompt)
    if note is None:
        return "I could not tell from the trajectory which function the change is about."
    start_fn, path = note.groups()
    demonstration = prompt[prompt.rfind("<demonstration_issue>"):] if "<demonstration_issue>" in prompt else ""
    heading = re.search(r"^(#{1,6})[ \t]+\S", demonstration, re.MULTILINE)
    lines = [f"Unexpected result from `{start_fn}`", ""]
    if heading:
        lines += [f"{heading.group(1)} Description", ""]
    lines.append(f"Calling `{start_fn}` in `{path}` gives unexpected results. The value it hands back does not match "
                 "what its callers expect, so code built on top of it misbehaves. I would expect it to behave "
                 "consistently with the rest of the module.")
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
        return _next_action(_target(task, self.config), _history(messages))

    def _completion(self, request: dict, messages: list[dict], number: int) -> dict:
        system, user = _first(messages, "system").strip(), _first(messages, "user")
        tools = bool(request.get("tools"))
        if system == JUDGE_SYSTEM.strip():
            kind, message = "judge", {"role": "assistant", "content": _judge_reply(user, self.config)}
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
        completion_tokens = _tokens(json.dumps(message))
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
            judge_reject_rate=args.judge_reject_rate, latency_s=args.latency, error_rate=args.error_rate,
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
