"""Talking to teacher models: one OpenAI-compatible client per model server, with token accounting.

Two users: the judge and PR writer call `TeacherClient.chat`; the agent loop uses `AgentModel`, a mini-swe-agent
model class on the plain `openai` client (no litellm, so no price-map lookups and no optional `mcp` dependency).
The API key lives only in the client object: it is never part of a config dump, template variable or trajectory.
Each call is charged to its instance's `spend.Budget`; `preflight` checks that a server answers before a batch starts.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from openai import APIConnectionError, APIStatusError, APITimeoutError, AuthenticationError, OpenAI

from sera_ops.records import COST_LIMITED
from sera_ops.rollouts.spend import Budget, CostLimitReached, Usage
from sera_ops.settings import ModelServer

log = logging.getLogger(__name__)

NO_KEY = "EMPTY"  # what local vLLM/SGLang servers accept when no key is configured
PREFLIGHT_TIMEOUT_S = 10.0
"""The longest a batch waits for its model server's GET /models (less when the server's timeout_s is shorter)."""


class TeacherUnreachable(RuntimeError):
    """The model server does not answer, or refuses the key: the batch task fails at once naming it, instead of every
    instance spending its whole retry budget on a dead server. Only a refused key is `permanent` (see
    `sera_ops.errors`): a server that is down may come back by the task's next try."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


_SLOTS: dict[tuple[str, str, int], threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def request_slot(server: ModelServer) -> threading.BoundedSemaphore:
    """Held for each request: at most `concurrency` requests in flight to a server from this process, however many
    episodes and judge or writer calls share it."""
    key = (server.base_url, server.model, server.concurrency)
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(key, threading.BoundedSemaphore(server.concurrency))


_CLIENTS: dict[tuple[str, str, float, int], OpenAI] = {}


def openai_client(server: ModelServer, api_key: str | None) -> OpenAI:
    """One client (and connection pool) per server and key in this process, shared by every episode, judge and
    writer: a client per instance would leave thousands of idle sockets behind in a large batch. Usage is counted by
    the callers, not the client, so sharing it changes no accounting."""
    key = (server.base_url, api_key or NO_KEY, server.timeout_s, server.max_retries)
    with _SLOTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = OpenAI(base_url=server.base_url, api_key=key[1], timeout=server.timeout_s,
                                   max_retries=server.max_retries)
        return _CLIENTS[key]


def preflight(name: str, server: ModelServer, api_key: str | None) -> None:
    """One cheap GET {base_url}/models (vLLM, SGLang, hosted OpenAI-compatible APIs and the scripted teacher serve it)
    before a batch starts; raises TeacherUnreachable when nothing answers in time or the key is refused. Any other
    answer, even an error status, shows that the server is there: its requests then get their usual retries."""
    timeout = min(server.timeout_s, PREFLIGHT_TIMEOUT_S)
    where = f"model server '{name}' at {server.base_url}"
    try:
        # A client of its own, not the shared pool: a kept-alive connection could answer for a server that no longer
        # accepts new ones.
        with OpenAI(base_url=server.base_url, api_key=api_key or NO_KEY, timeout=timeout, max_retries=0) as fresh:
            fresh.models.list()
    except APITimeoutError:
        raise TeacherUnreachable(f"{where} did not answer GET /models within {timeout:g} s; is it hung or "
                                 "overloaded?") from None
    except APIConnectionError as exc:
        raise TeacherUnreachable(f"{where} cannot be reached ({exc.__cause__ or exc}); is it running, and is its "
                                 "base_url right?") from None
    except AuthenticationError as exc:  # not 403: a key may be barred from listing models yet allowed to chat
        raise TeacherUnreachable(f"{where} refused the API key (HTTP {exc.status_code}); check "
                                 f"model_servers.{name}.api_key", permanent=True) from None
    except APIStatusError as exc:
        log.info("%s answered GET /models with HTTP %d; it is up, going ahead", where, exc.status_code)


class TeacherClient:
    """Chat completions against one model server for one instance (judge, PR writer, and under `AgentModel`):
    `usage` is that instance's own, `budget` its limit. `name` is the server's name in platform.yaml."""

    def __init__(self, server: ModelServer, api_key: str | None, *, name: str = "", budget: Budget | None = None):
        self.server = server
        self._client = openai_client(server, api_key)
        self.usage = Usage(server=name)
        self.budget = budget or Budget()

    def complete(self, **request: Any) -> tuple[Any, float]:
        """One request within the server's request slots; raises CostLimitReached, without calling, once the budget
        is spent. Returns the response and its cost in USD."""
        self.budget.check()
        with request_slot(self.server):
            response = self._client.chat.completions.create(model=self.server.model, **request)
        cost = self.usage.add(response, self.server)
        self.budget.add(cost)
        return response, cost

    def chat(self, system: str, user: str, *, temperature: float, max_tokens: int) -> str:
        response, _ = self.complete(temperature=temperature, max_tokens=max_tokens,
                                    messages=[{"role": "system", "content": system}, {"role": "user", "content": user}])
        return response.choices[0].message.content or ""


_NOT_SENT_BACK = ("extra", "reasoning_content")
"""Trajectory-only keys of a message: the teacher gets its earlier replies without their reasoning (some
OpenAI-compatible APIs refuse `reasoning_content` in a request), as it did before the reasoning was kept."""


def _reasoning(message: Any) -> str | None:
    """What a server's reasoning parser (vLLM/SGLang `--reasoning-parser`) split off the reply: `reasoning_content`, or
    `reasoning` (newer vLLM, OpenRouter); the openai client keeps such extra fields on the message."""
    for key in ("reasoning_content", "reasoning"):
        value = getattr(message, key, None)
        if isinstance(value, str) and value.strip():
            return value
    return None


class AgentModel:
    """mini-swe-agent `Model` protocol over the openai client; tool-call mode or fenced-text mode. The reply's
    reasoning, when the server returns it apart from the content, is kept as the message's `reasoning_content`.
    Each message carries its call's cost (mini-swe-agent sums it); once the instance's budget is spent the episode
    ends with exit status `cost_limited` (not the agent's `cost_limit`, whose LimitsExceeded a step limit shares)."""

    def __init__(self, server: ModelServer, api_key: str | None, *, temperature: float, max_tokens: int | None,
                 observation_template: str, format_error_template: str, name: str = "",
                 budget: Budget | None = None, seed: int | None = None):
        from minisweagent.models.utils.actions_text import format_observation_messages, parse_regex_actions
        from minisweagent.models.utils.actions_toolcall import (
            BASH_TOOL,
            format_toolcall_observation_messages,
            parse_toolcall_actions,
        )

        self.server = server
        self._teacher = TeacherClient(server, api_key, name=name, budget=budget)
        self.usage = self._teacher.usage
        self._bash_tool = BASH_TOOL
        self._parse_toolcalls, self._parse_text = parse_toolcall_actions, parse_regex_actions
        self._format_toolcall_obs, self._format_text_obs = format_toolcall_observation_messages, \
            format_observation_messages
        self.observation_template = observation_template
        self.format_error_template = format_error_template
        self.action_regex = r"```mswea_bash_command\s*\n(.*?)\n```"
        self.request_kwargs: dict[str, Any] = {"temperature": temperature}
        if max_tokens:
            self.request_kwargs["max_tokens"] = max_tokens
        if seed is not None:
            self.request_kwargs["seed"] = seed
        self.config = self  # mini-swe-agent reads `model.config`; everything public here is safe to dump

    def query(self, messages: list[dict], **kwargs: Any) -> dict:
        from minisweagent.exceptions import FormatError, LimitsExceeded

        api_messages = [{k: v for k, v in m.items() if k not in _NOT_SENT_BACK} for m in messages]
        tools = {"tools": [self._bash_tool]} if self.server.tool_calls else {}
        try:
            response, cost = self._teacher.complete(messages=api_messages, **tools, **(self.request_kwargs | kwargs))
        except CostLimitReached as exc:
            raise LimitsExceeded({"role": "exit", "content": str(exc),
                                  "extra": {"exit_status": COST_LIMITED, "submission": ""}}) from None
        choice = response.choices[0]
        template_kwargs = {"finish_reason": choice.finish_reason}
        try:
            if self.server.tool_calls:
                actions = self._parse_toolcalls(choice.message.tool_calls or [],
                                                format_error_template=self.format_error_template,
                                                template_kwargs=template_kwargs)
            else:
                actions = self._parse_text(choice.message.content or "", action_regex=self.action_regex,
                                           format_error_template=self.format_error_template,
                                           template_kwargs=template_kwargs)
        except FormatError as exc:
            exc.messages[0].setdefault("extra", {}).update({"cost": cost, "raw_content": choice.message.content})
            raise
        message = choice.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"})
        message.setdefault("content", "")
        reasoning = _reasoning(choice.message)
        if reasoning:
            message["reasoning_content"] = reasoning
        message["extra"] = {"actions": actions, "cost": cost, "timestamp": time.time(),
                            "usage": response.usage.model_dump() if response.usage else None}
        return message

    def format_message(self, **kwargs: Any) -> dict:
        return kwargs

    def format_observation_messages(self, message: dict, outputs: list[dict], template_vars: dict | None = None):
        if self.server.tool_calls:
            return self._format_toolcall_obs(actions=message.get("extra", {}).get("actions", []), outputs=outputs,
                                             observation_template=self.observation_template,
                                             template_vars=template_vars)
        return self._format_text_obs(outputs, observation_template=self.observation_template,
                                     template_vars=template_vars)

    def get_template_vars(self, **kwargs: Any) -> dict[str, Any]:
        return {"model_name": self.server.model}

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        return self.get_template_vars()

    def serialize(self) -> dict:
        return {"info": {"config": {"model": {"model_name": self.server.model, "base_url": self.server.base_url,
                                              "tool_calls": self.server.tool_calls, **self.request_kwargs},
                                    "model_type": f"{type(self).__module__}.{type(self).__name__}"}}}
