"""The scripted teacher over real HTTP on loopback, driving the real mini-swe-agent loop in a real git repository."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
from minisweagent.agents.default import DefaultAgent
from minisweagent.config import get_config_from_spec
from minisweagent.environments.local import LocalEnvironment
from minisweagent.exceptions import FormatError
from minisweagent.models.utils.actions_text import format_observation_messages, parse_regex_actions
from minisweagent.models.utils.actions_toolcall import (
    BASH_TOOL,
    format_toolcall_observation_messages,
    parse_toolcall_actions,
)
from openai import OpenAI
from pydantic import BaseModel

from sera_ops.prompts import (
    JUDGE_SYSTEM,
    WRITER_SYSTEM,
    agent_templates,
    extract_output,
    render_judge,
    render_rollout_one,
    render_synth_pr,
)
from sera_ops.testing.scripted_teacher import ScriptedTeacher, ScriptedTeacherConfig, rollout_two_mode
from sera_ops.verify import changed_lines, line_recall
from tests.support import ROOT

MODULE = "sample/shapes.py"
SAMPLE = '''"""A small module with one function for each kind of edit the scripted teacher makes."""


def scale(values, factor):
    """Multiply every value by factor, rounded."""
    total = [value * factor for value in values]
    return [round(item, 2) for item in total]


def exceeds(value, limit):
    return value > limit


class Parser:
    def __init__(self, separator=","):
        self.separator = separator

    def parse(self, text):
        if not text:
            return []
        return text.split(self.separator)


def log_event(name, events):
    """Record an event name."""
    events.append(name)
'''
ROLLOUT_ONE_LINES = {  # one behavioural kind applies to each (the guard only where none does)
    "scale": ["-    return [round(item, 2) for item in total]", "+    return [round(item, 3) for item in total]"],
    "exceeds": ["-    return value > limit", "+    return value <= limit"],
    "Parser.parse": ["-        if not text:", "+        if text:"],
    "log_event": ["+    if name is None:", '+        raise ValueError("name must not be None")'],
}
KINDS = {"scale": "constant", "exceeds": "compare", "Parser.parse": "negate", "log_event": "guard"}
PROBES = {  # (call, result before the edit, result after rollout one's edit)
    "scale": (lambda module: module.scale([1.234], 1), [1.23], [1.234]),
    "exceeds": (lambda module: module.exceeds(3, 3), False, True),
    "Parser.parse": (lambda module: module.Parser().parse("a,b"), ["a", "b"], []),
    "log_event": (lambda module: module.log_event(None, []), None, "ValueError"),
}
SYMPTOMS = {"scale": "off by one", "exceeds": "as if a comparison were the wrong way round",
            "Parser.parse": "takes the wrong branch", "log_event": "with `name` set to None does not fail up front"}
SUBMIT = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
DEMO_ISSUE = "### Bug report\n\nWhen I call the thing it explodes. Expected it to work.\n\nThanks!"


class OpenAIClientModelConfig(BaseModel):
    model_name: str
    base_url: str
    api_key: str = "unused"
    use_tools: bool = True
    action_regex: str = r"```mswea_bash_command\s*\n(.*?)\n```"
    format_error_template: str = "{{ error }}"
    observation_template: str


class OpenAIClientModel:
    """mini-swe-agent model over the plain openai client (no litellm), as in agent-and-models.md."""

    def __init__(self, **kwargs: Any) -> None:
        self.config = OpenAIClientModelConfig(**kwargs)
        self.client = OpenAI(base_url=self.config.base_url, api_key=self.config.api_key, max_retries=0, timeout=10)

    def query(self, messages: list[dict], **kwargs: Any) -> dict:
        api_messages = [{k: v for k, v in m.items() if k != "extra"} for m in messages]
        tools = {"tools": [BASH_TOOL]} if self.config.use_tools else {}
        response = self.client.chat.completions.create(model=self.config.model_name, messages=api_messages, **tools)
        choice = response.choices[0]
        try:
            if self.config.use_tools:
                actions = parse_toolcall_actions(choice.message.tool_calls or [],
                                                 format_error_template=self.config.format_error_template)
            else:
                actions = parse_regex_actions(choice.message.content or "", action_regex=self.config.action_regex,
                                              format_error_template=self.config.format_error_template)
        except FormatError as error:
            error.messages[0]["extra"].update({"cost": 0.0})
            raise
        message = choice.message.model_dump(exclude_none=True)
        message["extra"] = {"actions": actions, "cost": 0.0, "timestamp": time.time()}
        return message

    def format_message(self, **kwargs: Any) -> dict:
        return kwargs

    def format_observation_messages(self, message: dict, outputs: list[dict], template_vars: dict | None = None):
        if self.config.use_tools:
            return format_toolcall_observation_messages(
                actions=message.get("extra", {}).get("actions", []), outputs=outputs,
                observation_template=self.config.observation_template, template_vars=template_vars)
        return format_observation_messages(outputs, observation_template=self.config.observation_template,
                                           template_vars=template_vars)

    def get_template_vars(self, **kwargs: Any) -> dict:
        return self.config.model_dump()

    def serialize(self) -> dict:
        return {}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    (path / "sample").mkdir(parents=True)
    (path / MODULE).write_text(SAMPLE)
    git(path, "init", "-q")
    git(path, "add", ".")
    git(path, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "init")
    return path


def run_episode(base_url: str, repo: Path, task: str, *, use_tools: bool = True, json_observations: bool = False
                ) -> tuple[dict, list[dict], str]:
    """One mini-swe-agent episode against the teacher; returns (info, messages, git diff of the repo)."""
    templates = agent_templates()
    if json_observations:  # mini-swe-agent's own mini.yaml renders observations as JSON
        templates = templates | {"observation_template": get_config_from_spec("mini.yaml")["model"][
            "observation_template"]}
    model = OpenAIClientModel(model_name="scripted-teacher", base_url=base_url, use_tools=use_tools,
                              observation_template=templates["observation_template"])
    environment = LocalEnvironment(cwd=str(repo), timeout=30,  # the venv's python3 first: no pyenv shim per step
                                   env={"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    agent = DefaultAgent(model, environment,
                         system_template=templates["system_template"],
                         instance_template=templates["instance_template"], step_limit=12, cost_limit=0)
    info = agent.run(task=task)
    return info, agent.messages, git(repo, "diff")


def agent_steps(messages: list[dict]) -> list[dict]:
    steps = []
    for index, message in enumerate(messages):
        if message["role"] == "assistant":
            following = messages[index + 1] if index + 1 < len(messages) else {}
            observation = following.get("content", "") if following.get("role") in ("tool", "user") else ""
            steps.append({"action": message["extra"]["actions"][0]["command"], "observation": observation})
    return steps


def load_sample(repo: Path):
    source = (repo / MODULE).read_text()
    compile(source, MODULE, "exec")
    spec = importlib.util.spec_from_file_location(f"shapes_{abs(hash(str(repo)))}", repo / MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe(repo: Path, start_fn: str) -> Any:
    """What the start function gives for its probe input now: its result, or the name of the exception it raised."""
    try:
        return PROBES[start_fn][0](load_sample(repo))
    except Exception as error:
        return type(error).__name__


def client(teacher: ScriptedTeacher, **kwargs: Any) -> OpenAI:
    return OpenAI(base_url=teacher.url, api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


@pytest.mark.parametrize(("start_fn", "use_tools", "json_observations"), [
    ("scale", True, False), ("exceeds", True, False), ("Parser.parse", False, False), ("log_event", True, True)])
def test_rollout_one_changes_what_the_start_function_does(repo: Path, start_fn: str, use_tools: bool,
                                                          json_observations: bool):
    assert probe(repo, start_fn) == PROBES[start_fn][1]
    with ScriptedTeacher() as teacher:
        task = render_rollout_one(0, start_fn, MODULE)
        info, messages, diff = run_episode(teacher.url, repo, task, use_tools=use_tools,
                                           json_observations=json_observations)
        stats = teacher.stats
    assert info["exit_status"] == "Submitted"
    assert changed_lines(diff) == ROLLOUT_ONE_LINES[start_fn]
    assert probe(repo, start_fn) == PROBES[start_fn][2]
    commands = [step["action"] for step in agent_steps(messages)]
    assert commands[0].endswith(f"# locate {start_fn} in {MODULE}")
    assert re.search(rf"^# rewrite {MODULE} line \d+ \({re.escape(start_fn)}\): {KINDS[start_fn]}\b", commands[2],
                     re.MULTILINE)
    assert commands[-2:] == ["git diff", "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"]
    assert stats["agent"] == len(commands) == 5
    observation_role = "tool" if use_tools else "user"
    assert [m["role"] for m in messages[:4]] == ["system", "user", "assistant", observation_role]


def synthetic_pr(teacher: ScriptedTeacher, messages: list[dict], patch: str, reveal_location: bool = False) -> str:
    prompt = render_synth_pr(agent_steps(messages), patch, DEMO_ISSUE, reveal_location)
    reply = client(teacher).chat.completions.create(
        model="scripted-teacher", messages=[{"role": "system", "content": WRITER_SYSTEM},
                                            {"role": "user", "content": prompt}])
    pr = extract_output(reply.choices[0].message.content)
    assert pr is not None
    return pr


@pytest.mark.parametrize("start_fn", ["scale", "exceeds", "Parser.parse", "log_event"])
@pytest.mark.parametrize("mode", ["full", "partial", "none"])
def test_rollout_two_reproduces_rollout_one_by_mode(repo: Path, start_fn: str, mode: str):
    with ScriptedTeacher() as teacher:
        _, messages, patch_one = run_episode(teacher.url, repo, render_rollout_one(7, start_fn, MODULE))
        pr = synthetic_pr(teacher, messages, patch_one)
        located = synthetic_pr(teacher, messages, patch_one, reveal_location=True)
    # As in SERA, the PR describes the symptom and leaves the agent to find the file (synth.reveal_location: false).
    assert f"`{start_fn}`" in pr and MODULE not in pr and SYMPTOMS[start_fn] in pr
    assert f"`{start_fn}` in `{MODULE}`" in located
    assert pr.splitlines()[2] == "### Description"  # echoes the demonstration's heading level
    git(repo, "checkout", "-q", "--", ".")

    with ScriptedTeacher(ScriptedTeacherConfig(rollout_two_modes={mode: 1.0})) as teacher:
        info, messages_two, patch_two = run_episode(teacher.url, repo, pr)
    assert info["exit_status"] == "Submitted"
    first_command = next(m for m in messages_two if m["role"] == "assistant")
    assert "grep -rnE" in json.dumps(first_command)  # rollout two searched the repository for the code
    recall = line_recall(patch_one, patch_two)
    if mode == "full":
        assert changed_lines(patch_two) == changed_lines(patch_one) and recall == 1.0
        assert probe(repo, start_fn) == PROBES[start_fn][2]
    elif mode == "partial":
        assert 0 < recall < 1 and probe(repo, start_fn) != PROBES[start_fn][1]
    else:
        assert patch_two == "" and recall == 0.0
        assert probe(repo, start_fn) == PROBES[start_fn][1]


def edit_note(teacher: ScriptedTeacher, start_fn: str, template: int) -> str:
    """The note on the edit command the teacher sends after reading `clamp`, whose body every kind of edit fits."""
    listing = "FUNCTION 1 4\ndef clamp(value, ceiling):\n    if value > ceiling + 1:\n        return ceiling\n" \
              "    return value\n"
    task = [{"role": "system", "content": "agent"},
            {"role": "user", "content": render_rollout_one(template, start_fn, MODULE)}]
    locate = agent_reply(teacher, task)
    show = agent_reply(teacher, task + tool_turn("c1", locate, 0, "1:def clamp(value, ceiling):\n"))
    command = agent_reply(teacher, task + tool_turn("c1", locate, 0, "1:def clamp(value, ceiling):\n")
                          + tool_turn("c2", show, 0, listing))
    note = re.search(r"^# rewrite .*$", command, re.MULTILINE)
    assert note, command
    return note.group(0)


def test_the_kind_of_edit_is_a_seeded_choice_per_function_and_attempt():
    with ScriptedTeacher() as teacher, ScriptedTeacher(ScriptedTeacherConfig(seed=1)) as other:
        notes = [edit_note(teacher, "clamp", template) for template in range(12)]
        assert notes == [edit_note(teacher, "clamp", template) for template in range(12)]
        assert notes != [edit_note(other, "clamp", template) for template in range(12)]
    assert {note.rsplit(": ", 1)[1] for note in notes} == {"compare", "constant", "negate"}


def test_writer_without_locate_note_gives_no_output_tags():
    with ScriptedTeacher() as teacher:
        prompt = render_synth_pr([{"action": "ls", "observation": "README"}], "", DEMO_ISSUE)
        reply = client(teacher).chat.completions.create(
            model="scripted-teacher", messages=[{"role": "system", "content": WRITER_SYSTEM},
                                                {"role": "user", "content": prompt}])
        assert extract_output(reply.choices[0].message.content) is None
        assert teacher.stats["writer"] == 1


def diff(path: str, hunk: str) -> str:
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n{hunk}"


PATCH = diff("x.py", "@@ -1 +1 @@\n-a = 1\n+a = 2\n")
NO_CODE_CHANGED = {  # a comment in a hunk that starts in a docstring; spacing, blank line; a file not Python
    "comment": diff("x.py", '@@ -3,3 +3,4 @@\n     more about f.\n     """\n+    # TODO: look at this again\n'
                            '     return a  # the answer\n'),
    "spacing": diff("x.py", "@@ -1,2 +1,3 @@\n-a = f(1,2)  # old\n+a  =  f( 1, 2 )  # new\n+\n b = 3\n"),
    "not python": diff("README.md", "@@ -1 +1 @@\n-Old words.\n+New words.\n"),
}
CODE_CHANGED = {
    "indentation": diff("x.py", "@@ -1,3 +1,3 @@\n if a:\n     b()\n-    c()\n+c()\n"),
    "in a docstring hunk": diff("x.py", '@@ -3,3 +3,3 @@\n     more about f.\n     """\n-    return a\n'
                                        "+    return b\n"),
}


def judge(teacher: ScriptedTeacher, patch: str, initial_prompt: str = "fix `f` in `x.py`") -> str | None:
    prompt = render_judge(initial_prompt, [{"action": "cat x.py", "observation": "a = 1"}], patch)
    reply = client(teacher).chat.completions.create(
        model="scripted-teacher", messages=[{"role": "system", "content": JUDGE_SYSTEM},
                                            {"role": "user", "content": prompt}])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens > 0
    return extract_output(reply.choices[0].message.content)


def test_judge_accepts_a_patch_refuses_an_empty_one_and_rejects_on_request():
    with ScriptedTeacher() as teacher:
        assert judge(teacher, PATCH) == "yes"
        assert judge(teacher, "") == "no"
        assert teacher.stats["judge"] == 2
    with ScriptedTeacher(ScriptedTeacherConfig(judge_reject_rate=1.0)) as teacher:
        assert judge(teacher, PATCH) == "no"


def test_judge_refuses_patches_that_change_no_code():
    with ScriptedTeacher() as teacher:
        assert {name: judge(teacher, patch) for name, patch in NO_CODE_CHANGED.items()} == dict.fromkeys(
            NO_CODE_CHANGED, "no")
        assert {name: judge(teacher, patch) for name, patch in CODE_CHANGED.items()} == dict.fromkeys(
            CODE_CHANGED, "yes")


def test_judge_rejects_first_attempts_on_request():
    first, second = (render_rollout_one(template, "f", "x.py") for template in (3, 8))
    with ScriptedTeacher(ScriptedTeacherConfig(judge_reject_first_attempts=1.0)) as teacher:
        assert judge(teacher, PATCH, first) == "no"
        assert judge(teacher, PATCH, second) == "yes"
        assert judge(teacher, PATCH, first) == "no"  # judged again, still the first attempt at `f`
        assert judge(teacher, PATCH, render_rollout_one(8, "g", "x.py")) == "no"  # the first attempt at `g`
        assert judge(teacher, PATCH) == "yes"  # not a rollout-one task


def test_api_key_is_required_when_configured():
    with ScriptedTeacher(ScriptedTeacherConfig(api_key="s3cret")) as teacher:
        with pytest.raises(openai.AuthenticationError):
            client(teacher, api_key="wrong").models.list()
        with pytest.raises(openai.AuthenticationError):
            judge_with_key(teacher, "wrong")
        assert [model.id for model in client(teacher, api_key="s3cret").models.list()] == ["scripted-teacher"]
        assert judge_with_key(teacher, "s3cret")
        assert "s3cret" not in repr(teacher.config)


def judge_with_key(teacher: ScriptedTeacher, key: str) -> str:
    reply = client(teacher, api_key=key).chat.completions.create(
        model="scripted-teacher", messages=[{"role": "user", "content": "hello"}])
    return reply.choices[0].message.content or ""


def test_error_rate_one_answers_every_request_with_429_or_500():
    with ScriptedTeacher(ScriptedTeacherConfig(error_rate=1.0)) as teacher:
        statuses = []
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as raised:
                judge(teacher, PATCH)
            statuses.append(raised.value.status_code)
            assert raised.value.body["message"]
        assert sorted(statuses) == [429, 500]
        assert teacher.stats["errors"] == 2 and teacher.stats["judge"] == 0


def test_stall_outlasts_a_short_client_timeout():
    with ScriptedTeacher(ScriptedTeacherConfig(stall_rate=1.0, stall_s=20)) as teacher:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client(teacher, timeout=0.3).chat.completions.create(
                model="scripted-teacher", messages=[{"role": "user", "content": "hi"}])
        assert teacher.stats["stalls"] == 1
    assert time.monotonic() - started < 5  # stop() released the stalled request


def http(url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_models_health_and_bad_requests():
    with ScriptedTeacher(ScriptedTeacherConfig(model="teacher-x")) as teacher:
        root = teacher.url.removesuffix("/v1")
        assert http(f"{root}/health") == (200, {"status": "ok"})
        status, models = http(f"{teacher.url}/models")
        assert status == 200 and [m["id"] for m in models["data"]] == ["teacher-x"]
        status, error = http(f"{teacher.url}/chat/completions", b"{not json")
        assert status == 400 and "JSON" in error["error"]["message"]
        status, error = http(f"{teacher.url}/chat/completions", json.dumps({"model": "teacher-x"}).encode())
        assert status == 400
        wrong_model = {"model": "other", "messages": [{"role": "user", "content": "hi"}]}
        assert http(f"{teacher.url}/chat/completions", json.dumps(wrong_model).encode())[0] == 404


def agent_reply(teacher: ScriptedTeacher, messages: list[dict]) -> str:
    reply = client(teacher).chat.completions.create(model="scripted-teacher", messages=messages, tools=[BASH_TOOL])
    assert reply.choices[0].finish_reason == "tool_calls"
    return json.loads(reply.choices[0].message.tool_calls[0].function.arguments)["command"]


def tool_turn(call_id: str, command: str, returncode: int, output: str) -> list[dict]:
    arguments = json.dumps({"command": command})
    call = {"id": call_id, "type": "function", "function": {"name": "bash", "arguments": arguments}}
    observation = f"<returncode>{returncode}</returncode>\n<output>\n{output}</output>"
    return [{"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call_id, "content": observation}]


def test_agent_adapts_to_failures_and_never_loops_forever():
    with ScriptedTeacher() as teacher:
        vague = [{"role": "system", "content": "agent"}, {"role": "user", "content": "Something is broken."}]
        assert agent_reply(teacher, vague) == "ls"
        assert agent_reply(teacher, vague + tool_turn("c1", "ls", 0, "README\n")) == SUBMIT

        task = [vague[0], {"role": "user", "content": render_rollout_one(0, "scale", MODULE)}]
        locate = agent_reply(teacher, task)
        assert locate.startswith("grep -nE") and locate.endswith(f"# locate scale in {MODULE}")
        assert agent_reply(teacher, task + tool_turn("c1", locate, 1, "")) == "ls"
        assert agent_reply(teacher, task + tool_turn("c1", locate, 0, "4:def scale(values, factor):\n")).startswith(
            "python3 - <<'EOF'")
        show_failed = tool_turn("c1", locate, 0, "4:def scale():\n") + tool_turn("c2", "python3 - <<'EOF'\n"
                                                                                 "# print the source of scale", 1, "")
        assert agent_reply(teacher, task + show_failed) == "git diff"
        assert agent_reply(teacher, task + tool_turn("c1", "true", 0, "") * 8) == SUBMIT


def test_mode_choice_is_deterministic_and_follows_the_weights():
    weights = {"full": 0.7, "partial": 0.2, "none": 0.1}
    config = ScriptedTeacherConfig(rollout_two_modes=weights, seed=3)
    texts = [f"`f{n}` in `m.py` gives unexpected results." for n in range(600)]
    modes = [rollout_two_mode(config, text) for text in texts]
    assert modes == [rollout_two_mode(ScriptedTeacherConfig(rollout_two_modes=weights, seed=3), t) for t in texts]
    assert modes != [rollout_two_mode(ScriptedTeacherConfig(rollout_two_modes=weights, seed=4), t) for t in texts]
    counts = Counter(modes)
    assert 360 < counts["full"] < 480 and 80 < counts["partial"] < 160 and 25 < counts["none"] < 100
    with pytest.raises(ValueError):
        ScriptedTeacherConfig(rollout_two_modes={"most": 1.0})


def test_cli_serves_until_sigterm():
    process = subprocess.Popen([sys.executable, "-m", "sera_ops.testing.scripted_teacher", "--port", "0",
                                "--rollout-two-modes", "full=0.7,partial=0.2,none=0.1", "--noop-first-attempt",
                                "--judge-reject-first-attempts", "0.5"],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert http(url.removesuffix("/v1") + "/health")[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
