"""Evaluation's large text lists on the Ray Data actor pool (``embedforge.encode_pool``), after
checking that the cluster can hold the ``evaluate.*`` actors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def encode_sharded(
    spec,
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
    from embedforge.encode_pool import actor_cpus, encode_on_pool
    from embedforge.ray_utils import check_capacity, format_resources, init_ray

    init_ray()
    if len(texts) == 0:
        raise ValueError("encode_sharded: no texts to encode")
    cpus = actor_cpus(num_actors, cpus_per_actor)
    actor = {"CPU": cpus, "GPU": float(gpus_per_actor)}
    check_capacity("evaluate", [actor] * num_actors,
                   f"{num_actors} encoding actors × {format_resources(actor)} (evaluate.num_actors, "
                   "evaluate.cpus_per_actor: unset = the cluster's CPUs / actors, evaluate.gpus_per_actor)",
                   mode=resource_check)
    return encode_on_pool(spec, texts, instruction, num_actors=num_actors, cpus_per_actor=cpus,
                          gpus_per_actor=gpus_per_actor, batch_size=batch_size, on_batch=on_batch)
