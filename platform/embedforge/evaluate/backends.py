"""What turns texts into vectors: an HF decoder through ``embedforge.encoder.Encoder`` (a training
run's output, a merged model, any causal LM with last-token pooling) or a sentence-transformers model
through sentence-transformers itself (baselines, so the harness check compares like with like).

``ModelSpec`` is a small picklable description, so a Ray actor can build its own replica.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedforge.prompts import format_query
from embedforge.section import ConfigError


class ModelPathError(ConfigError):
    """A model or adapter path that does not exist or is not a model."""


@dataclass(frozen=True)
class ModelSpec:
    backbone: str
    adapter: str | None = None
    pooling: str = "last_token"
    normalize: bool = True
    max_length: int = 512
    dtype: str = "float32"
    batch_tokens: int = 16384
    device: str = "cpu"
    # sentence-transformers batch size (rows)
    batch_size: int = 64

    @classmethod
    def from_model_config(cls, model_cfg, batch_size: int = 64) -> ModelSpec:
        return cls(backbone=model_cfg.backbone, adapter=model_cfg.adapter, pooling=model_cfg.pooling,
                   normalize=model_cfg.normalize, max_length=model_cfg.max_length, dtype=model_cfg.dtype,
                   batch_tokens=model_cfg.batch_tokens, device=model_cfg.device, batch_size=batch_size)

    def resolved_path(self) -> str:
        """The model directory (or hub id); a path that does not exist is an error naming it."""
        from embedforge.config import looks_like_path
        from embedforge.models import resolve_backbone

        spec = self.backbone
        if looks_like_path(spec) and not os.path.exists(os.path.expanduser(spec)):
            raise ModelPathError(f"model path {spec!r} does not exist")
        if self.adapter is not None and not Path(self.adapter).expanduser().is_dir():
            raise ModelPathError(f"adapter directory {self.adapter!r} does not exist")
        return resolve_backbone(spec)

    def is_sentence_transformers(self) -> bool:
        from embedforge.models import is_sentence_transformers_dir

        return is_sentence_transformers_dir(self.resolved_path())

    def fingerprint(self) -> str:
        from embedforge.evaluate.cache import model_fingerprint

        path = self.resolved_path()
        settings = {k: v for k, v in asdict(self).items() if k not in ("backbone", "adapter", "device",
                                                                         "batch_tokens", "batch_size")}
        if self.is_sentence_transformers():
            settings = {"kind": "sentence-transformers"}
        return model_fingerprint(path, self.adapter, **settings)


class DecoderBackend:
    kind = "decoder"

    def __init__(self, spec: ModelSpec):
        from embedforge.encoder import Encoder
        from embedforge.models import load_backbone

        model, tokenizer = load_backbone(spec.resolved_path(), spec.dtype, spec.adapter, spec.device)
        self.encoder = Encoder(model, tokenizer, pooling=spec.pooling, normalize=spec.normalize,
                               max_length=spec.max_length, batch_tokens=spec.batch_tokens, device=spec.device)
        self.tokenizer = tokenizer

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, texts: list[str], instruction: str | None = None) -> np.ndarray:
        return self.encoder.encode(texts, instruction=instruction, show_progress=False)

    def count_tokens(self, texts: list[str], instruction: str | None = None) -> list[int]:
        return self.encoder.count_tokens(texts, instruction)


class SentenceTransformerBackend:
    kind = "sentence-transformers"

    def __init__(self, spec: ModelSpec):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(spec.resolved_path(), device=spec.device)
        self.batch_size = spec.batch_size
        self.tokenizer = self.model.tokenizer

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: list[str], instruction: str | None = None) -> np.ndarray:
        if instruction:
            texts = [format_query(t, instruction) for t in texts]
        vecs = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def count_tokens(self, texts: list[str], instruction: str | None = None) -> list[int]:
        if instruction:
            texts = [format_query(t, instruction) for t in texts]
        limit = self.model.max_seq_length
        return [min(len(ids), limit) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]


def load_backend(spec: ModelSpec):
    return SentenceTransformerBackend(spec) if spec.is_sentence_transformers() else DecoderBackend(spec)
