"""Training stage: ChatML masking, truncation, tiny model, TRL batches (assistant-only labels, padding-free packing),
LoRA/full runs, 2-process accelerate, resume after a kill, atomic output, CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from sera_ops.settings.training import TrainSettings
from sera_ops.train.cli import TRAIN_MODULE, main
from sera_ops.train.jobs import launcher_command
from sera_ops.train.records import IGNORE_INDEX, IM_END, TrainInputError, encode_example
from sera_ops.train.run import _prepare_checkpoint_dir, checkpoint_dir_for, last_checkpoint, run_sft
from sera_ops.train.tiny_model import build_tiny_model
from sera_ops.train.trainer import build_trainer
from tests.support import ROOT
from tests.support.offline import offline  # noqa: F401  (autouse: no model hub)

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
    """No hub, and this interpreter's scripts (`accelerate`) first on PATH, as in the training image: `make test`
    runs the venv's python without activating the venv."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": path}


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


@pytest.mark.slow
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


def _first_batch(tiny_model: Path, tmp_path: Path, examples: list[dict], **fields) -> tuple[dict, object]:
    """The first micro-batch the SFTTrainer feeds the model (TRL's dataset preparation and collator), and the model."""
    settings = TrainSettings(method="full", base_model=str(tiny_model), **fields)
    trainer, _ = build_trainer(tiny_model, examples, settings, 4096, tmp_path / "checkpoints")
    return next(iter(trainer.get_train_dataloader())), trainer.model


def _segments(position_ids: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each packed sequence: positions restart at 0 for every example."""
    starts = [index for index, position in enumerate(position_ids) if position == 0]
    return list(zip(starts, starts[1:] + [len(position_ids)], strict=True))


def test_trainer_batches_carry_loss_only_on_trained_messages(tiny_model, tokenizer, tmp_path):
    messages = _conversation(6, turns=3)["messages"]
    messages[4] = {**messages[4], "train": False}  # an assistant turn the record excludes
    short = _conversation(7, turns=1)["messages"]
    examples = [encode_example(tokenizer, m, 4096) for m in (messages, short)]
    batch, _ = _first_batch(tiny_model, tmp_path, examples, packing=False, micro_batch_size=2)

    assert set(batch) >= {"input_ids", "labels", "attention_mask"} and batch["input_ids"].shape[0] == 2
    for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                 batch["attention_mask"].tolist(), strict=True):
        length = sum(mask)
        assert labels[length:] == [IGNORE_INDEX] * (len(ids) - length)  # padding carries no loss
        conversation = messages if ids[:length] == examples[0]["input_ids"] else short
        assert ids[:length] == encode_example(tokenizer, conversation, 4096)["input_ids"]
        # labelled tokens are exactly the trained messages' bodies and <|im_end|>; every other token is -100
        spans = _labelled_spans({"input_ids": ids[:length], "labels": labels[:length]})
        assert [tokenizer.decode(span) for span in spans] == [m["content"] + IM_END for m in conversation
                                                              if m["train"]]


def test_padding_free_packing_isolates_examples(tiny_model, tokenizer, tmp_path):
    import torch

    examples = [encode_example(tokenizer, _conversation(index, turns=1 + index % 3)["messages"], 4096)
                for index in range(3)]
    batch, model = _first_batch(tiny_model, tmp_path, examples, packing=True)

    ids, positions, labels = (batch[key][0].tolist() for key in ("input_ids", "position_ids", "labels"))
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, nothing padded
    assert tokenizer.pad_token_id not in ids
    segments = _segments(positions)
    assert sorted(end - start for start, end in segments) == sorted(len(e["input_ids"]) for e in examples)
    for start, end in segments:
        assert positions[start:end] == list(range(end - start))
        example = next(e for e in examples if e["input_ids"] == ids[start:end])
        assert labels[start:end] == example["labels"]  # the first label is -100 already: a header token

    model.eval()
    with torch.no_grad():
        packed = model(**{key: value for key, value in batch.items() if key != "labels"}).logits[0]
        for start, end in segments:  # attention does not cross examples: each one alone gives the same logits
            alone = model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            assert torch.allclose(packed[start:end], alone, atol=1e-4)


def test_lora_run_lowers_the_loss_and_publishes_an_adapter(tmp_path):
    data = _write(tmp_path / "data" / "t1.jsonl", [_conversation(0)] * 4 + [_no_assistant(1)])
    settings = TrainSettings(epochs=100, max_steps=20, grad_accum=1, lora_learning_rate=3e-3, lora_r=8,
                             lora_alpha=16, max_seq_len=128)
    out = tmp_path / "out"
    result = run_sft([data], out, settings)

    assert (result.examples, result.dropped, result.steps, result.world_size) == (4, 1, 20, 1)
    assert result.resumed_from is None
    assert result.last_loss < result.first_loss - 0.5
    assert 0 < result.trainable_params < result.total_params
    assert result.base_model == str(out / "base_model")
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(out / "base_model") and adapter["r"] == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert [point["step"] for point in metrics["loss_curve"]] == list(range(1, 21))
    assert metrics["losses"][-1] == result.last_loss and len(metrics["step_seconds"]) == 20
    assert metrics["learning_rates"][0] < metrics["learning_rates"][2] > metrics["learning_rates"][-1]  # warm-up
    assert result.tokens_trained == sum(metrics["step_tokens"]) > 20 * result.supervised_tokens_per_epoch / 4
    assert result.tokens_per_s > 0 and metrics["packing"] and metrics["device"] == "cpu"
    assert TrainSettings.model_validate_json((out / "train_settings.json").read_text()) == settings
    assert not checkpoint_dir_for(out).exists()  # finished: nothing left to resume

    from peft import AutoPeftModelForCausalLM

    reloaded = AutoPeftModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert sum(p.numel() for p in reloaded.parameters()) == result.total_params


def test_full_run_trains_every_weight(tmp_path, tiny_model):
    import torch
    from safetensors.torch import load_file

    data = _write(tmp_path / "t1.jsonl", [_conversation(index) for index in range(6)])
    settings = TrainSettings(method="full", base_model=str(tiny_model), max_steps=2, grad_accum=2,
                             micro_batch_size=2, packing=False, max_seq_len=10**6, learning_rate=1e-3,
                             gradient_checkpointing=True)
    result = run_sft([data], tmp_path / "out", settings)

    assert result.trainable_params == result.total_params and result.steps == 2
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["max_seq_len"] == 32768  # clamped to the model's max_position_embeddings
    assert metrics["rows_per_epoch"] == 6 and not metrics["packing"]
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert before.keys() == after.keys()
    assert not torch.equal(before["model.layers.0.mlp.down_proj.weight"], after["model.layers.0.mlp.down_proj.weight"])


@pytest.mark.slow
@pytest.mark.parametrize(("distributed", "method", "weights"), [("ddp", "lora", "adapter_model.safetensors"),
                                                               ("fsdp", "full", "model.safetensors")])
def test_two_process_accelerate_run_lowers_the_loss(tmp_path, distributed, method, weights):
    """The pod's launcher with 2 processes, over gloo on this CPU machine: DDP for LoRA, FSDP (sharded weights,
    gathered on save) for a full fine-tune; rank 0 alone reports and publishes."""
    data = _write(tmp_path / "t1.jsonl", [_conversation(index) for index in range(8)])
    (tmp_path / "settings.json").write_text(json.dumps({
        "method": method, "distributed": distributed, "max_steps": 12, "epochs": 100, "grad_accum": 1,
        "learning_rate": 1e-3, "lora_learning_rate": 3e-3, "lora_r": 8, "lora_alpha": 16, "max_seq_len": 256}))
    done = subprocess.run(
        launcher_command(2, distributed) + ["--data", str(data), "--out", str(tmp_path / "out"), "--settings",
                                            str(tmp_path / "settings.json")],
        capture_output=True, text=True, cwd=ROOT, env=_offline_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("{")]  # one report, from rank 0
    result = json.loads(line)
    assert (result["world_size"], result["steps"]) == (2, 12)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["distributed"] == distributed
    assert metrics["losses"][-1] < metrics["losses"][0] - 0.3
    assert result["tokens_trained"] == sum(metrics["step_tokens"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out", "settings.json", "t1.jsonl"]

    from safetensors.torch import load_file

    published = load_file(tmp_path / "out" / weights)  # whole tensors, not one rank's shards
    if method == "full":
        base = load_file(tmp_path / "out" / "base_model" / "model.safetensors")
        assert {key: value.shape for key, value in published.items()} == {key: v.shape for key, v in base.items()}


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    data = _write(tmp_path / "t1.jsonl", [_conversation(index) for index in range(8)])
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"max_steps": 24, "epochs": 100, "grad_accum": 1, "save_steps": 3,
                                         "save_total_limit": 2, "max_seq_len": 256}))
    out = tmp_path / "out"
    command = [sys.executable, "-m", TRAIN_MODULE, "--data", str(data), "--out", str(out), "--settings",
               str(settings_file)]
    checkpoints = checkpoint_dir_for(out)
    first = subprocess.Popen(command, cwd=ROOT, env=_offline_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while last_checkpoint(checkpoints) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)  # a pod killed mid-run: no cleanup of any kind
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL, "the run ended before a checkpoint was seen"
    assert not out.exists()
    resume_from = last_checkpoint(checkpoints)
    resumed_step = int(resume_from.name.split("-")[1])
    assert 3 <= resumed_step < 24

    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_offline_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["resumed_from"] == str(resume_from) and result["steps"] == 24
    metrics = json.loads((out / "metrics.json").read_text())
    # the steps before the checkpoint come from it, the rest from this launch: each step logged once
    assert [point["step"] for point in metrics["loss_curve"]] == list(range(1, 25))
    assert len(metrics["step_seconds"]) == 24 - resumed_step
    assert (out / "adapter_model.safetensors").exists() and not checkpoints.exists()


def test_checkpoints_of_other_settings_or_data_are_discarded(tmp_path):
    checkpoints = tmp_path / ".out.checkpoints"
    _prepare_checkpoint_dir(checkpoints, "a")
    (checkpoints / "checkpoint-4").mkdir()
    (checkpoints / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (checkpoints / "checkpoint-6").mkdir()  # killed while saving: no trainer state yet
    assert last_checkpoint(checkpoints) == checkpoints / "checkpoint-4"
    _prepare_checkpoint_dir(checkpoints, "a")
    assert last_checkpoint(checkpoints) == checkpoints / "checkpoint-4"
    _prepare_checkpoint_dir(checkpoints, "b")
    assert last_checkpoint(checkpoints) is None and checkpoints.is_dir()


@pytest.mark.slow
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
    ({"distributed": "deepspeed"}, "distributed"),
    ({"save_steps": 0}, "save_steps"),
])
def test_bad_settings_name_the_field(fields, named):
    with pytest.raises(ValidationError, match=named):
        TrainSettings(**fields)


def test_launcher_command_per_gpu_count():
    assert launcher_command(4, "fsdp") == ["accelerate", "launch", "--config_file", "sera_ops/accelerate/fsdp.yaml",
                                           "--num_processes=4", "-m", TRAIN_MODULE]
    assert launcher_command(0)[-4:] == ["--num_processes=1", "--cpu", "-m", TRAIN_MODULE]
    for name in ("ddp", "fsdp"):  # the configs the command names exist and are accelerate configs
        from accelerate.commands.config.config_args import load_config_from_file

        config = load_config_from_file(str(ROOT / launcher_command(2, name)[3]))
        assert str(config.distributed_type).endswith({"ddp": "MULTI_GPU", "fsdp": "FSDP"}[name])


@pytest.mark.slow
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
        [sys.executable, "-c", "import sys, sera_ops.train, sera_ops.train.jobs, sera_ops.settings; heavy = {'torch', "
         "'transformers', 'peft', 'tokenizers', 'trl', 'accelerate', 'datasets'} & set(sys.modules); "
         "assert not heavy, heavy"],
        capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
