"""The training loop's own collectives (besides DeepSpeed's and the loss's gather), on the group's device.

The guide model's embeddings (``train.guide_model``) are gathered here too, without gradient (``gather_rows``).

NCCL, the backend of GPU training, accepts only CUDA tensors: a collective on a tensor created with
the default (CPU) device fails a GPU run at its first step, while gloo on a CPU test machine accepts
it. So every tensor here is created on the ``device`` the caller passes (the DeepSpeed engine's,
``train.engine.engine_device``), and results come back to the host afterwards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_workers(value: float, device: torch.device) -> float:
    """``value`` summed over every worker (the value itself with one worker)."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if _group_size() > 1:
        dist.all_reduce(t)
    return float(t.item())


def mean_over_workers(value: torch.Tensor, device: torch.device) -> float:
    """A scalar tensor (e.g. this worker's loss) averaged over every worker."""
    t = value.detach().to(device=device, dtype=torch.float32).reshape(1).clone()
    size = _group_size()
    if size > 1:
        dist.all_reduce(t)
        t /= size
    return float(t.item())


def _order_id(order: str) -> int:
    return int(order[:15], 16)


def check_same_batch(order: str, device: torch.device) -> None:
    """Every worker must hold the same global batch (the same record of the unsplit dataset): the max
    of the id and the max of its negation agree only when all ids are equal."""
    if _group_size() == 1:
        return
    mine = torch.tensor([_order_id(order), -_order_id(order)], dtype=torch.long, device=device)
    dist.all_reduce(mine, op=dist.ReduceOp.MAX)
    if mine[0].item() != -mine[1].item():
        raise RuntimeError("workers disagree on the current global batch (dataset order not preserved)")


def gather_rows(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every worker's rows of ``x`` in rank order, without gradient (``x`` itself with one worker).

    Every worker must pass the same shape (the batch planner gives each the same number of rows).
    ``x`` is moved to ``device``, the group's, first; the result stays there.
    """
    x = x.detach().to(device).contiguous()
    size = _group_size()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x)
    return torch.cat(parts)
