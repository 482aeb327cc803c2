"""Consistency filtering of corpus-grounded rows (``generate.consistency``; Promptagator's round-trip
filter, as the paper's recipe applies to its own synthetic data): a (query, chunk) pair is kept only
when, under a filter model, the chunk ranks in the top ``top_k`` for its query.

Candidates: every chunk of the corpus, not only the chunks requests asked about. The kept rows must
single out their chunk in the collection it will be searched in; ranking among the sampled chunks
only would make the test easier the fewer queries a run asks for. The cost is one pass of the filter
model over the corpus per run, cached in ``<run>/generate/corpus/`` so a resumed run does not
encode it again. Overlapping neighbours of a chunk count as other chunks (a query about the shared
text can lose to its neighbour: a top_k above 1 leaves room for that).

Encoding runs on the project's encoding pool (``embedforge.encode_pool.EncodingPool``: Ray actors
each holding one embedder; the driver loads no model), started by ``prepare()`` before the session's
first teacher call and kept until the session ends. The corpus is encoded then, not at the first check:
at the first check the teacher actors were already streaming, the two shared the CPUs, and every
answer waited in memory until the whole corpus was encoded (a 15-min first run on 2 cores committed
nothing and lost 235 answers). With no teacher actor running yet, the corpus is encoded on a pool of
its own that takes the cluster's free CPUs; the checks' pool keeps to ``cpus_per_actor``. Queries get
their style's instruction when the filter model takes instructions (``filter_spec``). The check runs
on the driver before a shard is committed, so a row's consistency verdict is committed with it
(resume never re-checks or loses one) and its rejects are counted with the reason ``consistency`` like
every other reject.

``model`` may be ``backbone`` (model.backbone without model.adapter) or ``student`` (model.backbone
with model.adapter, i.e. the model being trained; before any training the same as ``backbone``).
Measured by the issue's author: filtering with the student keeps only pairs it already gets right,
hence a different, stronger default (all-MiniLM-L6-v2).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import numpy as np

from embedforge.generate.corpus import CorpusChunks

log = logging.getLogger(__name__)


def reject_detail(rank: int, num_chunks: int, top_k: int) -> str:
    """A consistency reject's ``detail``: the rank its chunk got (read back by ``reject_rank``)."""
    return f"its chunk ranks {int(rank)} of {num_chunks} (top_k={top_k})"


def reject_rank(detail: str) -> int:
    """The rank a consistency reject's ``detail`` records: which rejects a looser ``top_k`` would have
    kept, without generating again (``benchmarks/adapt_ablations.py``'s ``loose_filter``)."""
    return int(detail.split("ranks ", 1)[1].split(" ", 1)[0])


def own_chunk_ranks(query_vecs: np.ndarray, chunk_vecs: np.ndarray, own: np.ndarray, block: int = 256) -> np.ndarray:
    """The 1-based rank of each query's own chunk (``own[i]``: a row of ``chunk_vecs``) among all chunks
    by cosine similarity; a chunk scoring exactly as high as the own one does not push it down."""
    q = np.asarray(query_vecs, dtype=np.float32)
    c = np.asarray(chunk_vecs, dtype=np.float32)
    own = np.asarray(own, dtype=np.int64)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"query vectors {q.shape} and chunk vectors {c.shape} must be 2-D of one width")
    if len(own) != len(q) or (len(own) and (own.min() < 0 or own.max() >= len(c))):
        raise ValueError("own: one chunk index per query, each a row of chunk_vecs")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    ranks = np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), block):
        scores = q[start:start + block] @ c.T
        mine = scores[np.arange(len(scores)), own[start:start + block]]
        ranks[start:start + block] = 1 + (scores > mine[:, None]).sum(axis=1)
    return ranks


def filter_spec(cfg):
    """(EmbedderSpec, whether queries get their instruction, a label) of ``generate.consistency.model``."""
    from embedforge.embedders import EmbedderSpec

    c = cfg.generate.consistency
    if c.model == "backbone":
        spec, takes = EmbedderSpec.of(cfg.model, adapter=None), cfg.model.instructions
    elif c.model == "student":
        spec, takes = EmbedderSpec.of(cfg.model), cfg.model.instructions
    else:
        spec, takes = EmbedderSpec.of(cfg.model, backbone=c.model, adapter=None), False
    label = c.model if c.model not in ("backbone", "student") else f"{c.model} ({spec.backbone})"
    return spec, takes if c.instructions is None else c.instructions, label


def check_filter_model(cfg) -> None:
    """Fail before any teacher call when the filter model is a packaged alias that is not installed or a
    path that does not exist (hub ids are left to the pool: the driver downloads no weights)."""
    import os

    from embedforge.config.base import ConfigError
    from embedforge.models import PACKAGED_DIRS, PACKAGED_GGUF, is_hub_id, packaged_gguf, resolve_backbone
    from embedforge.storage import is_uri

    spec, _, _ = filter_spec(cfg)
    name = spec.backbone
    try:
        if name in PACKAGED_DIRS:
            resolve_backbone(name, weights=False)
        elif name in PACKAGED_GGUF:
            packaged_gguf(name)
        elif not is_hub_id(name) and not is_uri(name) and not os.path.exists(os.path.expanduser(name)):
            raise FileNotFoundError(f"no such file or directory: {name!r}")
    except FileNotFoundError as exc:
        raise ConfigError(f"generate.consistency.model {cfg.generate.consistency.model!r}: {exc}") from None


class ConsistencyFilter:
    """The run's filter: ``ranks(rows)`` ranks each row's own chunk for its query among every chunk."""

    def __init__(self, cfg, chunks: CorpusChunks, cache_dir: Path):
        c = cfg.generate.consistency
        self.cfg, self.chunks, self.top_k = cfg, chunks, c.top_k
        self.spec, self.instructions, self.label = filter_spec(cfg)
        self.cache_dir = Path(cache_dir)
        self.pool = None
        self.chunk_vecs: np.ndarray | None = None
        # This session's encoding of the corpus: its wall time and each actor's CPUs (None: read from the cache).
        self.chunk_encoding_s: float | None = None
        self.corpus_cpus_per_actor: float | None = None

    def describe(self) -> dict:
        return {"model": self.label, "top_k": self.top_k, "candidates": len(self.chunks.chunks),
                "instructions": self.instructions}

    def _cache_path(self) -> Path:
        key = hashlib.sha256(f"{self.chunks.fingerprint()}|{self.spec!r}".encode()).hexdigest()[:16]
        return self.cache_dir / f"chunk_embeddings-{key}.npy"

    def prepare(self) -> None:
        """Encode the corpus's chunks (or read them from the run's cache), then start the checks' pool;
        idempotent. The generate stage calls it before its first teacher call; ``ranks`` calls it if
        nobody did."""
        if self.pool is not None:
            return
        from embedforge.encode_pool import EncodingPool, actor_cpus

        c = self.cfg.generate.consistency
        options = {"num_actors": c.num_actors, "gpus_per_actor": c.gpus_per_actor, "batch_size": c.batch_size,
                   "stage": "generate.consistency", "resource_check": self.cfg.run.resource_check,
                   "settings": "generate.consistency.num_actors, cpus_per_actor, gpus_per_actor"}
        path = self._cache_path()
        vecs = np.load(path) if path.is_file() else None
        if vecs is None or len(vecs) != len(self.chunks.chunks):
            texts = [ch.text for ch in self.chunks.chunks]
            # No teacher actor runs yet, so the corpus pool takes the cluster's free CPUs (shared among
            # num_actors; what others hold on a shared cluster stays theirs); the checks' pool below keeps
            # to cpus_per_actor, beside the teacher actors.
            from embedforge.ray_utils import init_ray

            free = init_ray().available_resources().get("CPU", 0.0) // c.num_actors
            cpus = self.corpus_cpus_per_actor = max(c.cpus_per_actor, min(actor_cpus(c.num_actors), free))
            log.info("consistency filter: encoding %d chunks with %s (%g CPUs an actor)", len(texts), self.label, cpus)
            started = time.monotonic()
            with EncodingPool(self.spec, cpus_per_actor=cpus, **options) as corpus_pool:
                vecs = corpus_pool.encode(texts)
            self.chunk_encoding_s = round(time.monotonic() - started, 1)
            log.info("consistency filter: %d chunks encoded in %.1f s", len(texts), self.chunk_encoding_s)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.npy")
            np.save(tmp, vecs)
            tmp.replace(path)
        self.chunk_vecs = vecs
        self.pool = EncodingPool(self.spec, cpus_per_actor=c.cpus_per_actor, **options)

    def ranks(self, rows: list[dict]) -> np.ndarray:
        """Rows of the schema (corpus-grounded: ``source`` names the chunk) -> their own chunk's rank."""
        from embedforge.schema import chunk_id_of

        if not rows:
            return np.zeros(0, dtype=np.int64)
        self.prepare()
        own = np.array([self.chunks.position[chunk_id_of(r)] for r in rows], dtype=np.int64)
        instructions = [r["task"] if self.instructions else None for r in rows]
        query_vecs = self.pool.encode([r["query"] for r in rows], instructions)
        return own_chunk_ranks(query_vecs, self.chunk_vecs, own)

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None
