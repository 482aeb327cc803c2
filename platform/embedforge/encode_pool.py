"""The one encoding pool: ``num_actors`` Ray actors, each holding one embedder (``load_embedder``),
started once and reused for every encode call of a run. Evaluation (every task, queries and
documents alike), hard-negative mining and the serve smoke check encode this way, so the driver never
loads model weights: on a cluster whose head has no GPU, every forward pass runs where the actors'
resources (``num_gpus`` per actor) put them.

Plain actors rather than a Ray Data ``map_batches`` pool: Ray Data builds its actor pool per dataset,
so each encode call (one per task and side) loaded the model again — a 7B model dozens of times per
MTEB run. Here the model is loaded once per actor (``EncodingPool.model_loads``).

Rows are sorted by length before they are cut into batches, so every batch holds texts of similar
length (little padding). Each actor has at most one batch in flight, so the driver holds at most
``num_actors`` finished batches at a time; ``on_batch`` sees each as it comes back (evaluation stores it
in its on-disk cache, so an interrupted run keeps whatever was done).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class EmbedderActor:
    """One model replica; ``encode`` takes a batch of rows as columns ``{id, text, instruction}``."""

    def __init__(self, spec, num_threads: int | None = None):
        import torch

        from embedforge.embedders import load_embedder

        # Ray sets the actor's torch threads from OMP_NUM_THREADS; the actor's CPUs are what it may use.
        if num_threads:
            torch.set_num_threads(num_threads)
        self.embedder = load_embedder(spec)

    def describe(self) -> dict:
        import os
        import socket

        return {"dim": self.embedder.dim, "max_length": self.embedder.max_length, "pid": os.getpid(),
                "host": socket.gethostname()}

    def encode(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        instructions = [str(i) for i in batch["instruction"]]
        vecs = np.zeros((len(texts), self.embedder.dim), dtype=np.float32)
        # One encode call per instruction in the batch ("" = none: documents, or instructions off).
        for instruction in dict.fromkeys(instructions):
            rows = [i for i, x in enumerate(instructions) if x == instruction]
            vecs[rows] = self.embedder.encode([texts[i] for i in rows], instruction or None, show_progress=False)
        return {"id": np.asarray(batch["id"], dtype=np.int64), "embedding": vecs}


def length_sorted_rows(texts: Sequence[str], instructions: Sequence[str | None] | None = None) -> list[dict]:
    """Rows ``{id, text, instruction}`` longest first (characters stand in for tokens: no tokenizer on
    the driver); a missing instruction is ""."""
    instructions = instructions if instructions is not None else [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [{"id": i, "text": texts[i], "instruction": instructions[i] or ""} for i in order]


def column_batches(rows: list[dict], batch_size: int) -> list[dict]:
    """Consecutive rows cut into batches of ``batch_size``, each as columns (what an actor takes)."""
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        out.append({"id": [r["id"] for r in chunk], "text": [r["text"] for r in chunk],
                    "instruction": [r["instruction"] for r in chunk]})
    return out


def join_by_id(n: int, dim: int | None, batches) -> np.ndarray:
    """Place ``(ids, vecs)`` batches into an ``(n, dim)`` array; every id exactly once."""
    out: np.ndarray | None = None if dim is None else np.zeros((n, dim), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    for ids, vecs in batches:
        ids = np.asarray(ids, dtype=np.int64)
        if out is None:
            out = np.zeros((n, vecs.shape[1]), dtype=np.float32)
        if np.any(ids < 0) or np.any(ids >= n):
            raise ValueError(f"encoded ids outside 0..{n - 1}")
        if seen[ids].any():
            raise ValueError(f"id {int(ids[seen[ids]][0])} encoded twice")
        seen[ids] = True
        out[ids] = vecs
    if not seen.all():
        raise RuntimeError(f"{int((~seen).sum())} of {n} texts came back without an embedding")
    return out if out is not None else np.zeros((0, dim or 0), dtype=np.float32)


def actor_cpus(num_actors: int, requested: float | None = None) -> float:
    """``requested``, or else the cluster's CPUs shared among the actors (at least one each), but never
    more than the largest node has: an actor lives on one node."""
    if requested:
        return float(requested)
    import ray

    per_node = [float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    share = float(ray.cluster_resources().get("CPU", 1.0)) // num_actors
    return max(1.0, min(share, max(per_node, default=share)))


class EncodingPool:
    """``num_actors`` embedder actors for one model; a context manager (the actors end with it).

    ``spec``: a picklable ``model`` section (``embedforge.embedders.EmbedderSpec``).
    ``cpus_per_actor``: None = the cluster's CPUs shared among the actors (``actor_cpus``).
    Before any actor starts, the cluster must be able to hold them all (``run.resource_check``): a
    pool that cannot fit would wait forever; the error names ``stage`` and the config keys in ``settings``.
    Construction waits until every actor has loaded its model, so a model that fails to load fails here.
    """

    streams_batches = True  # encode() hands finished batches to on_batch as they arrive

    def __init__(self, spec, *, num_actors: int = 1, cpus_per_actor: float | None = None,
                 gpus_per_actor: float = 0.0, batch_size: int = 256, stage: str = "encode", settings: str = "",
                 resource_check: str = "fail"):
        from embedforge.ray_utils import check_capacity, format_resources, init_ray

        ray = init_ray()
        if num_actors < 1:
            raise ValueError(f"{stage}: num_actors must be >= 1, got {num_actors}")
        cpus = actor_cpus(num_actors, cpus_per_actor)
        actor = {"CPU": cpus, "GPU": float(gpus_per_actor)}
        check_capacity(stage, [actor] * num_actors,
                       f"{num_actors} encoding actors × {format_resources(actor)}" + (f" ({settings})" if settings else ""),
                       mode=resource_check)
        self.batch_size = max(1, int(batch_size))
        remote = ray.remote(EmbedderActor).options(num_cpus=cpus, num_gpus=float(gpus_per_actor),
                                                   max_restarts=1, max_task_retries=2)
        self._actors = [remote.remote(spec, num_threads=max(1, int(cpus))) for _ in range(num_actors)]
        try:
            self.actors_info = ray.get([a.describe.remote() for a in self._actors])
        except BaseException:
            self.close()
            raise
        self.dim = int(self.actors_info[0]["dim"])
        self.max_length = int(self.actors_info[0]["max_length"])
        # One model load per actor for the pool's whole life (tests count these).
        self.model_loads = len(self._actors)

    def encode(self, texts: Sequence[str], instruction: str | Sequence[str | None] | None = None, *,
               show_progress: bool | None = None,
               on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None) -> np.ndarray:
        """``(len(texts), dim)`` float32 embeddings in input order. ``instruction``: one for every
        text, or one per text (None / "" = encoded as it is)."""
        from ray.util import ActorPool

        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        instructions = [instruction] * n if instruction is None or isinstance(instruction, str) else list(instruction)
        if len(instructions) != n:
            raise ValueError(f"encode: {len(instructions)} instructions for {n} texts")
        batches = column_batches(length_sorted_rows(texts, instructions), self.batch_size)
        done = ActorPool(self._actors).map_unordered(lambda actor, batch: actor.encode.remote(batch), batches)

        def stream():
            for result in done:
                ids, vecs = result["id"], np.asarray(result["embedding"], dtype=np.float32)
                if on_batch is not None:
                    on_batch(ids, vecs)
                yield ids, vecs

        return join_by_id(n, self.dim, stream())

    def close(self) -> None:
        import ray

        for actor in getattr(self, "_actors", []):
            ray.kill(actor, no_restart=True)
        self._actors = []

    def __enter__(self) -> EncodingPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encode_on_pool(spec, texts: Sequence[str], instructions: str | Sequence[str | None] | None = None, *,
                   on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None, **pool_options) -> np.ndarray:
    """One encode call on a pool of its own (mining, the serve smoke check): ``EncodingPool(spec,
    **pool_options)`` for the duration of the call."""
    if len(texts) == 0:
        raise ValueError("encode_on_pool: no texts to encode")
    with EncodingPool(spec, **pool_options) as pool:
        return pool.encode(texts, instructions, on_batch=on_batch)
