"""Encode a text list on a Ray Data actor pool: rows ``{id, text, instruction}`` -> ``map_batches``
on ``num_actors`` actors (each builds its embedder once, with ``load_embedder``) -> embeddings joined
back by id on the driver, in input order. Evaluation and hard-negative mining both encode this way.

Rows are sorted by length before the dataset is built, so every batch holds texts of similar
length (little padding); ``on_batch`` sees each finished batch as it streams in (evaluation stores
it in its on-disk cache, so an interrupted run keeps whatever was done).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class EmbedderActor:
    """One model replica; Ray Data calls it with a batch of rows ``{id, text, instruction}``."""

    def __init__(self, spec, num_threads: int | None = None):
        import torch

        from embedforge.embedders import load_embedder

        # Ray sets the actor's torch threads from OMP_NUM_THREADS; the actor's CPUs are what it may use.
        if num_threads:
            torch.set_num_threads(num_threads)
        self.embedder = load_embedder(spec)

    def __call__(self, batch: dict) -> dict:
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
    the driver); a missing instruction is "" (Arrow columns hold one type)."""
    instructions = instructions if instructions is not None else [None] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [{"id": i, "text": texts[i], "instruction": instructions[i] or ""} for i in order]


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
    """``requested``, or else the cluster's CPUs shared among the actors (at least one each)."""
    if requested:
        return float(requested)
    import ray

    return max(1.0, float(ray.cluster_resources().get("CPU", 1.0)) // num_actors)


def encode_on_pool(
    spec,
    texts: Sequence[str],
    instructions: str | Sequence[str | None] | None = None,
    *,
    num_actors: int = 1,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float = 0.0,
    batch_size: int = 256,
    on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    stage: str = "encode",
    settings: str = "",
    resource_check: str = "fail",
) -> np.ndarray:
    """``(len(texts), dim)`` float32 embeddings in input order, computed by ``num_actors`` Ray actors.

    ``spec``: a picklable ``model`` section (``embedforge.embedders.EmbedderSpec``).
    ``instructions``: one for every text, or one per text (None / "" = encoded as it is).
    ``cpus_per_actor``: None = the cluster's CPUs shared among the actors (``actor_cpus``).
    Before any actor starts, the cluster must be able to hold them all (``run.resource_check``): a
    pool that cannot fit would wait forever; the error names ``stage`` and the config keys in ``settings``.
    """
    from embedforge.ray_utils import check_capacity, format_resources, init_ray

    ray = init_ray()
    n = len(texts)
    if n == 0:
        raise ValueError("encode_on_pool: no texts to encode")
    if instructions is None or isinstance(instructions, str):
        instructions = [instructions] * n
    if len(instructions) != n:
        raise ValueError(f"encode_on_pool: {len(instructions)} instructions for {n} texts")
    cpus = actor_cpus(num_actors, cpus_per_actor)
    actor = {"CPU": cpus, "GPU": float(gpus_per_actor)}
    check_capacity(stage, [actor] * num_actors,
                   f"{num_actors} encoding actors × {format_resources(actor)}" + (f" ({settings})" if settings else ""),
                   mode=resource_check)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.verbose_progress = False
    ds = ray.data.from_items(length_sorted_rows(texts, instructions))
    ds = ds.map_batches(
        EmbedderActor,
        fn_constructor_kwargs={"spec": spec, "num_threads": max(1, int(cpus))},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cpus,
        num_gpus=gpus_per_actor or None,
    )

    def stream():
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            ids, vecs = batch["id"], np.asarray(batch["embedding"], dtype=np.float32)
            if on_batch is not None:
                on_batch(ids, vecs)
            yield ids, vecs

    return join_by_id(n, None, stream())
