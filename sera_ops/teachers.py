"""Talking to teacher models: one OpenAI-compatible client per model server, with token accounting.

Two users: the judge and PR writer call `TeacherClient.chat`; the agent loop uses `AgentModel`, a mini-swe-agent
model class on the plain `openai` client (no litellm, so no price-map lookups and no optional `mcp` dependency).
The API key lives only in the client object: it is never part of a config dump, template variable or trajectory.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from openai import APIConnectionError, APIStatusError, APITimeoutError, AuthenticationError, OpenAI

from sera_ops.config import ModelServer

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


@dataclass
class Usage:
    """Tokens and calls spent; summed per instance and per batch for the run statistics."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, response: Any) -> None:
        usage = getattr(response, "usage", None)
        with self._lock:
            self.calls += 1
            if usage is not None:
                self.prompt_tokens += usage.prompt_tokens or 0
                self.completion_tokens += usage.completion_tokens or 0

    def to_dict(self) -> dict[str, int]:
        with self._lock:
            return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens}


def openai_client(server: ModelServer, api_key: str | None) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=api_key or NO_KEY, timeout=server.timeout_s,
                  max_retries=server.max_retries)


def preflight(name: str, server: ModelServer, api_key: str | None) -> None:
    """One cheap GET {base_url}/models (vLLM, SGLang, hosted OpenAI-compatible APIs and the scripted teacher serve it)
    before a batch starts; raises TeacherUnreachable when nothing answers in time or the key is refused. Any other
    answer, even an error status, shows that the server is there: its requests then get their usual retries."""
    timeout = min(server.timeout_s, PREFLIGHT_TIMEOUT_S)
    where = f"model server '{name}' at {server.base_url}"
    try:
        openai_client(server, api_key).with_options(timeout=timeout, max_retries=0).models.list()
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
    """Plain chat completions against one model server (judge, PR writer)."""

    def __init__(self, server: ModelServer, api_key: str | None):
        self.server = server
        self._client = openai_client(server, api_key)
        self.usage = Usage()

    def chat(self, system: str, user: str, *, temperature: float, max_tokens: int) -> str:
        response = self._client.chat.completions.create(
            model=self.server.model, temperature=temperature, max_tokens=max_tokens,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}])
        self.usage.add(response)
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
    reasoning, when the server returns it apart from the content, is kept as the message's `reasoning_content`."""

    def __init__(self, server: ModelServer, api_key: str | None, *, temperature: float, max_tokens: int | None,
                 observation_template: str, format_error_template: str):
        from minisweagent.models.utils.actions_text import format_observation_messages, parse_regex_actions
        from minisweagent.models.utils.actions_toolcall import (
            BASH_TOOL,
            format_toolcall_observation_messages,
            parse_toolcall_actions,
        )

        self.server = server
        self.usage = Usage()
        self._client = openai_client(server, api_key)
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
        self.config = self  # mini-swe-agent reads `model.config`; everything public here is safe to dump

    def query(self, messages: list[dict], **kwargs: Any) -> dict:
        from minisweagent.exceptions import FormatError

        api_messages = [{k: v for k, v in m.items() if k not in _NOT_SENT_BACK} for m in messages]
        tools = {"tools": [self._bash_tool]} if self.server.tool_calls else {}
        response = self._client.chat.completions.create(model=self.server.model, messages=api_messages,
                                                        **tools, **(self.request_kwargs | kwargs))
        self.usage.add(response)
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
            exc.messages[0].setdefault("extra", {}).update({"cost": 0.0, "raw_content": choice.message.content})
            raise
        message = choice.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"})
        message.setdefault("content", "")
        reasoning = _reasoning(choice.message)
        if reasoning:
            message["reasoning_content"] = reasoning
        message["extra"] = {"actions": actions, "cost": 0.0, "timestamp": time.time(),
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
