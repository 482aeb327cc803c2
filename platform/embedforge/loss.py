"""InfoNCE with in-batch and hard negatives (the paper's Eq. 2, τ = 0.02).

``info_nce`` is the pure tensor maths; ``InfoNCELoss`` is the small module the trainer holds.
``false_negative_mask`` is the optional GISTEmbed-style masking (Solatorio 2024): a frozen guide
model's similarities pick the candidates that are more likely unlabeled positives than negatives, and
``info_nce(..., mask=...)`` drops them from the softmax.
"""

from __future__ import annotations

from collections.abc import Sequence

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


MARGIN_STRATEGIES = ("absolute", "relative")


def false_negative_mask(
    guide_scores: torch.Tensor,
    positive_index: torch.Tensor | Sequence[int],
    margin_strategy: str = "absolute",
    margin: float = 0.0,
) -> torch.Tensor:
    """Boolean mask, True where the guide scores a candidate above its query's positive (GISTEmbed).

    ``guide_scores`` ``(nq, nc)``: the guide model's similarity of every query with every candidate,
    in the columns of ``similarity_logits`` (positives, then hard negatives); ``positive_index``
    ``(nq,)``: the column of each query's own positive. With ``s+`` the guide's score of that positive,
    a candidate is masked when its score is

    * ``absolute``: ``> s+ - margin`` (``margin`` 0: scored strictly above the positive);
    * ``relative``: ``> s+ * (1 - margin)`` (``margin`` 0.05: above 95 % of the positive's score).

    These are sentence-transformers' ``GISTEmbedLoss`` rules. The positive itself is never masked.
    """
    if margin_strategy not in MARGIN_STRATEGIES:
        raise ValueError(f"margin_strategy must be one of {', '.join(MARGIN_STRATEGIES)}, got {margin_strategy!r}")
    if guide_scores.dim() != 2:
        raise ValueError(f"guide_scores must be (queries, candidates), got shape {tuple(guide_scores.shape)}")
    index = torch.as_tensor(positive_index, dtype=torch.long, device=guide_scores.device).reshape(-1)
    if index.shape[0] != guide_scores.shape[0]:
        raise ValueError(f"positive_index has {index.shape[0]} entries for {guide_scores.shape[0]} queries")
    rows = torch.arange(guide_scores.shape[0], device=guide_scores.device)
    positive = guide_scores[rows, index].unsqueeze(1)
    threshold = positive - margin if margin_strategy == "absolute" else positive * (1 - margin)
    mask = guide_scores > threshold
    mask[rows, index] = False
    return mask


def info_nce(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    temperature: float = 0.02,
    query_offset: int = 0,
    num_queries: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each query against its own positive.

    ``query_offset``/``num_queries`` pick a slice of the query rows: a worker holding the gathered
    global batch scores only its local queries (whose positives sit at the same global indices).

    ``mask`` (optional, bool, the shape of ``similarity_logits(queries, positives, negatives)``, i.e.
    every query row, not only the scored slice): True cells get a logit of -inf, so those candidates
    leave the softmax (and get no gradient). A query's own positive is never masked, whatever the mask
    says. ``false_negative_mask`` builds one from a guide model's scores.
    """
    logits = similarity_logits(queries, positives, negatives, temperature)
    if num_queries is None:
        num_queries = queries.shape[0] - query_offset
    rows = slice(query_offset, query_offset + num_queries)
    labels = torch.arange(query_offset, query_offset + num_queries, device=logits.device)
    scored = logits[rows]
    if mask is not None:
        if tuple(mask.shape) != tuple(logits.shape):
            raise ValueError(f"mask has shape {tuple(mask.shape)}; the logits (every query x every document) "
                             f"have {tuple(logits.shape)}")
        local = mask[rows].to(device=logits.device, dtype=torch.bool).clone()
        local[torch.arange(num_queries, device=logits.device), labels] = False  # the positive stays
        scored = scored.masked_fill(local, float("-inf"))
    return F.cross_entropy(scored, labels)


class InfoNCELoss(nn.Module):
    """InfoNCE as an ``nn.Module``: a thin, parameter-free wrapper that holds τ and calls ``info_nce``.

    ``temperature`` (τ, default 0.02 as in the paper) must be > 0, else ``ValueError`` at construction.
    ``forward(queries, positives, negatives=None, query_offset=0, num_queries=None, mask=None)`` returns
    ``info_nce(queries, positives, negatives, self.temperature, query_offset, num_queries, mask)``: logits
    are cosine similarities / τ (``similarity_logits``) of each query against every document in the
    batch — all positives ``(B, dim)`` followed by any hard negatives ``(B*k, dim)``, so other queries'
    positives serve as in-batch negatives — and the loss is the mean cross-entropy of each query
    against its own positive (the column at its row index). ``query_offset``/``num_queries`` score
    only a slice of the query rows (a worker's local queries within the gathered global batch).
    ``mask`` (optional): candidates to drop from each query's softmax (``info_nce``'s ``mask``; a
    query's positive is never dropped). Returns a scalar tensor.
    """

    def __init__(self, temperature: float = 0.02):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, queries, positives, negatives=None, query_offset=0, num_queries=None, mask=None):
        return info_nce(queries, positives, negatives, self.temperature, query_offset, num_queries, mask)
