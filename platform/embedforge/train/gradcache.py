"""The contrastive step: cross-worker InfoNCE and gradient caching (Gao et al. 2021), ZeRO-3 safe.

``cross_worker_info_nce`` gathers every worker's embeddings *with gradient*
(``torch.distributed.nn.all_gather``), so the negatives of a query are the whole global batch, and
scores only the local queries (mean over them). DeepSpeed/DDP then average parameter gradients over
workers, which gives exactly the gradient of the mean loss over the global batch: the gather's
backward sums every worker's contribution to the local embeddings, and the average divides by the
world size once.

``contrastive_backward`` runs one optimizer step's forward/backward for a worker's local batch:

* no caching (``chunk_size=None``): one forward of all sequences with a graph, loss, backward;
* caching: (1) embed chunks without a graph, saving each chunk's RNG state; (2) loss on the full
  batch and its gradient w.r.t. every embedding; (3) re-run each chunk with a graph under the same
  RNG state (dropout replays identically) and backpropagate ``<embedding, cached gradient>``.

An optional false-negative mask (``train.guide_model``, ``train/guide.py``) is built once per step
over the global batch, before either path runs, and passed to the loss (``mask=``).

Under DeepSpeed ZeRO-2/3 ``engine.no_sync()`` is refused, so the backward of every chunk but the last
runs with ``set_gradient_accumulation_boundary(False)`` (gradients accumulate in the partitions, no
reduction) and the last with ``True`` (one reduction), with ``scale_wrt_gas=False`` so DeepSpeed does
not divide by a gradient-accumulation count that does not apply. Every worker runs the same number of
chunks, because ZeRO-3 gathers parameters per forward and reduces per backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from embedforge.encoder import embed
from embedforge.loss import info_nce
from embedforge.prompts import pad_batch


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All workers' rows in rank order; gradients flow back to each worker's own rows."""
    _, world_size = world()
    if world_size == 1:
        return x
    import torch.distributed.nn

    return torch.cat(torch.distributed.nn.all_gather(x.contiguous()), dim=0)


def cross_worker_info_nce(
    queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None, temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE of the local queries against the positives and negatives of the global batch.

    Every worker holds the same number of queries and negatives (the batch planner guarantees it),
    so a worker's queries sit at ``rank * len(queries)`` in the gathered batch. ``mask`` (optional):
    the false-negative mask over the *global* batch (every query x every gathered document, the same
    on every worker: ``train.guide.Guide.mask``); this worker applies its own queries' rows.
    """
    rank, _ = world()
    all_q = gather_with_grad(queries)
    all_p = gather_with_grad(positives)
    all_n = gather_with_grad(negatives) if negatives is not None and negatives.shape[0] > 0 else None
    n = queries.shape[0]
    return info_nce(all_q.float(), all_p.float(), None if all_n is None else all_n.float(), temperature,
                    query_offset=rank * n, num_queries=n, mask=mask)


class RandContext:
    """Captures the RNG state at construction; ``with ctx:`` replays it (GradCache's RandContext).

    The no-graph pass and the graph pass of a chunk then draw the same dropout masks.
    """

    def __init__(self, device: torch.device | None = None):
        self.cpu_state = torch.get_rng_state()
        self.cuda = device is not None and device.type == "cuda"
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device
        self._fork = None

    def __enter__(self):
        devices = [self.device] if self.cuda else []
        self._fork = torch.random.fork_rng(devices=devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        return self

    def __exit__(self, *exc):
        self._fork.__exit__(*exc)
        self._fork = None


class PlainBackward:
    """Backward hooks for a plain module (tests, single-process loops, DDP)."""

    def before_chunk(self, is_last: bool) -> None:
        pass

    def backward(self, tensor: torch.Tensor) -> None:
        tensor.backward()


class DeepSpeedBackward:
    """Backward hooks for a DeepSpeed engine with ``gradient_accumulation_steps=1``."""

    def __init__(self, engine):
        self.engine = engine

    def before_chunk(self, is_last: bool) -> None:
        # Set before the forward: ZeRO-3 decides at backward time whether to reduce the partitions.
        self.engine.set_gradient_accumulation_boundary(is_last)

    def backward(self, tensor: torch.Tensor) -> None:
        self.engine.backward(tensor, scale_wrt_gas=False)


def split_embeddings(emb: torch.Tensor, num_queries: int, num_negatives: int):
    q = emb[:num_queries]
    p = emb[num_queries : 2 * num_queries]
    n = emb[2 * num_queries : 2 * num_queries + num_queries * num_negatives]
    return q, p, n


def local_sequences(local: dict) -> list[list[int]]:
    """Queries, positives, negatives of one worker's batch, embedded together in one pass per chunk."""
    return list(local["query_ids"]) + list(local["positive_ids"]) + list(local["negative_ids"])


def chunks_of(n: int, chunk_size: int | None) -> list[slice]:
    size = n if chunk_size is None else chunk_size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def contrastive_backward(
    model,
    local: dict,
    pad_id: int,
    temperature: float,
    chunk_size: int | None,
    hooks: PlainBackward | DeepSpeedBackward | None = None,
    pooling: str = "last_token",
    device: torch.device | str = "cpu",
    loss_fn: Callable | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward + backward of one worker's local batch; gradients land in the model; returns the loss.

    ``local`` holds ``query_ids``, ``positive_ids`` (one list per query) and ``negative_ids``
    (``num_negatives`` per query, row-major). The returned loss is this worker's (detached).

    ``mask`` (optional): the step's false-negative mask over the global batch (``Guide.mask``),
    computed once per step before this call. It does not depend on the model being trained, so the
    one loss both paths compute (the plain forward's; with caching, the loss over the cached
    embeddings whose gradients the graph pass replays) applies the same mask.
    """
    hooks = hooks or PlainBackward()
    loss_fn = loss_fn or cross_worker_info_nce
    device = torch.device(device)
    seqs = local_sequences(local)
    nq, k = len(local["query_ids"]), int(local["num_negatives"])

    def run(part: Sequence[Sequence[int]]) -> torch.Tensor:
        ids, mask = pad_batch(part, pad_id, "right")
        return embed(model, ids.to(device), mask.to(device), pooling, normalize=False)

    def loss_of(emb: torch.Tensor) -> torch.Tensor:
        q, p, n = split_embeddings(emb, nq, k)
        if mask is None:  # a custom loss_fn need not take a mask
            return loss_fn(q, p, n if k > 0 else None, temperature)
        return loss_fn(q, p, n if k > 0 else None, temperature, mask=mask)

    if chunk_size is None:
        hooks.before_chunk(True)
        loss = loss_of(run(seqs))
        hooks.backward(loss)
        return loss.detach()

    parts = chunks_of(len(seqs), chunk_size)
    states, cached = [], []
    with torch.no_grad():
        for part in parts:
            states.append(RandContext(device))
            cached.append(run(seqs[part]))
    reps = torch.cat(cached).detach().float().requires_grad_()
    loss = loss_of(reps)
    loss.backward()  # only to the cached embeddings (and through the gathers to other workers')
    grads = reps.grad
    for i, (part, state) in enumerate(zip(parts, states, strict=True)):
        hooks.before_chunk(i == len(parts) - 1)
        with state:
            emb = run(seqs[part])
        surrogate = (emb.float() * grads[part]).sum()
        hooks.backward(surrogate)
    return loss.detach()
