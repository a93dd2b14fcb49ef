"""The local model server: Hermes tool-call parsing, prompts rendered as the SFT records are, a tiny full-weights
model and a LoRA adapter served over the OpenAI protocol (usage, seeds, greedy), and clean errors."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from minisweagent.models.utils.actions_toolcall import BASH_TOOL, parse_toolcall_actions

from sera_ops.dataset.formats import HERMES_SYSTEM_PROMPT, trajectory_to_record
from sera_ops.settings import PostprocessOptions
from sera_ops.testing.model_server import LocalModelServer, parse_hermes_tool_calls, render_prompt
from sera_ops.train.records import IM_END, chatml_text
from sera_ops.train.tiny_model import build_tiny_model
from tests.support.offline import offline  # noqa: F401  (autouse: no model hub)

TASK = "<pr_description>\nscale() rounds too early.\n</pr_description>"
FIRST = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": TASK}]


def _call(command: str, call_id: str) -> dict:
    return {"id": call_id, "type": "function",
            "function": {"name": "bash", "arguments": json.dumps({"command": command})}}


def _trajectory() -> list[dict]:
    """An episode as mini-swe-agent keeps it in tool-call mode (messages with `extra`): one call, then two calls in
    one turn, each answered by a tool message."""
    observation = "<returncode>0</returncode>\n<output>\n{}\n</output>"
    return [
        *FIRST,
        {"role": "assistant", "content": "<think>\nFind scale.\n</think>",
         "tool_calls": [_call("grep -n scale x.py", "a")],
         "extra": {"actions": [{"command": "grep -n scale x.py", "tool_call_id": "a"}]}},
        {"role": "tool", "tool_call_id": "a", "content": observation.format("3:def scale"), "extra": {"returncode": 0}},
        {"role": "assistant", "content": "<think>\nRead it and run the tests.\n</think>",
         "tool_calls": [_call("sed -n 1,9p x.py", "b"), _call("python -m pytest -q", "c")],
         "extra": {"actions": [{"command": "sed -n 1,9p x.py", "tool_call_id": "b"},
                               {"command": "python -m pytest -q", "tool_call_id": "c"}]}},
        {"role": "tool", "tool_call_id": "b", "content": observation.format("def scale(v, f):"), "extra": {}},
        {"role": "tool", "tool_call_id": "c", "content": observation.format("1 failed"), "extra": {}},
    ]


def _api_messages(trajectory: list[dict]) -> list[dict]:
    """What `AgentModel.query` sends for that history: the messages without their trajectory-only keys."""
    return [{key: value for key, value in message.items() if key not in ("extra", "reasoning_content")}
            for message in trajectory]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    options = PostprocessOptions(enforce_submit=False)
    corpus = [chatml_text(trajectory_to_record({"messages": _trajectory()}, "demo", options))] * 4
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3-1m", corpus, size="1m")


@pytest.fixture(scope="module")
def server(tiny_model):
    with LocalModelServer(tiny_model, served_name="student", max_new_tokens=16) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)


# --- the Hermes tool-call parser -------------------------------------------------------------------------------------

def test_one_tool_call_becomes_an_openai_call_and_the_rest_is_content():
    text = '<think>\nlook\n</think>\n\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls -a"}}\n</tool_call>'
    content, calls = parse_hermes_tool_calls(text)
    assert content == "<think>\nlook\n</think>"
    assert calls == [{"id": "call_0", "type": "function",
                      "function": {"name": "bash", "arguments": json.dumps({"command": "ls -a"})}}]


def test_two_tool_calls_are_numbered_in_order():
    text = ('run both\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "bash", "arguments": {"command": "pwd"}}\n</tool_call>')
    content, calls = parse_hermes_tool_calls(text)
    assert content == "run both"
    assert [(c["id"], json.loads(c["function"]["arguments"])["command"]) for c in calls] == [("call_0", "ls"),
                                                                                            ("call_1", "pwd")]


def test_a_call_left_open_at_the_end_is_parsed_as_vllm_does():
    content, calls = parse_hermes_tool_calls('go\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n')
    assert content == "go" and json.loads(calls[0]["function"]["arguments"]) == {"command": "ls"}


@pytest.mark.parametrize("block", ['{"name": "bash", "arguments": {"command": "ls"}', '["bash"]',
                                   '{"name": "bash", "arguments": "ls"}', '{"arguments": {}}'])
def test_a_malformed_block_leaves_the_whole_reply_as_content(block):
    text = f'ok\n<tool_call>\n{{"name": "bash", "arguments": {{"command": "pwd"}}}}\n</tool_call>\n' \
           f"<tool_call>\n{block}\n</tool_call>"
    assert parse_hermes_tool_calls(text) == (text, [])


def test_plain_text_has_no_calls():
    assert parse_hermes_tool_calls("Nothing to run here.\n") == ("Nothing to run here.\n", [])


# --- prompts in the training format ----------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [PostprocessOptions(enforce_submit=False),
                                     PostprocessOptions(enforce_submit=False, reformat=None, add_think=True)])
def test_prompt_is_the_sft_record_of_the_same_conversation(options):
    trajectory = _trajectory()
    record = trajectory_to_record({"messages": trajectory}, "x", options)
    rendered = render_prompt(_api_messages(trajectory), options)

    assert rendered == chatml_text(record) + "<|im_start|>assistant\n"
    assert rendered.startswith(f"<|im_start|>system\n{HERMES_SYSTEM_PROMPT}<|im_end|>\n")
    assert '<tool_call>\n{"name": "bash", "arguments": {"command": "python -m pytest -q"}}\n</tool_call>' in rendered
    assert "<tool_response>\n<returncode>0</returncode>\n<output>\ndef scale(v, f):\n</output>\n</tool_response>\n" \
           "<tool_response>" in rendered  # two results of one turn share one user message


def test_first_turn_and_a_reply_without_calls_render_too():
    assert render_prompt(FIRST) == (f"<|im_start|>system\n{HERMES_SYSTEM_PROMPT}<|im_end|>\n"
                                    f"<|im_start|>user\n{TASK}<|im_end|>\n<|im_start|>assistant\n")
    # reformatting would drop this history; the server renders it unreformatted instead of refusing it
    history = [*FIRST, {"role": "assistant", "content": "I am done."}, {"role": "user", "content": "Go on."}]
    assert render_prompt(history).endswith("<|im_start|>assistant\nI am done.<|im_end|>\n"
                                           "<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n")


# --- serving a tiny model --------------------------------------------------------------------------------------------

def test_models_lists_the_served_name(client):
    assert [model.id for model in client.models.list().data] == ["student"]


def test_completion_is_what_transformers_generates_with_usage_from_the_tokenizer(server, client, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    messages = _api_messages(_trajectory())
    response = client.chat.completions.create(model="student", messages=messages, temperature=0, max_tokens=12,
                                              tools=[BASH_TOOL], seed=1)

    tokenizer = server.tokenizer
    prompt_ids = tokenizer(server.render(messages), add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=int),
                                max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.convert_tokens_to_ids(IM_END))
    new = output[0, len(prompt_ids):].tolist()
    stopped = new[-1] == tokenizer.convert_tokens_to_ids(IM_END)
    choice = response.choices[0]
    assert choice.message.role == "assistant" and not choice.message.tool_calls
    assert choice.message.content == tokenizer.decode(new[:-1] if stopped else new, skip_special_tokens=True)
    assert choice.finish_reason == ("stop" if stopped else "length")
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (len(prompt_ids), len(new))
    assert response.usage.total_tokens == len(prompt_ids) + len(new)
    assert response.model == "student"


def test_max_tokens_is_capped_by_the_server(client):
    response = client.chat.completions.create(model="student", messages=FIRST, temperature=0, max_tokens=500)
    assert response.usage.completion_tokens <= 16


def test_same_seed_same_reply_and_greedy_is_deterministic(client):
    def reply(**kwargs) -> str:
        return client.chat.completions.create(model="student", messages=FIRST, max_tokens=16,
                                              **kwargs).choices[0].message.content

    assert reply(temperature=1.0, seed=7) == reply(temperature=1.0, seed=7)
    assert len({reply(temperature=1.0, seed=seed) for seed in (1, 2, 3)}) > 1
    assert reply(temperature=0) == reply(temperature=0, seed=99)


def test_a_generated_call_reaches_the_agent_as_a_tool_call_and_comes_back_in_the_training_format(server, client,
                                                                                                   monkeypatch):
    text = '<think>\nList it.\n</think>\n\n<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
    ids = server.tokenizer(text, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(server, "_generate", lambda *args: [*ids, server.tokenizer.convert_tokens_to_ids(IM_END)])

    response = client.chat.completions.create(model="student", messages=FIRST, temperature=0, tools=[BASH_TOOL])
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "<think>\nList it.\n</think>"
    actions = parse_toolcall_actions(choice.message.tool_calls, format_error_template="{{error}}")
    assert actions == [{"command": "ls", "tool_call_id": "call_0"}]

    sent_back = choice.message.model_dump(exclude_none=True, include={"role", "content", "tool_calls"})
    history = [*FIRST, sent_back, {"role": "tool", "tool_call_id": "call_0", "content": "x.py"}]
    assert server.render(history) == render_prompt(FIRST).removesuffix("<|im_start|>assistant\n") + (
        f"<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>user\n<tool_response>\nx.py\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n")  # the model sees its own reply exactly as it wrote it

    plain = client.chat.completions.create(model="student", messages=FIRST, temperature=0)  # no tools: no parsing
    assert plain.choices[0].message.content == text and not plain.choices[0].message.tool_calls


def test_a_lora_adapter_dir_loads_its_recorded_base_and_serves(tmp_path, tiny_model, client):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                        init_lora_weights=False)  # random B: the adapter changes the replies
    adapter = tmp_path / "adapter"
    get_peft_model(base, config).save_pretrained(adapter)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    assert not (adapter / "config.json").exists()  # no tokenizer either: it comes from the base

    request = {"model": "student", "messages": FIRST, "temperature": 0, "max_tokens": 16}
    with LocalModelServer(adapter, served_name="student") as lora:
        assert lora.is_adapter
        lora_client = openai.OpenAI(base_url=lora.base_url, api_key="x", max_retries=0)
        response = lora_client.chat.completions.create(**request)
        assert response.usage.completion_tokens > 0
        assert lora.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tiny_model).get_vocab()
    assert response.choices[0].message.content != client.chat.completions.create(**request).choices[0].message.content


def test_a_moved_lora_output_falls_back_to_its_bundled_base_model(tmp_path, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                   LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(out)
    shutil.copytree(tiny_model, out / "base_model")  # as a LoRA run on the tiny model publishes it
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/gone/training-pod/out/base_model"
    (out / "adapter_config.json").write_text(json.dumps(config))
    server = LocalModelServer(out)
    server.load()
    assert server.tokenizer is not None


def test_a_lora_training_run_output_is_served_as_it_is_published(tmp_path):
    from sera_ops.settings.training import TrainSettings
    from sera_ops.train.run import run_sft

    record = trajectory_to_record({"messages": _trajectory()}, "demo", PostprocessOptions(enforce_submit=False))
    data = tmp_path / "t1.jsonl"
    data.write_text(json.dumps(record) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    run_sft([data], out, TrainSettings(method="lora", max_steps=1, grad_accum=1, max_seq_len=1024))
    assert (out / "adapter_config.json").is_file() and (out / "base_model" / "config.json").is_file()

    with LocalModelServer(out, served_name="student") as student:
        student_client = openai.OpenAI(base_url=student.base_url, api_key="x", max_retries=0)
        response = student_client.chat.completions.create(model="student", messages=FIRST, temperature=0,
                                                          max_tokens=4, tools=[BASH_TOOL])
    assert response.usage.prompt_tokens == len(student.tokenizer(render_prompt(FIRST))["input_ids"])
    assert 0 < response.usage.completion_tokens <= 4


# --- errors ----------------------------------------------------------------------------------------------------------

def test_a_missing_or_non_model_dir_is_a_value_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'nope'}.*config.json.*adapter_config.json"):
        LocalModelServer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'} is not a model"):
        LocalModelServer(tmp_path / "empty")


def _post(server: LocalModelServer, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{server.base_url}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_bad_requests_get_openai_style_errors(server):
    status, body = _post(server, b"{not json")
    assert status == 400 and "not JSON" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    for request, code in (({"model": "student"}, 400),
                          ({"model": "student", "messages": FIRST, "stream": True}, 400),
                          ({"model": "student", "messages": FIRST, "temperature": "hot"}, 400),
                          ({"model": "other", "messages": FIRST}, 404)):
        status, body = _post(server, json.dumps(request).encode())
        assert status == code and body["error"]["message"], request
