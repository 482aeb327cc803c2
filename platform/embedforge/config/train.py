"""Contrastive fine-tuning (LoRA or full) on Ray Train with DeepSpeed ZeRO-3: the ``train:`` config section.

Defaults are the paper's (§4.2, Appendix A): LoRA r=16 on all linear layers, lr 1e-4 with 100 warmup
steps then linear decay, weight decay 0.1, τ = 0.02, one epoch, DeepSpeed ZeRO-3. ``finetune: full``
trains every weight instead (a small encoder student such as all-MiniLM-L6-v2: docs/train.md).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from embedforge.config.base import Section
from embedforge.config.shared import check_model_spec
from embedforge.schema import GROUPS


class LoraSettings(Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    # "all-linear" = every nn.Linear of the backbone; otherwise module-name suffixes (q_proj, ...).
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class DataSource(Section):
    # A Parquet file or directory of the shared row schema (embedforge.schema.COLUMNS).
    path: str
    # Relative share of this source in the training mix (normalised over all sources).
    ratio: float = Field(1.0, gt=0)


class DeepSpeedSettings(Section):
    stage: Literal[0, 1, 2, 3] = 3
    offload: Literal["none", "cpu"] = "none"  # optimizer + parameter offload to CPU memory (ZeRO-3)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    gradient_clipping: float = Field(1.0, ge=0)  # 0 turns clipping off


class TrainConfig(Section):
    temperature: float = Field(0.02, gt=0)
    # lora: a PEFT LoRA adapter on the frozen backbone (``lora`` below; the paper's recipe). full: every
    # weight of the backbone is trained through the same DeepSpeed engine (no adapter, no merge; the
    # export writes the trained weights); the natural choice for a small encoder student like MiniLM.
    finetune: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)  # read only with finetune: lora
    data: list[DataSource] = Field(default_factory=list)
    # Run-relative Parquet directory used when ``data`` is empty (the generate stage's output).
    default_data_dir: str = "data"
    # Sequences per optimizer step over all workers (queries; each also brings its documents).
    global_batch_size: int = Field(2048, ge=1)
    # Gradient caching: sequences per forward pass on a worker; null turns caching off.
    chunk_size: int | None = Field(32, ge=1)
    negatives_per_query: int = Field(1, ge=0)
    # Token limits when training tokenizes; null: model.max_length (the root config resolves it,
    # ``training_lengths()``, and refuses a value above it). Shorter trains faster; the model is still served at model.max_length.
    query_max_length: int | None = Field(None, ge=2)
    passage_max_length: int | None = Field(None, ge=2)
    lr: float = Field(1e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop early (tiny runs, benchmarks)
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)
    gradient_checkpointing: bool = True
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    # Custom Ray resources each worker (and the export task) asks for, e.g. {trainer: 1} to keep
    # training off the head node: give the GPU nodes that resource in cluster.yaml.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    checkpoint_every: int = Field(100, ge=1)  # optimizer steps between checkpoints (and one at the end)
    max_failures: int = Field(3, ge=-1)  # Ray restarts of the worker group; -1 = unlimited
    # Ray Train storage (checkpoints, results); null = <run storage>/ray_train (a URI works).
    storage_path: str | None = None
    log_every: int = Field(1, ge=1)
    # Hard-negative mining for rows without negatives (top-k of the given model, positives excluded).
    mine_negatives: bool = False
    mining_model: str | None = None  # a backbone spec; null = model.backbone
    mining_top_k: int = Field(100, ge=1)
    # Positive-aware mining (NV-Retriever): a candidate the mining model scores above
    # mining_max_positive_ratio x its query's positive score, or within mining_margin of it, is taken
    # for an unlabeled positive (a false negative) and skipped. null: off.
    mining_max_positive_ratio: float | None = Field(None, gt=0, le=1)
    mining_margin: float | None = Field(None, ge=0)
    # False-negative masking in the loss (GISTEmbed): a frozen guide model (a model spec like
    # model.backbone: an alias such as all-minilm-l6-v2, a local directory, a .gguf file or a hub id)
    # scores every query against every in-batch, cross-worker and hard negative of the step; one it
    # scores above the query's positive is dropped from the softmax. null: off. Costs one forward of
    # the guide per sequence per step (train/guide.py).
    guide_model: str | None = None
    # absolute: mask a candidate scoring > positive - guide_margin; relative: > positive x (1 - guide_margin).
    guide_margin_strategy: Literal["absolute", "relative"] = "absolute"
    guide_margin: float = Field(0.0, ge=0)
    # Row groups whose positives and negatives are encoded with their row's instruction, like the query
    # (embedforge.schema.GROUPS). Evaluation instructs both sides of a symmetric task (STS,
    # classification, pair classification: embedforge.instructions); by default training, like the
    # paper's, instructs queries only. Empty: queries only.
    symmetric_groups: list[str] = Field(default_factory=list)

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_resources_only(cls, v: dict[str, float]) -> dict[str, float]:
        builtin = sorted(k for k in v if k in ("CPU", "GPU", "memory", "object_store_memory"))
        if builtin:
            raise ValueError(f"resources_per_worker takes custom resources only, got {builtin}: "
                             "set CPUs with train.cpus_per_worker and a GPU with train.use_gpu")
        bad = sorted(k for k, n in v.items() if n <= 0)
        if bad:
            raise ValueError(f"resources_per_worker: amounts must be > 0, got {', '.join(f'{k}={v[k]}' for k in bad)}")
        return v

    @field_validator("guide_model")
    @classmethod
    def _guide_model_exists(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("guide_model must not be empty (null turns the guide off)")
        return check_model_spec(v, "guide model", ", or null to turn the guide off")

    @field_validator("symmetric_groups")
    @classmethod
    def _known_groups(cls, v: list[str]) -> list[str]:
        unknown = [g for g in v if g not in GROUPS]
        if unknown:
            raise ValueError(f"{unknown} are not row groups; allowed: {', '.join(GROUPS)}")
        return v

    @field_validator("data")
    @classmethod
    def _unique_paths(cls, v: list[DataSource]) -> list[DataSource]:
        paths = [s.path for s in v]
        if len(set(paths)) != len(paths):
            raise ValueError(f"data sources must be distinct paths, got {paths}")
        return v

    @model_validator(mode="after")
    def _batch_fits_workers(self) -> TrainConfig:
        if self.global_batch_size < self.num_workers:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be >= train.num_workers "
                f"({self.num_workers}): every worker needs at least one query per step"
            )
        if self.global_batch_size % self.num_workers:
            raise ValueError(
                f"train.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"train.num_workers ({self.num_workers})"
            )
        return self

    @model_validator(mode="after")
    def _fp16_needs_a_gpu(self) -> TrainConfig:
        # DeepSpeed's CPU accelerator has no fp16 ("Type fp16 is not supported on your device"):
        # say so at config load, not after the workers have started.
        if self.deepspeed.precision == "fp16" and not self.use_gpu:
            raise ValueError(
                "train.deepspeed.precision=fp16 needs train.use_gpu=true (DeepSpeed has no fp16 on CPU); "
                "allowed on CPU: 'bf16', 'fp32'"
            )
        return self

    @model_validator(mode="after")
    def _relative_guide_margin_below_one(self) -> TrainConfig:
        if self.guide_margin_strategy == "relative" and not self.guide_margin < 1:
            raise ValueError(
                f"train.guide_margin ({self.guide_margin}) must be < 1 with train.guide_margin_strategy=relative "
                "(a candidate is masked above positive x (1 - guide_margin)); allowed: 0 <= guide_margin < 1, "
                "e.g. 0.05, or guide_margin_strategy=absolute"
            )
        return self

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.num_workers
