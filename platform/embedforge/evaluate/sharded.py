"""Encode a large text list with Ray Data: rows -> ``map_batches`` on an actor pool (one model
replica per actor) -> embeddings keyed by id, joined back by id on the driver.

Rows are sorted by length before the dataset is built, so every batch holds texts of similar
length (little padding); the driver stores each finished batch (e.g. into the on-disk cache) as it
streams in, so an interrupted run keeps whatever was done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from embedforge.evaluate.backends import ModelSpec


class EncodeActor:
    """One model replica; Ray Data calls it with a batch of rows ``{id, text}``."""

    def __init__(self, spec: ModelSpec, instruction: str | None, num_threads: int | None = None):
        import torch

        from embedforge.evaluate.backends import load_backend

        if num_threads:
            torch.set_num_threads(num_threads)
        self.backend = load_backend(spec)
        self.instruction = instruction

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        vecs = self.backend.encode(texts, self.instruction)
        return {"id": np.asarray(batch["id"], dtype=np.int64), "embedding": vecs}


def length_sorted_rows(texts: Sequence[str]) -> list[dict]:
    """Rows ``{id, text}`` longest first (characters stand in for tokens: no tokenizer on the driver)."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    return [{"id": i, "text": texts[i]} for i in order]


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


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def encode_sharded(
    spec: ModelSpec,
    texts: Sequence[str],
    instruction: str | None = None,
    *,
    num_actors: int = 1,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float = 0.0,
    batch_size: int = 256,
    on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    resource_check: str = "fail",
) -> np.ndarray:
    """``(len(texts), dim)`` float32 embeddings in input order, computed by ``num_actors`` Ray actors."""
    from embedforge.ray_utils import check_capacity, format_resources, init_ray

    ray = init_ray()

    n = len(texts)
    if n == 0:
        raise ValueError("encode_sharded: no texts to encode")
    cpus = cpus_per_actor or max(1.0, _cluster_cpus() // num_actors)
    actor = {"CPU": float(cpus), "GPU": float(gpus_per_actor)}
    check_capacity("evaluate", [actor] * num_actors,
                   f"{num_actors} encoding actors × {format_resources(actor)} (evaluate.num_actors, "
                   "evaluate.cpus_per_actor: unset = the cluster's CPUs / actors, evaluate.gpus_per_actor)",
                   mode=resource_check)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.verbose_progress = False
    ds = ray.data.from_items(length_sorted_rows(texts))
    ds = ds.map_batches(
        EncodeActor,
        fn_constructor_kwargs={"spec": spec, "instruction": instruction, "num_threads": max(1, int(cpus))},
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
