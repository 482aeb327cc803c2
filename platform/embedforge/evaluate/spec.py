"""``ModelSpec``: the model an evaluation run encodes (the ``model`` section, or a baseline's backbone
with the section's settings, at ``evaluate.dtype``), and its identity for the embedding cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from embedforge.config.base import ConfigError
from embedforge.embedders import EmbedderSpec, resolve


class ModelPathError(ConfigError):
    """A model or adapter path that does not exist or is not a model."""


@dataclass(frozen=True)
class ModelSpec(EmbedderSpec):
    def resolved_path(self) -> str:
        """The model directory (or hub id) on this node; a path that does not exist is an error naming
        it. A model in object storage comes without its weights: the driver only inspects it (its
        encoding actors fetch the whole model on their own nodes)."""
        from embedforge.config.shared import looks_like_path
        from embedforge.models import resolve_backbone
        from embedforge.storage import is_uri

        spec = self.backbone
        if not is_uri(spec) and looks_like_path(spec) and not os.path.exists(os.path.expanduser(spec)):
            raise ModelPathError(f"model path {spec!r} does not exist")
        if self.adapter is not None and not Path(self.adapter).expanduser().is_dir():
            raise ModelPathError(f"adapter directory {self.adapter!r} does not exist")
        return resolve_backbone(spec, weights=False)

    def fingerprint(self) -> str:
        """The cache key of this model's vectors: its files and the settings really used (a
        sentence-transformers directory's own pooling, normalisation and max length)."""
        from embedforge.evaluate.cache import model_fingerprint
        from embedforge.storage import is_uri

        self.resolved_path()
        used = resolve(self, weights=False)
        # In object storage: the stored files' sizes and times (the local copy has no weights).
        files = self.backbone if is_uri(self.backbone) else used.path
        return model_fingerprint(files, used.adapter, pooling=used.pooling, normalize=used.normalize,
                                 max_length=used.max_length, dtype=used.dtype)
