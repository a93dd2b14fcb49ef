"""Stage 8, training: a published dataset in, a fine-tuned model (LoRA or full SFT) out.

`trainer` is the training program (`python -m sera_ops.train`, also under `accelerate launch`); `jobs` prepares a
training job from a run's dataset and runs it locally or describes it for the Kubernetes pod. The heavy imports
(torch, transformers) stay inside the functions that need them.
"""
