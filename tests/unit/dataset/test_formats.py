"""Postprocess: mini-swe-agent trajectories (tool-call and text mode, hand-built and real) to SFT records."""

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from sera_ops import prompts
from sera_ops.dataset.formats import (
    BASH_TOOL_JSON,
    HERMES_SYSTEM_PROMPT,
    XML_SYSTEM_PROMPT,
    PostprocessOptions,
    records_from_trajectories,
    trajectory_to_record,
)
from sera_ops.rollouts.teacher import AgentModel
from sera_ops.settings import ModelServer

SECRET = "sk-do-not-leak-123"
TASK = "<pr_description>\nThe greeting says Helo.\n</pr_description>"


def _observation(output: str, returncode: int = 0) -> str:
    return f"<returncode>{returncode}</returncode>\n<output>\n{output}</output>"


def _info(exit_status: str = "Submitted") -> dict:
    return {
        "model_stats": {"instance_cost": 0.0, "api_calls": 3},
        "config": {"model": {"model_name": "teacher", "model_kwargs": {"api_key": SECRET}}},
        "mini_version": "2.4.6",
        "exit_status": exit_status,
        "submission": "diff --git a/hello.py b/hello.py\n",
    }


def _tool_assistant(content: str | None, *commands: str, turn: int = 0) -> dict:
    ids = [f"call_{turn}_{index}" for index in range(len(commands))]
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "bash", "arguments": json.dumps({"command": c})}}
            for call_id, c in zip(ids, commands, strict=True)
        ],
        "function_call": None,
        "provider_specific_fields": {},
        "extra": {
            "actions": [{"command": c, "tool_call_id": call_id} for call_id, c in zip(ids, commands, strict=True)],
            "response": {"usage": {"prompt_tokens": 10}},
            "cost": 0.0,
        },
    }


def _tool_result(call_id: str, output: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": _observation(output), "extra": {"returncode": 0}}


def _exit(status: str = "Submitted") -> dict:
    return {"role": "exit", "content": "", "extra": {"exit_status": status, "submission": ""}}


def tool_mode_trajectory(exit_status: str = "Submitted") -> dict:
    """system, task, (assistant, tool) x2, submit call without response, exit: as `DefaultAgent` saves it."""
    return {
        "info": _info(exit_status),
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that can interact with a computer."},
            {"role": "user", "content": TASK},
            _tool_assistant("Let me look at the files.", "ls -la", turn=0),
            _tool_result("call_0_0", "hello.py\n"),
            _tool_assistant("Fix the typo.", "sed -i 's/Helo/Hello/' hello.py", turn=1),
            _tool_result("call_1_0", ""),
            _tool_assistant(None, "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff", turn=2),
            _exit(exit_status),
        ],
        "trajectory_format": "mini-swe-agent-1.1",
    }


def _text_assistant(thought: str, command: str) -> dict:
    return {
        "role": "assistant",
        "content": f"THOUGHT: {thought}\n\n```mswea_bash_command\n{command}\n```",
        "extra": {"actions": [{"command": command}], "cost": 0.0},
    }


def _text_observation(output: str) -> dict:
    return {"role": "user", "content": _observation(output), "extra": {"raw_output": output, "returncode": 0}}


FORMAT_ERROR = "Your last reply could not be carried out: Expected exactly 1 action, found 0."
BAD_REPLY = "I would rather chat than run a command."


def _format_error(text: str = FORMAT_ERROR) -> dict:
    """The only trace mini-swe-agent 2.4.6 leaves of a reply without exactly one action (text mode): a user turn."""
    return {"role": "user", "content": text,
            "extra": {"interrupt_type": "FormatError", "n_actions": 0, "model_response": BAD_REPLY}}


def _tool_format_error() -> dict:
    """Tool-call mode: `parse_toolcall_actions`'s FormatError message as `AgentModel` raises it (bad reply in extra)."""
    return {"role": "user", "content": "Your last reply could not be carried out: No tool calls found in the response.",
            "extra": {"interrupt_type": "FormatError", "cost": 0.0, "raw_content": BAD_REPLY}}


def text_mode_trajectory() -> dict:
    """Text mode with a format error right after the task and another after an observation."""
    return {
        "info": _info(),
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": TASK},
            _format_error(),
            _text_assistant("List the files.", "ls -la"),
            _text_observation("hello.py\n"),
            _format_error(),
            _text_assistant("Fix it.", "sed -i 's/Helo/Hello/' hello.py"),
            _text_observation(""),
            _text_assistant("Submit.", "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff"),
            _exit(),
        ],
    }


def _tool_call_commands(content: str) -> list[str]:
    calls = [json.loads(block) for block in re.findall(r"<tool_call>\n(.*?)\n</tool_call>", content, re.DOTALL)]
    assert all(call["name"] == "bash" and set(call["arguments"]) == {"command"} for call in calls)
    return [call["arguments"]["command"] for call in calls]


def _tool_call_commands_block(command: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "bash", "arguments": {"command": command}}) + "\n</tool_call>"


def _assert_alternating(messages: list[dict]) -> None:
    roles = [message["role"] for message in messages]
    assert roles[:2] == ["system", "user"]
    assert roles[2::2] == ["assistant"] * len(roles[2::2])
    assert roles[3::2] == ["user"] * len(roles[3::2])


def _hermes(**overrides) -> PostprocessOptions:
    return PostprocessOptions(**({"reformat": None} | overrides))


def test_tool_mode_hermes_record_shape():
    record = trajectory_to_record(tool_mode_trajectory(), "acme__hello-1", _hermes())
    messages = record["messages"]
    _assert_alternating(messages)
    assert record["instance_id"] == "acme__hello-1"
    assert record["tool_json"] == BASH_TOOL_JSON
    assert all(set(message) == {"role", "content", "train"} for message in messages)
    assert [message["train"] for message in messages] == [message["role"] == "assistant" for message in messages]
    assert messages[0]["content"] == HERMES_SYSTEM_PROMPT
    assert messages[1]["content"] == TASK
    assert messages[2]["content"].startswith("Let me look at the files.\n\n<tool_call>\n")
    assert [_tool_call_commands(m["content"]) for m in messages if m["role"] == "assistant"] == [
        ["ls -la"],
        ["sed -i 's/Helo/Hello/' hello.py"],
        ["echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff"],
    ]
    assert messages[3]["content"] == "<tool_response>\n" + _observation("hello.py\n") + "\n</tool_response>"
    assert messages[-1]["role"] == "assistant", "the final submit call has no response and no exit turn follows"
    assert messages[-1]["content"].startswith("<tool_call>"), "null content leaves no stray blank lines"


def test_hermes_system_prompt_lists_the_tool_schema_and_call_format():
    assert f"<tools>\n{json.dumps(BASH_TOOL_JSON[0])}\n</tools>" in HERMES_SYSTEM_PROMPT
    assert "<tool_call>" in HERMES_SYSTEM_PROMPT and "# Tools" in HERMES_SYSTEM_PROMPT
    description = BASH_TOOL_JSON[0]["function"]["description"]
    assert "---- BEGIN FUNCTION #1: bash ----" in XML_SYSTEM_PROMPT
    assert "---- END FUNCTION #1 ----" in XML_SYSTEM_PROMPT
    assert description in XML_SYSTEM_PROMPT
    assert "command (string, required)" in XML_SYSTEM_PROMPT


def test_text_mode_hermes_wraps_observations_and_leaves_format_errors_out():
    record = trajectory_to_record(text_mode_trajectory(), "t-1", _hermes())
    messages = record["messages"]
    _assert_alternating(messages)
    contents = [(message["role"], message["content"]) for message in messages]
    assert contents[1] == ("user", TASK)
    assert contents[2] == ("assistant", "THOUGHT: List the files.\n\n" + _tool_call_commands_block("ls -la"))
    assert contents[3] == ("user", "<tool_response>\n" + _observation("hello.py\n") + "\n</tool_response>")
    fix = _tool_call_commands_block("sed -i 's/Helo/Hello/' hello.py")
    assert contents[4] == ("assistant", f"THOUGHT: Fix it.\n\n{fix}"), "the reply after a format error is kept"
    assert all("mswea_bash_command" not in content for _, content in contents)
    assert len([role for role, _ in contents if role == "assistant"]) == 3


def tool_mode_trajectory_with_format_errors() -> dict:
    """Tool-call mode with a format error before the first reply that parsed and another after an observation."""
    trajectory = tool_mode_trajectory()
    messages = trajectory["messages"]
    error = _tool_format_error()
    trajectory["messages"] = messages[:2] + [error] + messages[2:4] + [error] + messages[4:]
    return trajectory


@pytest.mark.parametrize("output_format", ["hermes", "xml", "raw"])
@pytest.mark.parametrize("trajectory", [tool_mode_trajectory_with_format_errors(), text_mode_trajectory()],
                         ids=["toolcall", "text"])
def test_format_errors_and_bad_replies_never_reach_a_record(trajectory, output_format):
    record = trajectory_to_record(trajectory, "x", PostprocessOptions(format=output_format))
    messages = record["messages"]
    if output_format == "raw":
        observation_role = "tool" if "tool_calls" in messages[2] else "user"
        assert [m["role"] for m in messages] == ["system", "user"] + ["assistant", observation_role] * 2 + ["assistant"]
    else:
        _assert_alternating(messages)
    text = json.dumps(record)
    assert "could not be carried out" not in text and BAD_REPLY not in text
    assert [m["train"] for m in messages] == [m["role"] == "assistant" for m in messages]
    assert sum(m["train"] for m in messages) == 3, "the replies that parsed are trained"


def test_a_bad_reply_recorded_as_a_turn_is_left_out_with_its_correction():
    trajectory = tool_mode_trajectory()
    bad = {"role": "assistant", "content": BAD_REPLY, "extra": {"actions": []}}
    trajectory["messages"][4:4] = [bad, _tool_format_error()]
    for options in (_hermes(), PostprocessOptions(), PostprocessOptions(format="raw")):
        record = trajectory_to_record(trajectory, "x", options)
        assert BAD_REPLY not in json.dumps(record)
        assert [m["role"] for m in record["messages"]].count("assistant") == 3


def test_several_calls_in_one_turn_share_one_observation_message():
    trajectory = tool_mode_trajectory()
    trajectory["messages"][2:4] = [
        _tool_assistant("Two looks.", "ls", "cat hello.py", turn=9),
        _tool_result("call_9_0", "hello.py\n"),
        _tool_result("call_9_1", "print('Helo')\n"),
    ]
    messages = trajectory_to_record(trajectory, "x", _hermes())["messages"]
    _assert_alternating(messages)
    assert _tool_call_commands(messages[2]["content"]) == ["ls", "cat hello.py"]
    assert messages[3]["content"].count("<tool_response>") == 2
    assert "print('Helo')" in messages[3]["content"]


def test_xml_format_renders_function_blocks_and_plain_observations():
    record = trajectory_to_record(tool_mode_trajectory(), "x", PostprocessOptions(format="xml"))
    messages = record["messages"]
    _assert_alternating(messages)
    assert messages[0]["content"] == XML_SYSTEM_PROMPT
    assert messages[2]["content"] == (
        "Let me look at the files.\n\n<function=bash>\n<parameter=command>\nls -la\n</parameter>\n</function>"
    )
    assert messages[3]["content"] == _observation("hello.py\n")
    assert not any("<tool_call>" in m["content"] or "<tool_response>" in m["content"] for m in messages[1:])


def test_raw_format_keeps_harness_messages_without_extra_or_exit():
    trajectory = tool_mode_trajectory()
    record = trajectory_to_record(trajectory, "x", PostprocessOptions(format="raw", add_think=True))
    messages = record["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert messages[0]["content"] == trajectory["messages"][0]["content"]
    assert all("extra" not in message for message in messages)
    assert messages[2]["tool_calls"] == trajectory["messages"][2]["tool_calls"]
    assert messages[2]["content"] == "Let me look at the files.", "add_think is ignored in raw"
    assert messages[3]["tool_call_id"] == "call_0_0"
    assert messages[-1]["content"] == ""
    assert [m["train"] for m in messages] == [m["role"] == "assistant" for m in messages]
    assert "extra" in trajectory["messages"][2], "the input trajectory is not mutated"


@pytest.mark.parametrize("output_format", ["hermes", "xml", "raw"])
def test_api_key_from_info_config_never_reaches_the_record(output_format):
    record = trajectory_to_record(tool_mode_trajectory(), "x", PostprocessOptions(format=output_format))
    assert SECRET not in json.dumps(record)


@pytest.mark.parametrize(
    ("exit_status", "kept"),
    [("Submitted", True), ("submitted", True), ("LimitsExceeded", False), ("Submitted (exit_cost)", False)],
)
def test_enforce_submit_keeps_only_submitted(exit_status, kept):
    record = trajectory_to_record(tool_mode_trajectory(exit_status), "x", PostprocessOptions())
    assert (record is not None) == kept


def test_enforce_submit_off_keeps_unfinished_trajectories():
    options = PostprocessOptions(enforce_submit=False)
    assert trajectory_to_record(tool_mode_trajectory("LimitsExceeded"), "x", options) is not None


def test_trajectory_without_assistant_turn_is_dropped():
    trajectory = tool_mode_trajectory()
    trajectory["messages"] = trajectory["messages"][:2] + [_format_error(), _exit()]
    assert trajectory_to_record(trajectory, "x", PostprocessOptions()) is None
    trajectory["messages"][2:2] = [{"role": "assistant", "content": BAD_REPLY, "extra": {"actions": []}}]
    assert trajectory_to_record(trajectory, "x", PostprocessOptions(reformat=None)) is None, "only a bad reply"


def test_optional_keys_can_be_left_out():
    record = trajectory_to_record(
        tool_mode_trajectory(), "x", PostprocessOptions(add_train_key=False, include_tool_json=False)
    )
    assert "tool_json" not in record
    assert all("train" not in message for message in record["messages"])


def test_options_reject_unknown_fields():
    with pytest.raises(ValidationError):
        PostprocessOptions(reformat_assistant_message="keep_only_think")


def test_add_think_wraps_the_commentary():
    messages = trajectory_to_record(tool_mode_trajectory(), "x", _hermes(add_think=True))["messages"]
    assert messages[2]["content"] == "<think>\nLet me look at the files.\n</think>\n\n" + _tool_call_commands_block(
        "ls -la"
    )
    xml = trajectory_to_record(tool_mode_trajectory(), "x", PostprocessOptions(format="xml", add_think=True))
    assert xml["messages"][2]["content"].startswith("<think>\nLet me look at the files.\n</think>\n\n<function=bash>")
    already_thinking = _with_first_commentary("<think>List files.</think>\nLet me look.")
    assert _first_assistant(already_thinking, add_think=True, reformat=None).startswith(
        "<think>List files.</think>\nLet me look.\n\n"
    )


def _with_first_commentary(content: str) -> dict:
    trajectory = tool_mode_trajectory()
    trajectory["messages"][2]["content"] = content
    return trajectory


def _first_assistant(trajectory: dict, **options) -> str | None:
    record = trajectory_to_record(trajectory, "x", PostprocessOptions(**options))
    return None if record is None else record["messages"][2]["content"]


def test_reformat_keep_only_think():
    ls_call = _tool_call_commands_block("ls -la")
    both = _with_first_commentary("<think>  I should list files. </think>\nLet me look.")
    assert _first_assistant(both) == f"<think>\nI should list files.\n</think>\n\n{ls_call}"
    commentary_only = _with_first_commentary("Let me look.")
    assert _first_assistant(commentary_only) == f"<think>\nLet me look.\n</think>\n\n{ls_call}"
    empty_think = _with_first_commentary("<think>\n \n</think>Let me look.")
    assert _first_assistant(empty_think) == f"<think>\nLet me look.\n</think>\n\n{ls_call}"
    record = trajectory_to_record(tool_mode_trajectory(), "x", PostprocessOptions())
    assert record["messages"][-1]["content"] == "<think>\n\n</think>\n\n" + _tool_call_commands_block(
        "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git diff"
    )


def test_reformat_keep_only_non_think():
    ls_call = _tool_call_commands_block("ls -la")
    both = _with_first_commentary("<think>I should list files.</think>\nLet me look.")
    assert _first_assistant(both, reformat="keep_only_non_think") == f"<think>\nLet me look.\n</think>\n\n{ls_call}"
    think_only = _with_first_commentary("<think>I should list files.</think>")
    expected = f"<think>\nI should list files.\n</think>\n\n{ls_call}"
    assert _first_assistant(think_only, reformat="keep_only_non_think") == expected


def test_reformat_applies_to_hermes_only():
    both = _with_first_commentary("<think>a</think><think>b</think>Let me look.")
    assert _first_assistant(both, format="xml").startswith("<think>a</think><think>b</think>Let me look.\n\n")


def test_think_tags_in_tool_output_or_command_do_not_drop_the_sample():
    trajectory = tool_mode_trajectory()
    trajectory["messages"][3]["content"] = _observation("<think>\n<think>one</think>\n")
    trajectory["messages"][4]["extra"]["actions"][0]["command"] = "grep -n '<think>' parser.py"
    record = trajectory_to_record(trajectory, "x", PostprocessOptions())
    assert record is not None
    assert "<think>\n<think>one</think>" in record["messages"][3]["content"]
    assert _tool_call_commands(record["messages"][4]["content"]) == ["grep -n '<think>' parser.py"]


@pytest.mark.parametrize(
    "content",
    ["<think>a</think>\n<think>b</think>", "<think>unclosed", "thinking done</think>", "Intro <think>late</think>"],
)
def test_malformed_think_blocks_in_an_assistant_message_drop_the_sample(content):
    assert _first_assistant(_with_first_commentary(content)) is None
    assert _first_assistant(_with_first_commentary(content), reformat=None) is not None


def test_assistant_turn_without_actions_is_plain_text_or_dropped_when_reformatting():
    trajectory = tool_mode_trajectory()
    trajectory["messages"][2] = {"role": "assistant", "content": "I think we are done.", "extra": {"actions": []}}
    assert _first_assistant(trajectory, reformat=None) == "I think we are done."
    assert _first_assistant(trajectory) is None


def test_records_from_trajectories_sorts_and_skips_dropped():
    items = [
        ("b-2", tool_mode_trajectory()),
        ("c-3", tool_mode_trajectory("LimitsExceeded")),
        ("a-1", text_mode_trajectory()),
    ]
    records = records_from_trajectories(items, PostprocessOptions())
    assert [record["instance_id"] for record in records] == ["a-1", "b-2"]


def _run_real_agent(tmp_path: Path, tool_mode: bool) -> dict:
    """Run mini-swe-agent's DefaultAgent with a scripted model in a local shell and load the saved trajectory."""
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments.local import LocalEnvironment
    from minisweagent.models.test_models import (
        DeterministicModel,
        DeterministicToolcallModel,
        make_output,
        make_toolcall_output,
    )

    script = [
        ("Say hello.", "echo hello"),
        ("Say bye.", "echo bye"),
        ("Done.", "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"),
    ]
    if tool_mode:
        outputs = []
        for index, (thought, command) in enumerate(script):
            call = {
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": "bash", "arguments": json.dumps({"command": command})},
            }
            outputs.append(
                make_toolcall_output(thought, [call], [{"command": command, "tool_call_id": f"call_{index}"}])
            )
        model = DeterministicToolcallModel(outputs=outputs)
    else:
        model = DeterministicModel(
            outputs=[
                make_output(f"THOUGHT: {thought}\n\n```mswea_bash_command\n{command}\n```", [{"command": command}])
                for thought, command in script
            ]
        )
    output_path = tmp_path / "inst.traj.json"
    agent = DefaultAgent(
        model,
        LocalEnvironment(cwd=str(tmp_path), timeout=10),
        system_template="You are a test agent.",
        instance_template="Task: {{task}}",
        step_limit=10,
        cost_limit=0,
        output_path=output_path,
    )
    assert agent.run(task="say hello then submit")["exit_status"] == "Submitted"
    return json.loads(output_path.read_text())


@pytest.mark.parametrize("tool_mode", [True, False], ids=["toolcall", "text"])
def test_real_default_agent_trajectory(tmp_path, tool_mode):
    trajectory = _run_real_agent(tmp_path, tool_mode)
    observation_role = "tool" if tool_mode else "user"
    assert [m["role"] for m in trajectory["messages"]] == [
        "system",
        "user",
        "assistant",
        observation_role,
        "assistant",
        observation_role,
        "assistant",
        "exit",
    ]
    record = trajectory_to_record(trajectory, "inst", PostprocessOptions())
    messages = record["messages"]
    _assert_alternating(messages)
    assert [m["train"] for m in messages] == [m["role"] == "assistant" for m in messages]
    assert record["tool_json"] == BASH_TOOL_JSON
    assert messages[1]["content"] == "Task: say hello then submit"
    assistant_turns = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [_tool_call_commands(content) for content in assistant_turns] == [
        ["echo hello"],
        ["echo bye"],
        ["echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"],
    ]
    assert all(content.startswith("<think>\n") for content in assistant_turns)
    assert messages[3]["content"] == "<tool_response>\n" + _observation("hello\n") + "\n</tool_response>"

    raw = trajectory_to_record(trajectory, "inst", PostprocessOptions(format="raw"))["messages"]
    assert all("extra" not in message for message in raw)
    assert ("tool_calls" in raw[2]) == tool_mode


REASONING = "The report is vague; list the files first."


def _with_reasoning(content: str | None = "Let me look at the files.") -> dict:
    """Tool-call mode as `AgentModel` records a reply from a server with a reasoning parser."""
    trajectory = tool_mode_trajectory()
    trajectory["messages"][2] |= {"content": content, "reasoning_content": f"\n{REASONING}\n"}
    return trajectory


LS_CALL = _tool_call_commands_block("ls -la")
XML_LS_CALL = "<function=bash>\n<parameter=command>\nls -la\n</parameter>\n</function>"
THINK = f"<think>\n{REASONING}\n</think>"


@pytest.mark.parametrize(("options", "content", "expected"), [
    ({"reformat": None}, "Let me look at the files.", f"Let me look at the files.\n\n{LS_CALL}"),
    ({"reformat": None, "add_think": True}, "Let me look at the files.",
     f"{THINK}\n\nLet me look at the files.\n\n{LS_CALL}"),
    ({}, "Let me look at the files.", f"{THINK}\n\n{LS_CALL}"),
    ({}, None, f"{THINK}\n\n{LS_CALL}"),
    ({"reformat": "keep_only_non_think"}, "Let me look at the files.",
     f"<think>\nLet me look at the files.\n</think>\n\n{LS_CALL}"),
    ({"reformat": "keep_only_non_think"}, "", f"{THINK}\n\n{LS_CALL}"),
    ({"format": "xml"}, "Let me look at the files.", f"Let me look at the files.\n\n{XML_LS_CALL}"),
    ({"format": "xml", "add_think": True}, "Let me look at the files.",
     f"{THINK}\n\nLet me look at the files.\n\n{XML_LS_CALL}"),
], ids=["plain", "add_think", "keep_only_think", "keep_only_think-no-content", "keep_only_non_think",
        "keep_only_non_think-no-content", "xml", "xml-add_think"])
def test_reasoning_content_is_the_think_block_when_options_ask_for_one(options, content, expected):
    assert _first_assistant(_with_reasoning(content), **options) == expected


def test_raw_format_keeps_reasoning_content_as_a_field():
    messages = trajectory_to_record(_with_reasoning(), "x", PostprocessOptions(format="raw"))["messages"]
    assert messages[2]["reasoning_content"] == f"\n{REASONING}\n"
    assert messages[2]["content"] == "Let me look at the files."


@contextmanager
def chat_server(replies: list[dict]) -> Iterator[tuple[str, list[dict]]]:
    """A stdlib OpenAI-compatible server on loopback: each chat completion gets the next scripted message."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            message = replies[len(requests) - 1]
            payload = json.dumps({
                "id": f"chatcmpl-{len(requests)}", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _reply(tool_mode: bool, reasoning: str, content: str, *commands: str, key: str = "reasoning_content") -> dict:
    """An assistant message as vLLM/SGLang send it with a reasoning parser, in tool-call or text mode."""
    if tool_mode:
        calls = [{"id": f"call_{index}", "type": "function",
                  "function": {"name": "bash", "arguments": json.dumps({"command": command})}}
                 for index, command in enumerate(commands)]
        return {"role": "assistant", "content": content, key: reasoning, **({"tool_calls": calls} if calls else {})}
    blocks = "".join(f"\n\n```mswea_bash_command\n{command}\n```" for command in commands)
    return {"role": "assistant", "content": content + blocks, key: reasoning}


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
@pytest.mark.parametrize("tool_mode", [True, False], ids=["toolcall", "text"])
def test_agent_model_keeps_the_reasoning_and_postprocess_drops_its_format_errors(tmp_path, tool_mode, key):
    """The real agent loop with `AgentModel` against an OpenAI-compatible server: a bad reply (no tool call, or two
    command blocks), then two good ones, each with its reasoning apart from the content."""
    from minisweagent.agents.default import DefaultAgent
    from minisweagent.environments.local import LocalEnvironment

    replies = [
        _reply(tool_mode, "No idea yet.", BAD_REPLY, *([] if tool_mode else ["ls", "pwd"]), key=key),
        _reply(tool_mode, REASONING, "Let me look.", "ls", key=key),
        _reply(tool_mode, "Nothing to fix; submit.", "Done.", "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT", key=key),
    ]
    templates = prompts.agent_templates()
    with chat_server(replies) as (url, requests):
        model = AgentModel(ModelServer(base_url=url, model="reasoner", tool_calls=tool_mode), None, temperature=0.0,
                           max_tokens=None, observation_template=templates["observation_template"],
                           format_error_template=templates["format_error_template"])
        output_path = tmp_path / "inst.traj.json"
        agent = DefaultAgent(model, LocalEnvironment(cwd=str(tmp_path), timeout=10), system_template="You are a test.",
                             instance_template="Task: {{task}}", step_limit=10, cost_limit=0, output_path=output_path)
        assert agent.run(task="look around then submit")["exit_status"] == "Submitted"
    trajectory = json.loads(output_path.read_text())
    assistants = [m for m in trajectory["messages"] if m["role"] == "assistant"]
    assert [m["reasoning_content"] for m in assistants] == [REASONING, "Nothing to fix; submit."]
    assert trajectory["messages"][2]["extra"]["interrupt_type"] == "FormatError"
    assert all("reasoning_content" not in m for request in requests for m in request["messages"]), \
        "earlier reasoning is not sent back to the teacher"

    record = trajectory_to_record(trajectory, "inst", PostprocessOptions())
    messages = record["messages"]
    _assert_alternating(messages)
    assert [m["content"] for m in messages if m["train"]] == [
        f"{THINK}\n\n{_tool_call_commands_block('ls')}",
        "<think>\nNothing to fix; submit.\n</think>\n\n"
        + _tool_call_commands_block("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"),
    ]
    assert "could not be carried out" not in json.dumps(record) and BAD_REPLY not in json.dumps(record)
