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
    """Hyper-parameters; defaults follow SERA's configs (sera.md §8): full-FT lr 1e-5, LoRA r32/α128 at 5e-5."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "full"] = "lora"
    base_model: str | None = Field(default=None, description="local model directory; None builds a tiny model")
    tiny_model_size: Literal["1m", "10m"] = "1m"
    datasets: list[Literal["t1", "t2"]] = ["t1", "t2"]
    epochs: float = Field(default=3, gt=0)
    learning_rate: float = Field(default=1e-5, gt=0, description="full fine-tuning")
    lora_learning_rate: float = Field(default=5e-5, gt=0)
    lora_r: int = Field(default=32, ge=1)
    lora_alpha: int = Field(default=128, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    max_seq_len: int = Field(default=32768, ge=8, description="clamped to the model's max_position_embeddings")
    micro_batch_size: int = Field(default=1, ge=1)
    grad_accum: int = Field(default=8, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    adam_beta2: float = Field(default=0.95, gt=0, lt=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="None disables clipping")
    gradient_checkpointing: bool = False
    seed: int = 42
    max_steps: int | None = Field(default=None, ge=1, description="cap on optimizer steps (smoke runs)")
    packing: bool = Field(default=True, description="padding-free packing (BFD); False pads each micro-batch")
    logging_steps: int = Field(default=1, ge=1, description="optimizer steps between loss records in metrics.json")
    save_steps: int = Field(default=100, ge=1, description="optimizer steps between resumable checkpoints")
    save_total_limit: int = Field(default=2, ge=1, description="checkpoints kept for resuming")
    distributed: Literal["ddp", "fsdp"] = Field(
        default="ddp", description="multi-process strategy under `accelerate launch`: ddp replicates the model "
        "(LoRA, small models); fsdp shards parameters, gradients and optimizer state (full fine-tunes of large models)")

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

    model_config = ConfigDict(extra="forbid")

    namespace: str = "sera"
    image: str = "sera-train:latest"
    service_account: str | None = None
    cpu: str = "8"
    memory: str = "64Gi"
    gpus: int = Field(1, ge=0)
    node_selector: dict[str, str] = {}
    storage_claim: str | None = None
    startup_timeout_s: int = Field(600, ge=1)


class TrainingPlatformSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesSettings = KubernetesSettings()
