"""The scripted teacher over HTTP: the OpenAI chat-completions and models routes on loopback.

`ScriptedTeacher` tells the judge's and the writer's requests from the agent's by their system prompt, injects the
configured latency, errors and stalls, and counts what it answered; `InFlightMeter` measures how busy clients keep
it. Subclasses (the hostile teacher) replace `agent_action` to play another script.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from sera_ops.prompts import JUDGE_SYSTEM, WRITER_SYSTEM
from sera_ops.testing.loopback import LoopbackHTTPServer, LoopbackServer
from sera_ops.testing.scripted_teacher.agent import next_action
from sera_ops.testing.scripted_teacher.config import ScriptedTeacherConfig, stable_fraction
from sera_ops.testing.scripted_teacher.conversation import Target, first_text, history, message_text, target_of
from sera_ops.testing.scripted_teacher.replies import INITIAL_PROMPT, judge_reply, writer_reply


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
            self.first_text: float | None = None
            self._last = 0.0

    def _move(self, delta: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self.first_text is None:
                self.first_text, self._changed = now, now
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
            span = self._last - (self.first_text or self._last)
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

    def agent_action(self, task: str, messages: list[dict], seed: int | None = None) -> tuple[str, str]:
        """(thought, command) of the next agent turn; subclasses play other scripts. `seed`: the request's."""
        target = target_of(task, self.config, seed)
        if target is not None and target.report is not None:
            target = replace(target, noop=self._attempt(target) == 0 and self.config.noop_first_attempt)
        return next_action(target, history(messages))

    def _attempt(self, target: Target) -> int:
        """Rollout one's attempt at the target's function: how many other vague reports about it came first."""
        with self._lock:
            seen = self._reports.setdefault((target.start_fn, target.path), [])
            if target.report not in seen:
                seen.append(target.report)
            return seen.index(target.report)

    def _judges_first_attempt(self, prompt: str) -> bool:
        initial = INITIAL_PROMPT.search(prompt)
        target = target_of(initial.group(1), self.config) if initial else None
        return target is not None and target.report is not None and self._attempt(target) == 0

    def _completion(self, request: dict, messages: list[dict], number: int) -> dict:
        system, user = first_text(messages, "system").strip(), first_text(messages, "user")
        tools = bool(request.get("tools"))
        if system == JUDGE_SYSTEM.strip():
            reply = judge_reply(user, self.config, self._judges_first_attempt(user))
            kind, message = "judge", {"role": "assistant", "content": reply}
        elif system == WRITER_SYSTEM.strip():
            kind, message = "writer", {"role": "assistant", "content": writer_reply(user)}
        else:
            kind = "agent"
            thought, command = self.agent_action(user, messages, request.get("seed"))
            if tools:
                turn = sum(m.get("role") == "assistant" for m in messages)
                message = {"role": "assistant", "content": f"THOUGHT: {thought}", "tool_calls": [
                    {"id": f"call_{number}_{turn}", "type": "function",
                     "function": {"name": "bash", "arguments": json.dumps({"command": command})}}]}
            else:
                message = {"role": "assistant",
                           "content": f"THOUGHT: {thought}\n\n```mswea_bash_command\n{command}\n```"}
        self._count(kind)
        prompt_tokens = sum(_tokens(message_text(m.get("content"))) for m in messages)
        # what the model wrote, not the call ids (numbered by this server's request counter): same run, same usage
        completion_tokens = _tokens(message_text(message["content"]) + "".join(
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
