"""Turn mini-swe-agent trajectories into SFT records (Hermes, XML or raw chat format).

A trajectory is the dict `DefaultAgent.save` writes: `{"info": {"exit_status", "submission", ...}, "messages": [...]}`.
Only `messages` is read (never `info.config`, which holds the teacher's API key). The agent's actions come from each
assistant message's `extra.actions`, which mini-swe-agent fills in both tool-call and text mode, so one code path
serves both.

Differences from SERA's exporter (docs/sera-behaviour.md#export, #bugs-export): assistant turns without actions are kept
as plain text instead of crashing; reformatting looks for think tags only in the assistant's prose, so a tool output,
file dump or command that mentions `<think>` no longer drops the sample; `raw` drops harness-only fields; output is
sorted.

Format errors: mini-swe-agent records a reply without exactly one valid action only as a `user` correction (the reply
itself sits in the correction's `extra`), so the correction would answer nothing, and the reply is no behaviour to
learn. Both are left out of every format, as SWE-agent (SERA's default harness) leaves a requeried reply out of its
history; the reply that parsed follows the previous observation and is trained.

Reasoning: a teacher served with a reasoning parser returns its reasoning apart from the content; the agent's model
keeps it as `reasoning_content`. When `add_think` or `reformat` asks for think blocks, it is the turn's think block
(`<think>` … `</think>` before the content); `raw` keeps the field as it is.
"""

import copy
import json
import re
from collections.abc import Iterable
from typing import Literal

from sera_ops.settings import PostprocessOptions

BASH_TOOL_JSON: list[dict] = [
    {
        "type": "function",
        "function": {
            "name": "bash",
            "description": (
                "Run a bash command and return its exit code and output (stdout and stderr merged). "
                "Every call starts a fresh shell, so `cd` and exported variables do not carry over to the next call."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The bash command to run."},
                },
                "required": ["command"],
            },
        },
    }
]

_PREAMBLE = (
    "You are a software engineering agent. You solve tasks in a code repository by running shell commands, "
    "reading their output and editing files until the task is done."
)


def _hermes_system_prompt(tools: list[dict]) -> str:
    """Qwen/Hermes-style prompt: the tool schemas as one JSON object per line inside <tools>."""
    schemas = "\n".join(json.dumps(tool) for tool in tools)
    return (
        f"{_PREAMBLE}\n\n"
        "# Tools\n\n"
        "You can call the functions whose signatures are listed inside the <tools></tools> XML tags:\n"
        f"<tools>\n{schemas}\n</tools>\n\n"
        "To call a function, write a JSON object with the function name and its arguments inside "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <arguments-json-object>}\n</tool_call>'
    )


def _xml_function_description(number: int, function: dict) -> str:
    """One '---- BEGIN FUNCTION #n ----' block listing the description and every parameter."""
    parameters = function["parameters"]
    required = set(parameters.get("required", []))
    lines = [f"---- BEGIN FUNCTION #{number}: {function['name']} ----", f"Description: {function['description']}"]
    lines.append("Parameters:")
    for index, (name, spec) in enumerate(parameters["properties"].items(), start=1):
        necessity = "required" if name in required else "optional"
        lines.append(f"  ({index}) {name} ({spec['type']}, {necessity}): {spec['description']}")
    lines.append(f"---- END FUNCTION #{number} ----")
    return "\n".join(lines)


def _xml_system_prompt(tools: list[dict]) -> str:
    """Prompt for the `<function=...><parameter=...>` calling convention, derived from the same schemas."""
    descriptions = "\n\n".join(
        _xml_function_description(number, tool["function"]) for number, tool in enumerate(tools, start=1)
    )
    return (
        f"{_PREAMBLE}\n\n"
        "You have access to the following functions:\n\n"
        f"{descriptions}\n\n"
        "To call a function, end your message with a block in exactly this form:\n\n"
        "<function=example_function_name>\n"
        "<parameter=example_parameter>\n"
        "value, which may span several lines\n"
        "</parameter>\n"
        "</function>\n\n"
        "Reminders:\n"
        "- Make exactly one function call per turn, at the end of your message.\n"
        "- Explain your reasoning before the function call.\n"
        "- Provide every required parameter."
    )


HERMES_SYSTEM_PROMPT = _hermes_system_prompt(BASH_TOOL_JSON)
XML_SYSTEM_PROMPT = _xml_system_prompt(BASH_TOOL_JSON)

_BASH_TOOL_NAME = BASH_TOOL_JSON[0]["function"]["name"]
_CHAT_ROLES = {"system", "user", "assistant", "tool"}
# Text-mode action blocks (mini-swe-agent's default regex and its swebench_xml variant); the command itself is taken
# from `extra.actions`, so the block is only removed from the commentary.
_TEXT_ACTION_BLOCK = re.compile(
    r"```mswea_bash_command\s*\n.*?\n```|<mswea_bash_command>.*?</mswea_bash_command>", re.DOTALL
)
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"


class _DropSample(Exception):
    """Raised while rendering when the sample cannot become a well-formed training record."""


def _text(content: str | list | None) -> str:
    """Message content as text: None becomes "", multimodal lists keep their text parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content


def _think_block(text: str) -> str:
    return f"{_THINK_OPEN}\n{text.strip()}\n{_THINK_CLOSE}"


def _split_think(prose: str) -> tuple[str | None, str]:
    """Split prose into (think text or None, commentary); anything but one leading think block is malformed."""
    prose = prose.strip()
    n_open, n_close = prose.count(_THINK_OPEN), prose.count(_THINK_CLOSE)
    if n_open == n_close == 0:
        return None, prose
    if n_open != 1 or n_close != 1 or not prose.startswith(_THINK_OPEN):
        raise _DropSample("assistant prose must hold at most one leading think block")
    think, commentary = prose[len(_THINK_OPEN) :].split(_THINK_CLOSE)
    return think.strip(), commentary.strip()


def _reformat_prose(prose: str, mode: Literal["keep_only_think", "keep_only_non_think"]) -> str:
    """Reduce an assistant's prose to a single think block (docs/sera-behaviour.md#reformat)."""
    think, commentary = _split_think(prose)
    if mode == "keep_only_think":
        return _think_block(think if think else commentary)
    return _think_block(commentary if commentary or think is None else think)


def _hermes_call(command: str) -> str:
    arguments = json.dumps({"name": _BASH_TOOL_NAME, "arguments": {"command": command}}, ensure_ascii=False)
    return f"<tool_call>\n{arguments}\n</tool_call>"


def _xml_call(command: str) -> str:
    return f"<function={_BASH_TOOL_NAME}>\n<parameter=command>\n{command}\n</parameter>\n</function>"


def _render_assistant(message: dict, options: PostprocessOptions) -> str:
    """Prose (optionally think-wrapped or reformatted), a blank line, then one call block per action."""
    commands = [action["command"] for action in message.get("extra", {}).get("actions", [])]
    prose = _TEXT_ACTION_BLOCK.sub("", _text(message.get("content"))).strip()
    reasoning = _text(message.get("reasoning_content")).strip()
    if reasoning and (options.add_think or options.reformats):
        prose = "\n\n".join(part for part in (_think_block(reasoning), prose) if part)
    if options.add_think and _THINK_OPEN not in prose:
        prose = _think_block(prose)
    if options.reformats:
        if not commands:
            raise _DropSample("reformatting needs a tool call in every assistant turn")
        prose = _reformat_prose(prose, options.reformat)
    render_call = _hermes_call if options.format == "hermes" else _xml_call
    calls = "\n".join(render_call(command) for command in commands)
    return "\n\n".join(part for part in (prose, calls) if part)


def _chat_messages(messages: list[dict], options: PostprocessOptions) -> list[dict]:
    """Map harness messages to hermes/xml chat turns; observations of one assistant turn share one user message.

    An observation is a `tool` message, or (text mode) a `user` message that follows an assistant turn with actions
    before all of its actions got an answer; another user message (the task) stays plain.
    """
    system_prompt = HERMES_SYSTEM_PROMPT if options.format == "hermes" else XML_SYSTEM_PROMPT
    chat: list[dict] = []
    unanswered_actions = 0
    previous_is_observation = False
    for message in messages:
        role = message.get("role")
        if role not in _CHAT_ROLES:
            continue
        is_observation = role == "tool" or (role == "user" and unanswered_actions > 0)
        if role == "system":
            chat.append({"role": "system", "content": system_prompt})
        elif role == "assistant":
            unanswered_actions = len(message.get("extra", {}).get("actions", []))
            chat.append({"role": "assistant", "content": _render_assistant(message, options)})
        elif is_observation:
            unanswered_actions = max(unanswered_actions - 1, 0)
            observation = _text(message.get("content"))
            if options.format == "hermes":
                observation = f"<tool_response>\n{observation}\n</tool_response>"
            if previous_is_observation:
                chat[-1]["content"] += "\n" + observation
            else:
                chat.append({"role": "user", "content": observation})
        else:
            unanswered_actions = 0
            chat.append({"role": "user", "content": _text(message.get("content"))})
        previous_is_observation = is_observation
    return chat


def _is_format_error(message: dict) -> bool:
    return message.get("role") == "user" and (message.get("extra") or {}).get("interrupt_type") == "FormatError"


def _without_format_errors(messages: list[dict]) -> list[dict]:
    """Leave out each format-error correction and, where a harness recorded it as a turn, the reply it corrects."""
    kept: list[dict] = []
    for message in messages:
        if not _is_format_error(message):
            kept.append(message)
        elif kept and kept[-1].get("role") == "assistant":
            kept.pop()
    return kept


def _raw_messages(messages: list[dict]) -> list[dict]:
    """Harness messages without `extra` and `exit` turns; null content becomes "" for chat templates."""
    raw = []
    for message in messages:
        if message.get("role") not in _CHAT_ROLES:
            continue
        kept = {key: value for key, value in message.items() if key != "extra"}
        kept["content"] = "" if kept.get("content") is None else kept["content"]
        raw.append(kept)
    return raw


def trajectory_to_record(trajectory: dict, instance_id: str, options: PostprocessOptions) -> dict | None:
    """One SFT record for a trajectory, or None when it must be dropped (not submitted, no assistant turn, or
    an assistant turn that reformatting cannot turn into think block + tool calls)."""
    exit_status = str(trajectory.get("info", {}).get("exit_status", ""))
    if options.enforce_submit and exit_status.lower() != "submitted":
        return None
    messages = _without_format_errors(trajectory.get("messages", []))
    if not any(message.get("role") == "assistant" for message in messages):
        return None
    if options.format == "raw":
        records = _raw_messages(messages)
    else:
        try:
            records = _chat_messages(messages, options)
        except _DropSample:
            return None
    if options.add_train_key:
        for message in records:
            message["train"] = message["role"] == "assistant"
    record: dict = {"messages": records, "instance_id": instance_id}
    if options.include_tool_json:
        record["tool_json"] = copy.deepcopy(BASH_TOOL_JSON)
    return record


def records_from_trajectories(items: Iterable[tuple[str, dict]], options: PostprocessOptions) -> list[dict]:
    """Records for (instance_id, trajectory) pairs, dropped ones skipped, sorted by instance_id for stable output."""
    records = (trajectory_to_record(trajectory, instance_id, options) for instance_id, trajectory in items)
    return sorted((record for record in records if record is not None), key=lambda record: record["instance_id"])
