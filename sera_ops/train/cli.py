"""The training program's command line: the entry point of the training pod (one process, or each of a launch's).

`python -m sera_ops.train` trains in one process (the `local` backend, the demo); `accelerate launch --num_processes N
[--config_file sera_ops/accelerate/<ddp|fsdp>.yaml] -m sera_ops.train ...` runs the same code on N processes (all GPUs
of a pod, or several nodes through a PyTorchJob). `TRAIN_MODULE` is the module both run, for the jobs that launch it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from pydantic import ValidationError

from sera_ops.settings.training import TrainSettings
from sera_ops.train.records import TrainInputError, resolve_dataset_files
from sera_ops.train.run import run_sft

TRAIN_MODULE = "sera_ops.train"


def _load_settings(path: Path | None) -> TrainSettings:
    if path is None:
        return TrainSettings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TrainInputError(f"cannot read settings file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise TrainInputError(f"settings file {path} is not valid JSON: {error}") from None
    return TrainSettings.model_validate(data)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sera_ops.train --data FILE|DIR [--data ...] --out DIR [--settings settings.json]`.

    Progress goes to stderr; the last stdout line (of rank 0) is the TrainResult as JSON. Exit status 2 means bad
    input.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {TRAIN_MODULE}", description=main.__doc__)
    parser.add_argument("--data", type=Path, action="append", required=True,
                        help="a JSONL dataset file, or a run's dataset directory (its t1/t2 files per 'datasets')")
    parser.add_argument("--out", type=Path, required=True, help="output directory (replaced atomically)")
    parser.add_argument("--settings", type=Path, help="JSON file with TrainSettings fields")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = _load_settings(args.settings)
        result = run_sft(resolve_dataset_files(args.data, settings.datasets), args.out, settings)
    except (TrainInputError, ValidationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(asdict(result)), flush=True)
    return 0
