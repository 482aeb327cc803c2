"""Token-budget batching across concurrent requests (pure parts; Ray's ``@serve.batch`` does the queueing).

A request's token sequences enter the batch queue as chunks, each within the budget on its own.
``padded_tokens`` is the ``batch_size_fn`` given to ``@serve.batch`` with ``max_batch_size`` set to
the budget, so a batch (of chunks from many requests) never exceeds ``max_batch_tokens`` padded
tokens: rows x longest row, the size of the one forward pass that would hold them all.
"""

from __future__ import annotations

from collections.abc import Sequence

from embedforge.encoder import token_budget_batches


def padded_tokens(chunks: Sequence[Sequence[Sequence[int]]]) -> int:
    """Rows x longest row over every sequence of every chunk (the ``batch_size_fn``)."""
    rows = 0
    longest = 0
    for chunk in chunks:
        rows += len(chunk)
        for seq in chunk:
            if len(seq) > longest:
                longest = len(seq)
    return rows * longest


def split_for_budget(sequences: Sequence[Sequence[int]], budget: int) -> list[list[int]]:
    """Index groups of one request, each within ``budget`` padded tokens (longest first).

    A sequence longer than the budget on its own is an error: the caller validates lengths first.
    """
    too_long = [i for i, s in enumerate(sequences) if len(s) > budget]
    if too_long:
        raise ValueError(f"sequence {too_long[0]} has {len(sequences[too_long[0]])} tokens, over the batch "
                         f"budget of {budget}")
    return token_budget_batches([len(s) for s in sequences], budget)
