"""Training throughput: padding-free packing against a padded baseline, LoRA and full fine-tuning, tiny Qwen3 models.

Builds each tiny model once from a synthetic Hermes-style dataset (assistant turns made of this project's own source
code, so the BPE sees realistic text; 1 to 8 turns per record, so lengths vary as agent trajectories do), then trains
it with `run_sft` (TRL's SFTTrainer, the production path) twice per method on the same records for the same number of
steps: packed (padding-free best-fit-decreasing rows of up to `--seq-len` tokens, micro batch 1) and padded (micro
batches of as many examples as a packed row holds on average, padded to the longest). tokens/s counts real tokens
only (padding excluded), median over the `--steps` steps after `--warmup` warm-up steps. The last column is packed
over padded for the same model and method; the target on a GPU is at least 1.5x. The header names the device: on a
CPU the figures only show that both paths run (attention is a small share of a tiny model's work there).

    python bench/train.py [--sizes 1m,10m] [--methods full,lora] [--seq-len 2048] [--steps 6] [--warmup 2]
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

from sera_ops.settings.training import TrainSettings  # noqa: E402
from sera_ops.train.run import run_sft  # noqa: E402
from sera_ops.train.tiny_model import build_tiny_model  # noqa: E402

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
        for turn in range(1 + index * 5 % 8):
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


def measure(data: Path, base_model: Path, out: Path, args: argparse.Namespace, **fields: object) -> dict:
    settings = TrainSettings(base_model=str(base_model), max_steps=args.warmup + args.steps, epochs=1000,
                             grad_accum=1, max_seq_len=args.seq_len, save_steps=10**6, **fields)
    result = run_sft([data], out, settings)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    seconds = metrics["step_seconds"][args.warmup:]
    tokens = metrics["step_tokens"][args.warmup:]
    return {"s_per_step": statistics.median(seconds), "tokens_per_step": statistics.median(tokens),
            "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, seconds, strict=True)),
            "examples": result.examples, "rows": metrics["rows_per_epoch"], "trainable": result.trainable_params,
            "total": result.total_params, "device": metrics["device"], "dtype": metrics["dtype"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1m,10m")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--seq-len", type=int, default=2048, help="packed row length and per-example limit")
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps excluded before measuring")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sera-bench-train-") as scratch:
        work = Path(scratch)
        records = synthetic_records(args.records)
        data = work / "t1.jsonl"
        data.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
        for size in args.sizes.split(","):
            base = build_tiny_model(work / f"tiny-{size}", map(chatml, records), size=size)
            for method in args.methods.split(","):
                packed = measure(data, base, work / f"{size}-{method}-packed", args, method=method, packing=True)
                per_batch = max(1, round(packed["examples"] / packed["rows"]))  # examples a packed row holds
                padded = measure(data, base, work / f"{size}-{method}-padded", args, method=method, packing=False,
                                 micro_batch_size=per_batch)
                rows.append((size, method, f"padded, {per_batch} per batch", padded, padded))
                rows.append((size, method, "packed, padding-free", packed, padded))
    device = rows[0][3]["device"]
    kind = "CPU" if device == "cpu" else "GPU"
    print(f"{kind}: tiny Qwen3 on {device} {rows[0][3]['dtype']}, rows ≤ {args.seq_len} tokens, "
          f"{args.records} records, median of {args.steps} steps after {args.warmup} warm-up steps")
    if kind == "CPU":
        print("CPU run: the packing gain is measured for GPUs (target ≥ 1.5x); these figures show both paths work")
    print("| model | method | trainable / total params | batching | real tokens/step | s/step | tokens/s | "
          "packed vs padded |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for size, method, batching, numbers, baseline in rows:
        print(f"| qwen3-{size} | {method} | {numbers['trainable']:,} / {numbers['total']:,} | {batching} | "
              f"{numbers['tokens_per_step']:.0f} | {numbers['s_per_step']:.3f} | {numbers['tokens_per_s']:,.0f} | "
              f"{numbers['tokens_per_s'] / baseline['tokens_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
