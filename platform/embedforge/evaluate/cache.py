"""On-disk embedding cache keyed by (model fingerprint, instruction, text hash).

Each namespace (one model + one instruction) is a folder of ``.npz`` shards, one per encoded
batch, written to a temporary name and renamed: a killed run leaves only whole shards, so a rerun
re-encodes exactly the texts that no shard holds. Shards are append-only, so concurrent writers
(several evaluations sharing a cache) never corrupt one another.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def namespace_key(model_fingerprint: str, instruction: str | None) -> str:
    raw = json.dumps([model_fingerprint, instruction or ""])
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:20]


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, int(st.st_mtime)]


def model_fingerprint(path: str | None, adapter: str | None = None, **settings) -> str:
    """Identity of a model for caching: its directory's files (name, size, mtime), the adapter's,
    and every setting that changes vectors (pooling, max_length, dtype, ...).

    Hashing weights would read gigabytes for a 7B model; size + mtime change whenever they do.
    A hub id (no local directory) is identified by its name.
    """
    parts: list = [sorted(settings.items())]
    for d in (path, adapter):
        if d is None:
            parts.append(None)
            continue
        p = Path(d)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and ".cache" not in f.parts)
            parts.append([[str(f.relative_to(p)), *_file_stamp(f)[1:]] for f in files])
        else:
            parts.append(str(d))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


class EmbeddingCache:
    """Vectors by text hash for one namespace; ``root=None`` disables it (nothing kept)."""

    def __init__(self, root: str | os.PathLike | None, namespace: str):
        self.dir = Path(root) / namespace if root else None
        self._mem: dict[str, np.ndarray] | None = None

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def _load(self) -> dict[str, np.ndarray]:
        if self._mem is None:
            self._mem = {}
            if self.dir is not None and self.dir.is_dir():
                for shard in self._shards():
                    with np.load(shard) as z:
                        for k, v in zip(z["keys"].tolist(), z["vecs"], strict=True):
                            self._mem[k] = v
        return self._mem

    def __len__(self) -> int:
        return len(self._load())

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        mem = self._load()
        return {k: mem[k] for k in keys if k in mem}

    def put_many(self, keys: Sequence[str], vecs: np.ndarray) -> None:
        if len(keys) != len(vecs):
            raise ValueError(f"{len(keys)} keys but {len(vecs)} vectors")
        if len(keys) == 0:
            return
        mem = self._load()
        vecs = np.asarray(vecs, dtype=np.float32)
        for k, v in zip(keys, vecs, strict=True):
            mem[k] = v
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.asarray(list(keys)), vecs=vecs)
        os.replace(tmp, self.dir / f"{name}.npz")

    def _shards(self) -> list[Path]:
        # pathlib's glob also matches dot-files: skip in-flight temporaries explicitly.
        if self.dir is None or not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("*.npz") if not p.name.startswith("."))

    def shard_count(self) -> int:
        return len(self._shards())
