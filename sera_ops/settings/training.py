"""Training settings (hyper-parameters and where the training pod runs), in a leaf module.

`sera_ops.config` validates them as part of the YAML configuration; keeping them apart from `sera_ops.train` and
`sera_ops.train_jobs` lets the config (and the dag-processor that imports it every 30 s) load them without importing
the training code, and lets those modules import the config without a cycle. Nothing from sera_ops is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainSettings(BaseModel):
    """Hyper-parameters; defaults follow SERA's configs (docs/sera-behaviour.md#training-recipes): full-FT lr 1e-5, LoRA
    r32/α128 at 5e-5."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    method: Literal["lora", "full"] = "lora"
    """`lora` trains a LoRA adapter (peft) on the frozen base, `full` every weight. SERA's main (axolotl) configs
    fine-tune fully; its LoRA recipe is the Unsloth one. The training DAG's `method` param overrides it per run."""
    base_model: str | None = Field(default=None)
    """A local model directory (no hub downloads); None builds a tiny randomly initialised Qwen3 with its own
    tokenizer, for dry runs. SERA trained Qwen3-8B/32B and Qwen2.5-Coder-32B."""
    tiny_model_size: Literal["1m", "10m"] = "1m"
    """Size of the tiny model built when `base_model` is None: about 1 or 10 million parameters."""
    datasets: list[Literal["t1", "t2"]] = ["t1", "t2"]
    """Which of a run's dataset files to train on: `t1` (rollout-one trajectories judged good) and/or `t2`
    (verified rollout-two trajectories), SERA's T1 and T2 variants."""
    epochs: float = Field(default=3, gt=0)
    """Passes over the dataset (SERA: 3)."""
    learning_rate: float = Field(default=1e-5, gt=0)
    """Peak learning rate of full fine-tuning (`method: full`; SERA: 1e-5), on a cosine schedule with AdamW."""
    lora_learning_rate: float = Field(default=5e-5, gt=0)
    """Peak learning rate of LoRA training (`method: lora`; SERA's Unsloth config: 5e-5)."""
    lora_r: int = Field(default=32, ge=1)
    """LoRA rank (SERA: 32)."""
    lora_alpha: int = Field(default=128, ge=1)
    """LoRA scaling α (SERA: 128)."""
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the LoRA layers (SERA: 0)."""
    lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Module names that get LoRA adapters: by default every attention and MLP projection, as in SERA."""
    max_seq_len: int = Field(default=32768, ge=8)
    """Tokens per example (SERA: 32,768), clamped to the model's max_position_embeddings. An example ends at the last
    trained message that fits whole; one with no trained message that fits is dropped."""
    micro_batch_size: int = Field(default=1, ge=1)
    """Rows per device per forward pass (SERA: 1); with packing, a row holds several examples."""
    grad_accum: int = Field(default=8, ge=1)
    """Micro-batches per optimizer step (SERA's Qwen3-8B config: 8; its 32B configs: 2)."""
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    """Fraction of the optimizer steps spent warming the learning rate up linearly. SERA's Unsloth config uses 0.1;
    its axolotl configs 0.1875, picked to give 48 warm-up steps on their dataset."""
    weight_decay: float = Field(default=0.01, ge=0)
    """AdamW weight decay (SERA: 0.01)."""
    adam_beta2: float = Field(default=0.95, gt=0, lt=1)
    """AdamW β2 (SERA: 0.95; β1 is 0.9)."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Gradient clipping norm; None disables clipping."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory, at the cost of speed (SERA's axolotl configs turn
    it on)."""
    seed: int = 42
    """Seed of the LoRA weights' initialisation, data shuffling and the trainer (SERA: 42)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Cap on optimizer steps (smoke runs); it only ever shortens the epochs' run. The training DAG's `max_steps`
    param overrides it per run."""
    packing: bool = Field(default=True)
    """Padding-free packing (best-fit decreasing): examples share rows, with positions restarting per example so they
    never attend to each other; false pads each micro-batch."""
    logging_steps: int = Field(default=1, ge=1)
    """Optimizer steps between loss records in metrics.json."""
    save_steps: int = Field(default=100, ge=1)
    """Optimizer steps between resumable checkpoints (beside the output, so a restarted job resumes from the newest
    complete one when settings and data are unchanged)."""
    save_total_limit: int = Field(default=2, ge=1)
    """Checkpoints kept for resuming (SERA's Unsloth config also keeps 2)."""
    distributed: Literal["ddp", "fsdp"] = Field(default="ddp")
    """Multi-process strategy under `accelerate launch` (the kubernetes backend, one process per GPU): ddp
    replicates the model (LoRA, small models); fsdp shards parameters, gradients and optimizer state (full
    fine-tunes of large models). SERA used DeepSpeed ZeRO-1 or ZeRO-3."""

    @field_validator("base_model")
    @classmethod
    def _local_directory(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"base_model {value!r} is not an existing directory: training only loads local "
                             "model directories (no hub downloads); leave it unset to build a tiny model")
        return value

    @field_validator("datasets")
    @classmethod
    def _distinct_datasets(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"datasets must name t1 and/or t2 once each, got {value}")
        return value

    @field_validator("lora_targets")
    @classmethod
    def _some_targets(cls, value: list[str]) -> list[str]:
        if not value or not all(name.strip() for name in value):
            raise ValueError(f"lora_targets must list module names, got {value}")
        return value

    @property
    def optimizer_learning_rate(self) -> float:
        return self.lora_learning_rate if self.method == "lora" else self.learning_rate


class KubernetesSettings(BaseModel):
    """Where and how the training pod runs; resources default to one GPU node slice.

    `gpus` is both the pod's `nvidia.com/gpu` request and the number of processes `accelerate launch` starts in it.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    namespace: str = "sera"
    """The Kubernetes namespace the training pod is created in."""
    image: str = "sera-train:latest"
    """The pod's image: sera_ops with a CUDA torch, transformers, TRL, peft and accelerate (`docker/train/`)."""
    service_account: str | None = None
    """The pod's service account; None: the namespace's default."""
    cpu: str = "8"
    """CPU request and limit, in Kubernetes quantity notation (e.g. `8`, `7500m`)."""
    memory: str = "64Gi"
    """Memory request and limit, in Kubernetes quantity notation (e.g. `64Gi`)."""
    gpus: int = Field(1, ge=0)
    """GPUs requested (`nvidia.com/gpu`) and training processes started, one per GPU; 0 trains in one CPU process.
    More than one also gets the pod a memory-backed /dev/shm for NCCL."""
    node_selector: dict[str, str] = {}
    """Node labels the pod must be scheduled on (e.g. a GPU type); empty: any node."""
    storage_claim: str | None = None
    """A PersistentVolumeClaim holding `storage_root`, mounted at that same path so the job's paths hold
    (ReadWriteMany when workers share it): the pod reads the dataset and writes the model through it. None mounts
    nothing, so the pod must see `storage_root` some other way."""
    startup_timeout_s: int = Field(600, ge=1)
    """Seconds the pod may take to be scheduled and start (image pull included) before the task fails."""


class TrainingPlatformSettings(BaseModel):
    """Where training DAGs train: in the worker, or in a Kubernetes pod (not a SERA setting: SERA left training to
    hand-launched axolotl, LLaMA-Factory or Unsloth runs)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    backend: Literal["local", "kubernetes"] = "local"
    """`local` trains in the Airflow worker's process (on object storage: inputs copied to a temp dir, the model
    uploaded after); `kubernetes` starts a pod per training run, which needs `storage_root` on a mounted volume."""
    kubernetes: KubernetesSettings = KubernetesSettings()
    """The pod of the `kubernetes` backend; unused by `local`."""
