"""Building TRL's `SFTTrainer` for the encoded examples, as the settings ask.

The base model (bf16 on a GPU that supports it), the LoRA adapter or full fine-tuning, the optimiser and schedule,
checkpointing, and a step meter that times every optimizer step. Examples are packed padding-free (TRL's
best-fit-decreasing packing; positions restart per example so packed examples never attend to each other), or padded
per micro-batch with `packing: false`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sera_ops.settings.training import TrainSettings

if TYPE_CHECKING:
    from trl import SFTTrainer

log = logging.getLogger(__name__)


def _load_model(base_model: Path) -> Any:
    """bf16 weights on a GPU that supports them (as SERA's `bf16: auto`), fp32 otherwise."""
    import torch
    from transformers import AutoModelForCausalLM

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                 local_files_only=True)
    model.config.use_cache = False
    return model


def _lora_config(settings: TrainSettings) -> Any:
    if settings.method != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=list(settings.lora_targets), task_type="CAUSAL_LM")


def _step_meter() -> Any:
    """A TrainerCallback that times each optimizer step of this launch and counts its input tokens (all processes),
    and sends the trainer's log lines to the logger (stderr) instead of stdout. Built here: transformers is heavy."""
    from transformers import TrainerCallback

    class StepMeter(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.tokens: list[int] = []
            self._started = 0.0
            self._seen = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._started, self._seen = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self._started)
            self.tokens.append(int(state.num_input_tokens_seen - self._seen))

        def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if state.is_world_process_zero and logs:
                log.info("step %d/%d %s", state.global_step, state.max_steps,
                         " ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                  for key, value in logs.items()))

    return StepMeter()


def build_trainer(base_path: Path, examples: Sequence[dict[str, Any]], settings: TrainSettings, max_len: int,
                  checkpoint_dir: Path) -> tuple[SFTTrainer, Any]:
    """The SFTTrainer for these encoded examples, with the optimiser, schedule, packing and checkpointing of
    `settings`, and its step meter; `max_steps` is the epochs' step count, capped by `settings.max_steps`."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(settings.seed)  # the LoRA weights are drawn before the Trainer seeds itself
    tokenizer = AutoTokenizer.from_pretrained(base_path, local_files_only=True)
    model = _load_model(base_path)
    config = SFTConfig(
        output_dir=str(checkpoint_dir), seed=settings.seed, num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.micro_batch_size, gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.optimizer_learning_rate, lr_scheduler_type="cosine", warmup_steps=settings.warmup_ratio,
        weight_decay=settings.weight_decay, adam_beta1=0.9, adam_beta2=settings.adam_beta2, optim="adamw_torch",
        max_grad_norm=settings.max_grad_norm or 0.0, activation_checkpointing=settings.gradient_checkpointing,
        bf16=model.dtype == torch.bfloat16, max_length=max_len, packing=settings.packing, packing_strategy="bfd",
        padding_free=settings.packing, shuffle_dataset=True, logging_steps=settings.logging_steps,
        save_strategy="steps", save_steps=settings.save_steps, save_total_limit=settings.save_total_limit,
        include_num_input_tokens_seen="non_padding", report_to="none", disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False)
    dataset = Dataset.from_list([{"input_ids": example["input_ids"], "labels": example["labels"]}
                                 for example in examples])
    meter = _step_meter()
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=_lora_config(settings), callbacks=[meter])
    trainer.remove_callback(PrinterCallback)
    # transformers' own count, so that `max_steps` only ever shortens the run (the Trainer would repeat epochs)
    batches = math.ceil(len(trainer.train_dataset) / (settings.micro_batch_size * trainer.args.world_size))
    steps = math.ceil(settings.epochs * math.ceil(batches / settings.grad_accum))
    trainer.args.max_steps = min(steps, settings.max_steps or steps)
    return trainer, meter
