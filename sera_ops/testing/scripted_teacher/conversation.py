"""Reading the conversation a request carries: what the episode is about (`Target`) and what happened so far.

The teacher keeps no state per episode: each chat request holds the whole conversation, so the task (rollout one's
vague report, or rollout two's PR) and the earlier actions with their observations (`Turn`) are read back from it,
in whichever format mini-swe-agent rendered them (tool calls or text, JSON or tagged observations).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sera_ops.prompts import ROLLOUT_ONE_COUNT, match_rollout_one, render_rollout_one
from sera_ops.testing.scripted_teacher.config import ScriptedTeacherConfig, rollout_two_mode, stable_fraction
from sera_ops.testing.scripted_teacher.replies import SYMPTOM_MARKERS

_TEXT_ACTION = re.compile(r"```mswea_bash_command\s*\n(.*?)\n```", re.DOTALL)
_PR_DESCRIPTION = re.compile(r"<pr_description>(.*?)</pr_description>", re.DOTALL)
_PR_TARGET = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)` in `([^`\s]+\.py)`")
_PR_FUNCTION = re.compile(r"Calling `([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)`")


@dataclass(frozen=True)
class Target:
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
class Turn:
    """One earlier assistant action and what the environment answered."""

    command: str
    returncode: int | None
    output: str


def message_text(content: Any) -> str:
    """Message content as text; list content (multimodal parts) is joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def first_text(messages: list[dict], role: str) -> str:
    return next((message_text(message.get("content")) for message in messages if message.get("role") == role), "")


def target_of(task: str, config: ScriptedTeacherConfig, request_seed: int | None = None) -> Target | None:
    """Rollout one when the task holds a known vague prompt; otherwise rollout two, aimed at the PR's "`X` in `Y`"
    (its mode drawn per `request_seed` when the request has one)."""
    rollout_one = match_rollout_one(task)
    if rollout_one is not None:
        start_fn, path = rollout_one
        report = _report_index(task, start_fn, path)
        pick = stable_fraction(config.seed, "edit", start_fn, path, str(report))
        return Target(start_fn, path, "full", report, pick)
    wrapped = _PR_DESCRIPTION.search(task)
    pr_text = wrapped.group(1) if wrapped else task
    named = _PR_TARGET.search(pr_text) or _PR_FUNCTION.search(pr_text)
    if named is None:
        return None
    kind = next((kind for kind, marker in SYMPTOM_MARKERS.items() if marker in pr_text), None)
    path = named.group(2) if named.re is _PR_TARGET else ""  # "": the PR does not say where; search for it
    return Target(named.group(1), path, rollout_two_mode(config, pr_text, request_seed), kind=kind)


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
    found = _TEXT_ACTION.search(message_text(message.get("content")))
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


def history(messages: list[dict]) -> list[Turn]:
    """Pair each assistant action with the observation after it (tool messages, or user messages in text mode)."""
    first_user = next((i for i, message in enumerate(messages) if message.get("role") == "user"), len(messages))
    turns: list[Turn] = []
    pending: str | None = None
    for message in messages[first_user + 1:]:
        role = message.get("role")
        if role == "assistant":
            if pending is not None:
                turns.append(Turn(pending, None, ""))
            pending = _action_of(message)
        elif role in ("tool", "user") and pending is not None:
            turns.append(Turn(pending, *_read_observation(message_text(message.get("content")))))
            pending = None
    if pending is not None:
        turns.append(Turn(pending, None, ""))
    return turns
