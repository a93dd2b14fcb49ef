"""Training throughput of LoRA against full fine-tuning on the tiny Qwen3 models (1m and 10m), CPU or GPU.

Builds each tiny model once from a synthetic Hermes-style dataset (assistant turns made of this project's own source
code, so the BPE sees realistic text), then runs `run_sft` for full fine-tuning (the baseline) and LoRA side by side in
the same process: micro batch 1, no accumulation, every example cut at the last assistant turn that fits `--seq-len`.
The first `--warmup` steps are excluded; the table shows the median of the next `--steps` steps. The ratio column is
LoRA's tokens/s over full fine-tuning's for the same model.

    python bench/train_throughput.py [--sizes 1m,10m] [--seq-len 512] [--steps 8] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sera_ops.train import TrainSettings, build_tiny_model, run_sft  # noqa: E402

SYSTEM = "You are a software engineering agent. Call the bash tool inside <tool_call></tool_call> tags."


def synthetic_records(count: int) -> list[dict]:
    """Conversations whose assistant turns quote chunks of sera_ops/*.py and whose tool outputs quote others."""
    chunks = []
    for source in sorted((ROOT / "sera_ops").glob("*.py")):
        text = source.read_text(encoding="utf-8")
        chunks += [text[start:start + 600] for start in range(0, len(text), 600)]
    records = []
    for index in range(count):
        messages = [{"role": "system", "content": SYSTEM, "train": False},
                    {"role": "user", "content": f"<pr_description>\nIssue {index}\n</pr_description>", "train": False}]
        for turn in range(12):
            chunk = chunks[(index * 12 + turn) % len(chunks)]
            command = json.dumps({"name": "bash", "arguments": {"command": f"sed -n {turn},+20p file_{index}.py"}})
            messages.append({"role": "assistant", "train": True,
                             "content": f"<think>\n{chunk[:300]}\n</think>\n\n<tool_call>\n{command}\n</tool_call>"})
            messages.append({"role": "user", "train": False,
                             "content": f"<tool_response>\n{chunk[300:]}\n</tool_response>"})
        records.append({"messages": messages, "instance_id": f"bench_{index}"})
    return records


def chatml(record: dict) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in record["messages"])


def measure(data: Path, base_model: Path, method: str, out: Path, args: argparse.Namespace) -> dict:
    settings = TrainSettings(method=method, base_model=str(base_model), max_steps=args.warmup + args.steps,
                             epochs=1000, grad_accum=1, micro_batch_size=1, max_seq_len=args.seq_len)
    result = run_sft([data], out, settings)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    seconds = metrics["step_seconds"][args.warmup:]
    tokens = metrics["step_tokens"][args.warmup:]
    return {"s_per_step": statistics.median(seconds),
            "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, seconds, strict=True)),
            "tokens_per_step": statistics.median(tokens), "trainable": result.trainable_params,
            "total": result.total_params, "device": metrics["device"], "dtype": metrics["dtype"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1m,10m")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps excluded before measuring")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sera-bench-train-") as scratch:
        work = Path(scratch)
        records = synthetic_records(16)
        data = work / "t1.jsonl"
        data.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
        for size in args.sizes.split(","):
            base = build_tiny_model(work / f"tiny-{size}", map(chatml, records), size=size)
            for method in ("full", "lora"):
                rows.append((size, method, measure(data, base, method, work / f"out-{size}-{method}", args)))
    device = f"{rows[0][2]['device']} {rows[0][2]['dtype']}"
    print(f"tiny Qwen3, {device}, seq ≤ {args.seq_len}, micro batch 1, median of {args.steps} steps "
          f"after {args.warmup} warm-up steps")
    print("| model | method | trainable / total params | tokens/step | s/step | tokens/s | vs full FT |")
    print("|---|---|---:|---:|---:|---:|---:|")
    baselines = {size: numbers["tokens_per_s"] for size, method, numbers in rows if method == "full"}
    for size, method, numbers in rows:
        print(f"| qwen3-{size} | {method} | {numbers['trainable']:,} / {numbers['total']:,} | "
              f"{numbers['tokens_per_step']:.0f} | {numbers['s_per_step']:.3f} | {numbers['tokens_per_s']:,.0f} | "
              f"{numbers['tokens_per_s'] / baselines[size]:.2f}x |")


if __name__ == "__main__":
    main()
