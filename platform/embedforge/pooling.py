"""Pooling of decoder hidden states into one vector per sequence.

Every function takes ``hidden`` (batch, seq, dim) and ``attention_mask`` (batch, seq) and works the
same under left and right padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POOLINGS = ("last_token", "mean", "weighted_mean")

# embedforge's pooling name -> sentence-transformers' Pooling mode (export writes it, loading reads it back).
SENTENCE_TRANSFORMERS_MODES = {"last_token": "lasttoken", "mean": "mean", "weighted_mean": "weightedmean"}
POOLING_OF_SENTENCE_TRANSFORMERS_MODE = {st: ours for ours, st in SENTENCE_TRANSFORMERS_MODES.items()}


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last attended position (the appended EOS), whatever the padding side."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def weighted_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean (SGPT): token i of n real tokens weighs i / sum(1..n).

    Weights count real tokens only (a cumulative sum of the mask), so left padding does not shift them.
    """
    mask = attention_mask.to(hidden.dtype)
    weights = torch.cumsum(mask, dim=1) * mask
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (hidden * weights.unsqueeze(-1)).sum(dim=1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "last_token":
        return last_token_pool(hidden, attention_mask)
    if pooling == "mean":
        return mean_pool(hidden, attention_mask)
    if pooling == "weighted_mean":
        return weighted_mean_pool(hidden, attention_mask)
    raise ValueError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2, dim=-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only.

    HF decoders derive positions from the cache, not the mask, so a left-padded row would otherwise
    see its text at shifted rotary positions and embed differently from the same text right-padded.
    """
    return (torch.cumsum(attention_mask.long(), dim=1) - 1).clamp(min=0)
