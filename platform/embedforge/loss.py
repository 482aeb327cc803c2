"""InfoNCE with in-batch and hard negatives (the paper's Eq. 2, τ = 0.02).

``info_nce`` is the pure tensor maths; ``InfoNCELoss`` is the small module the trainer holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def similarity_logits(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.02,
) -> torch.Tensor:
    """Cosine similarities / τ of every query against every document in the batch.

    Columns are ``[positives (B), negatives (B*k, any order)]``: each query's own positive sits at
    its row index and every other document (other queries' positives and all hard negatives) is a
    negative for it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    docs = positives if negatives is None or negatives.numel() == 0 else torch.cat([positives, negatives])
    q = F.normalize(queries, p=2, dim=-1)
    d = F.normalize(docs, p=2, dim=-1)
    return q @ d.T / temperature


def info_nce(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.02,
    query_offset: int = 0,
    num_queries: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each query against its own positive.

    ``query_offset``/``num_queries`` pick a slice of the query rows: a worker holding the gathered
    global batch scores only its local queries (whose positives sit at the same global indices).
    """
    logits = similarity_logits(queries, positives, negatives, temperature)
    if num_queries is None:
        num_queries = queries.shape[0] - query_offset
    rows = slice(query_offset, query_offset + num_queries)
    labels = torch.arange(query_offset, query_offset + num_queries, device=logits.device)
    return F.cross_entropy(logits[rows], labels)


class InfoNCELoss(nn.Module):
    """InfoNCE as an ``nn.Module``: a thin, parameter-free wrapper that holds τ and calls ``info_nce``.

    ``temperature`` (τ, default 0.02 as in the paper) must be > 0, else ``ValueError`` at construction.
    ``forward(queries, positives, negatives=None, query_offset=0, num_queries=None)`` returns
    ``info_nce(queries, positives, negatives, self.temperature, query_offset, num_queries)``: logits
    are cosine similarities / τ (``similarity_logits``) of each query against every document in the
    batch — all positives ``(B, dim)`` followed by any hard negatives ``(B*k, dim)``, so other queries'
    positives serve as in-batch negatives — and the loss is the mean cross-entropy of each query
    against its own positive (the column at its row index). ``query_offset``/``num_queries`` score
    only a slice of the query rows (a worker's local queries within the gathered global batch).
    Returns a scalar tensor.
    """

    def __init__(self, temperature: float = 0.02):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, queries, positives, negatives=None, query_offset=0, num_queries=None):
        return info_nce(queries, positives, negatives, self.temperature, query_offset, num_queries)
