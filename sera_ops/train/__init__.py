"""Stage 8, training: a published dataset in, a fine-tuned model (LoRA or full SFT) out.

The training program (`python -m sera_ops.train`, also under `accelerate launch`) is `cli` (its command line, run by
`__main__`), `run` (`run_sft`: checkpoints, resume, the atomic output), `trainer` (TRL's SFTTrainer for the settings),
`records` (reading the JSONL records, ChatML encoding and masking) and `tiny_model` (the offline base model); `jobs`
prepares a training job from a run's dataset and runs it locally or describes it for the Kubernetes pod. The heavy
imports (torch, transformers, trl, peft, datasets) stay inside the functions that need them: the Airflow
dag-processor imports modules that import these every 30 s, and must not pay for torch.
"""
