"""On-disk embedding store keyed by (model fingerprint, instruction, text hash), bounded in memory.

Each namespace (one model + one instruction) is a folder of ``.npy`` shards, one per encoded batch
(written to a temporary name and renamed), and a SQLite index (``index.sqlite``: text hash -> shard,
row) committed after its shard is in place: a killed run leaves only whole, indexed shards, so a
rerun re-encodes exactly the texts no shard holds. Lookups read only the asked rows (shards are
memory-mapped), so memory follows the request — mteb asks for a retrieval corpus 50,000 documents at
a time — never the namespace: the 15 BEIR corpora (~34 M documents, ~555 GB at 4,096 dimensions) stay
on disk. SQLite's locking lets several evaluations share a cache (on a local disk: SQLite's locks are
unreliable on network file systems, and the cache lives in the driver's working copy of the run).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

INDEX_FILE = "index.sqlite"
LOOKUP_BATCH = 10_000  # keys per SQL query (SQLite allows 32,766 parameters)


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
    A hub id (no local directory) is identified by its name; a folder in object storage by its files'
    names, sizes and times as stored.
    """
    from embedforge.storage import file_stamps, is_uri

    parts: list = [sorted(settings.items())]
    for d in (path, adapter):
        if d is None:
            parts.append(None)
            continue
        if is_uri(d):
            parts.append([d, [list(f) for f in file_stamps(d)]])
            continue
        p = Path(d)
        if p.is_dir():
            # A .cache folder *inside* the model directory (hub download state) is not the model; the
            # directory itself may well live under ~/.cache (imported GGUFs, fetched run models).
            files = sorted(f for f in p.rglob("*") if f.is_file() and ".cache" not in f.relative_to(p).parts)
            parts.append([[str(f.relative_to(p)), *_file_stamp(f)[1:]] for f in files])
        else:
            parts.append(str(d))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


class EmbeddingCache:
    """Vectors by text hash for one namespace; ``root=None`` disables it (nothing is written: the
    vectors of this instance's calls are kept in memory for its lifetime, as a plain dict)."""

    def __init__(self, root: str | os.PathLike | None, namespace: str):
        self.dir = Path(root) / namespace if root else None
        self._mem: dict[str, np.ndarray] | None = {} if self.dir is None else None
        self._db: sqlite3.Connection | None = None

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def _index(self, create: bool = False) -> sqlite3.Connection | None:
        if self._db is None:
            path = self.dir / INDEX_FILE
            if not path.is_file() and not create:
                return None
            self.dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=60)
            self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, shard TEXT NOT NULL, "
                             "row INTEGER NOT NULL)")
            self._db.commit()
        return self._db

    def __len__(self) -> int:
        if self._mem is not None:
            return len(self._mem)
        db = self._index()
        return 0 if db is None else int(db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors among ``keys`` (a key not stored is absent from the result)."""
        if self._mem is not None:
            return {k: self._mem[k] for k in keys if k in self._mem}
        db = self._index()
        if db is None or not keys:
            return {}
        wanted = list(dict.fromkeys(keys))
        where: dict[str, list[tuple[str, int]]] = {}
        for start in range(0, len(wanted), LOOKUP_BATCH):
            chunk = wanted[start:start + LOOKUP_BATCH]
            marks = ",".join("?" * len(chunk))
            for key, shard, row in db.execute(f"SELECT key, shard, row FROM vectors WHERE key IN ({marks})", chunk):
                where.setdefault(shard, []).append((key, row))
        out: dict[str, np.ndarray] = {}
        for shard, hits in where.items():
            vecs = np.load(self.dir / shard, mmap_mode="r")
            rows = np.asarray([r for _, r in hits], dtype=np.int64)
            picked = np.asarray(vecs[rows], dtype=np.float32)  # reads these rows only
            out.update((key, picked[i]) for i, (key, _) in enumerate(hits))
        return out

    def put_many(self, keys: Sequence[str], vecs: np.ndarray) -> None:
        if len(keys) != len(vecs):
            raise ValueError(f"{len(keys)} keys but {len(vecs)} vectors")
        if len(keys) == 0:
            return
        vecs = np.asarray(vecs, dtype=np.float32)
        if self._mem is not None:
            self._mem.update(zip(keys, vecs, strict=True))
            return
        db = self._index(create=True)
        name = f"{uuid.uuid4().hex}.npy"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, vecs)
        os.replace(tmp, self.dir / name)
        # Indexed only once the shard is whole; a key encoded twice points at its latest shard.
        with db:
            db.executemany("INSERT OR REPLACE INTO vectors (key, shard, row) VALUES (?, ?, ?)",
                           [(k, name, i) for i, k in enumerate(keys)])

    def _shards(self) -> list[Path]:
        # pathlib's glob also matches dot-files: skip in-flight temporaries explicitly.
        if self.dir is None or not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("*.npy") if not p.name.startswith("."))

    def shard_count(self) -> int:
        return len(self._shards())

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
