"""Training stage: ChatML masking, truncation, tiny model, LoRA/full runs, packing, atomic output, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from sera_ops.train import (
    IGNORE_INDEX,
    IM_END,
    TRAIN_MODULE,
    TrainInputError,
    TrainSettings,
    build_tiny_model,
    encode_example,
    main,
    make_batch,
    pack_examples,
    run_sft,
)

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "You are a software engineering agent. Call tools inside <tool_call></tool_call> tags."


def _conversation(index: int, turns: int = 2) -> dict:
    """A record in postprocess's Hermes shape; the last message is a tool response after the last assistant turn."""
    messages = [
        {"role": "system", "content": SYSTEM, "train": False},
        {"role": "user", "content": f"<pr_description>\nf{index} returns the wrong total.\n</pr_description>",
         "train": False},
    ]
    for turn in range(turns):
        command = json.dumps({"name": "bash", "arguments": {"command": f"grep -n 'def f{index}' src/app{turn}.py"}})
        messages.append({"role": "assistant", "train": True,
                         "content": f"<think>\nStep {turn}: look at f{index}.\n</think>\n\n<tool_call>\n{command}\n"
                                    "</tool_call>"})
        messages.append({"role": "user", "train": False,
                         "content": f"<tool_response>\nOBSERVATION:\nsrc/app{turn}.py:{turn + 10}: def f{index}():\n"
                                    "</tool_response>"})
    return {"messages": messages, "instance_id": f"demo_{index}", "tool_json": []}


def _no_assistant(index: int) -> dict:
    return {"messages": _conversation(index)["messages"][:2], "instance_id": f"empty_{index}"}


def _chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def _write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def _offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    corpus = [_chatml(_conversation(index, turns=3)["messages"]) for index in range(8)]
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen3-1m", corpus)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)


def _labelled_spans(example: dict) -> list[list[int]]:
    spans: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                spans.append([])
            spans[-1].append(label)
        previous = label
    return spans


def test_only_trained_messages_and_their_end_token_are_labelled(tokenizer):
    messages = _conversation(1, turns=3)["messages"]
    messages[2] = {**messages[2], "train": False}  # the train key decides, not the role
    example = encode_example(tokenizer, messages, 4096)

    spans = [tokenizer.decode(span) for span in _labelled_spans(example)]
    assert spans == [messages[4]["content"] + IM_END, messages[6]["content"] + IM_END]
    # the trailing tool response carries no loss and is cut; the text is ChatML up to the last assistant <|im_end|>
    assert tokenizer.decode(example["input_ids"]) == _chatml(messages[:7]).removesuffix("\n")
    assert example["labels"][-1] == tokenizer.convert_tokens_to_ids(IM_END)
    assert not example["truncated"]


def test_records_without_train_keys_train_on_assistant_turns(tokenizer):
    messages = [{key: value for key, value in m.items() if key != "train"} for m in _conversation(2)["messages"]]
    spans = [tokenizer.decode(span) for span in _labelled_spans(encode_example(tokenizer, messages, 4096))]
    assert spans == [messages[2]["content"] + IM_END, messages[4]["content"] + IM_END]


def test_overlong_sample_is_cut_after_the_last_complete_assistant_turn(tokenizer):
    messages = _conversation(3, turns=3)["messages"]
    one_turn = encode_example(tokenizer, messages[:3], 10**6)
    two_turns = encode_example(tokenizer, messages[:5], 10**6)
    width = len(two_turns["input_ids"])

    cut = encode_example(tokenizer, messages, width + 5)  # room for part of the third turn, not all of it
    assert cut["input_ids"] == two_turns["input_ids"] and cut["labels"] == two_turns["labels"]
    assert cut["truncated"]
    assert encode_example(tokenizer, messages, width - 1)["input_ids"] == one_turn["input_ids"]
    assert encode_example(tokenizer, messages, len(one_turn["input_ids"]) - 1) is None
    assert encode_example(tokenizer, messages[:2], 10**6) is None


def test_tiny_model_is_deterministic_and_reloads_offline(tmp_path, tiny_model):
    corpus = [_chatml(_conversation(index, turns=3)["messages"]) for index in range(8)]
    again = build_tiny_model(tmp_path / "again", corpus)
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes(), name

    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "path = sys.argv[1]\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "model = AutoModelForCausalLM.from_pretrained(path)\n"
        "text = tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False, "
        "add_generation_prompt=True)\n"
        "ids = tok(text, return_tensors='pt').input_ids\n"
        "print(json.dumps({'text': text, 'ids': [tok.convert_tokens_to_ids(t) for t in "
        "['<|im_start|>', '<|im_end|>', '<|endoftext|>', '<|pad|>']], 'eos': tok.eos_token, "
        "'params': sum(p.numel() for p in model.parameters()), 'logits': list(model(ids).logits.shape), "
        "'expected': [1, ids.shape[1], len(tok)]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tiny_model)], capture_output=True, text=True,
                          env=_offline_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["text"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert loaded["ids"] == [0, 1, 2, 3] and loaded["eos"] == IM_END
    assert 300_000 < loaded["params"] < 1_100_000  # the 1m shape; the vocabulary is smaller on this small corpus
    assert loaded["logits"] == loaded["expected"]


def test_lora_run_lowers_the_loss_and_publishes_an_adapter(tmp_path):
    data = _write(tmp_path / "data" / "t1.jsonl", [_conversation(0)] * 4 + [_no_assistant(1)])
    settings = TrainSettings(epochs=100, max_steps=20, grad_accum=1, lora_learning_rate=3e-3, lora_r=8,
                             lora_alpha=16)
    out = tmp_path / "out"
    result = run_sft([data], out, settings)

    assert (result.examples, result.dropped, result.steps) == (4, 1, 20)
    assert result.last_loss < result.first_loss - 0.5
    assert 0 < result.trainable_params < result.total_params
    assert result.base_model == str(out / "base_model")
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(out / "base_model") and adapter["r"] == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["losses"]) == 20 and metrics["losses"][-1] == result.last_loss
    assert metrics["learning_rates"][0] < metrics["learning_rates"][2] > metrics["learning_rates"][-1]
    assert TrainSettings.model_validate_json((out / "train_settings.json").read_text()) == settings

    from peft import AutoPeftModelForCausalLM

    reloaded = AutoPeftModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert sum(p.numel() for p in reloaded.parameters()) == result.total_params


def test_full_run_with_packing_trains_every_weight(tmp_path, tiny_model):
    import torch
    from safetensors.torch import load_file

    data = _write(tmp_path / "t1.jsonl", [_conversation(index) for index in range(6)])
    settings = TrainSettings(method="full", base_model=str(tiny_model), max_steps=2, grad_accum=2,
                             micro_batch_size=2, packing=True, max_seq_len=10**6, learning_rate=1e-3,
                             gradient_checkpointing=True)
    result = run_sft([data], tmp_path / "out", settings)

    assert result.trainable_params == result.total_params and result.steps == 2
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["max_seq_len"] == 32768  # clamped to the model's max_position_embeddings
    assert metrics["micro_batches_per_epoch"] == 1  # six short examples pack into one row
    assert result.tokens_trained == sum(metrics["step_tokens"]) > result.supervised_tokens > 0
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    assert not torch.equal(before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"])


def test_packed_examples_do_not_attend_to_each_other(tiny_model, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True).eval()
    first, second = (encode_example(tokenizer, _conversation(index)["messages"], 4096) for index in (4, 5))
    rows = pack_examples([first, second], len(first["input_ids"]) + len(second["input_ids"]))
    assert rows == [[first, second]]
    assert pack_examples([first, second], len(first["input_ids"]) + 1) == [[first], [second]]

    def logits(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits

    packed, alone = logits(make_batch(rows, 3))[0], logits(make_batch([[second]], 3))[0]
    padded = make_batch([[first], [second]], 3)
    batched = logits(padded)
    assert torch.allclose(packed[len(first["input_ids"]):], alone, atol=1e-4)
    assert torch.allclose(batched[1, :len(second["input_ids"])], alone, atol=1e-4)
    assert (padded["labels"][1, len(second["input_ids"]):] == IGNORE_INDEX).all()


def test_failed_run_keeps_the_previous_output_and_leaves_no_temp_dirs(tmp_path, tiny_model):
    data = _write(tmp_path / "t1.jsonl", [_conversation(0)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "marker").write_text("previous run")
    (tmp_path / ".out.partial-killed").mkdir()  # what a killed attempt leaves behind

    with pytest.raises(ValueError, match="no_such_proj"):
        run_sft([data], out, TrainSettings(base_model=str(tiny_model), lora_targets=["no_such_proj"], max_steps=1))
    assert (out / "marker").read_text() == "previous run"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "t1.jsonl"]

    run_sft([data], out, TrainSettings(base_model=str(tiny_model), max_steps=1))
    assert not (out / "marker").exists() and (out / "adapter_model.safetensors").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "t1.jsonl"]


def test_dataset_without_usable_examples_names_the_files(tmp_path, tiny_model):
    empty = _write(tmp_path / "t1.jsonl", [])
    no_turns = _write(tmp_path / "t2.jsonl", [_no_assistant(0)])
    settings = TrainSettings(base_model=str(tiny_model), max_steps=1)
    with pytest.raises(TrainInputError, match="t1.jsonl"):
        run_sft([empty], tmp_path / "out", settings)
    with pytest.raises(TrainInputError, match=r"t1\.jsonl: 0 records.*t2\.jsonl: 1 records, 1 without"):
        run_sft([empty, no_turns], tmp_path / "out", settings)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["t1.jsonl", "t2.jsonl"]


@pytest.mark.parametrize(("fields", "named"), [
    ({"epochs": 0}, "epochs"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"max_steps": 0}, "max_steps"),
    ({"method": "qlora"}, "method"),
    ({"datasets": []}, "datasets"),
    ({"datasets": ["t1", "t1"]}, "datasets"),
    ({"datasets": ["t3"]}, "datasets"),
    ({"lora_targets": []}, "lora_targets"),
    ({"base_model": "Qwen/Qwen3-8B"}, "base_model"),
    ({"learnin_rate": 1e-4}, "learnin_rate"),
])
def test_bad_settings_name_the_field(fields, named):
    with pytest.raises(ValidationError, match=named):
        TrainSettings(**fields)


def test_cli_round_trip(tmp_path):
    dataset_dir = tmp_path / "dataset"
    _write(dataset_dir / "t1.jsonl", [_conversation(index) for index in range(3)])
    _write(dataset_dir / "t2.jsonl", [_conversation(index) for index in range(3, 5)])
    (tmp_path / "settings.json").write_text(json.dumps({"datasets": ["t2"], "max_steps": 2, "grad_accum": 1}))
    done = subprocess.run(
        [sys.executable, "-m", TRAIN_MODULE, "--data", str(dataset_dir), "--out", str(tmp_path / "out"),
         "--settings", str(tmp_path / "settings.json")],
        capture_output=True, text=True, cwd=ROOT, env=_offline_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result["examples"], result["steps"], result["method"]) == (2, 2, "lora")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {key: metrics[key] for key in result} == result
    assert list(metrics["files"]) == [str(dataset_dir / "t2.jsonl")]


def test_cli_rejects_bad_input_with_exit_status_2(tmp_path, capsys):
    data = _write(tmp_path / "t1.jsonl", [_conversation(0)])
    assert main(["--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err

    (tmp_path / "bad.json").write_text(json.dumps({"epochs": 1, "lora_rank": 8}))
    assert main(["--data", str(data), "--out", str(tmp_path / "out"), "--settings", str(tmp_path / "bad.json")]) == 2
    assert "lora_rank" in capsys.readouterr().err

    _write(tmp_path / "broken.jsonl", [_conversation(0)]).open("a").write("{not json\n")
    assert main(["--data", str(tmp_path / "broken.jsonl"), "--out", str(tmp_path / "out")]) == 2
    assert "broken.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_module_import_does_not_import_torch():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, sera_ops.train; "
         "heavy = {'torch', 'transformers', 'peft', 'tokenizers'} & set(sys.modules); assert not heavy, heavy"],
        capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
