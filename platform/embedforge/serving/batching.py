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


def forward_groups(lengths: Sequence[int], budget: int, overhead_tokens: int) -> list[list[int]]:
    """Split one batch into forward passes that minimise padded tokens + ``overhead_tokens`` per pass.

    Requests arrive in random length order, so one forward over a whole batch pads every row to the
    batch's longest (for STSB-like text, ~2-3x the real tokens). Cutting the length-sorted rows into
    several passes removes most of that padding but each pass has a fixed cost (kernel launches,
    Python, thread sync), expressed here in token-equivalents. A dynamic programme over the runs of
    equal length (an optimal cut never splits one), so it costs O(distinct lengths^2), not O(rows^2):
    exact when the budget holds the whole batch (as in a replica, where ``@serve.batch`` enforces
    it); otherwise a group over the budget is cut into budget-sized passes of its widest row.
    Every pass stays within ``budget`` padded tokens. Returns index groups, longest rows first.
    """
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    # Runs of equal length in descending order: (width, count).
    runs: list[list[int]] = []
    for i in order:
        if runs and runs[-1][0] == lengths[i]:
            runs[-1][1] += 1
        else:
            runs.append([lengths[i], 1])
    if runs[0][0] > budget:
        raise ValueError(f"a sequence has {runs[0][0]} tokens, over the batch budget of {budget}")
    m = len(runs)
    # best[j]: least cost of runs[:j]; cut[j]: where the last group of that optimum starts.
    best = [0.0] + [float("inf")] * m
    cut = [0] * (m + 1)
    for j in range(1, m + 1):
        rows = 0
        for i in range(j - 1, -1, -1):  # the group runs[i:j] is padded to runs[i]'s width
            rows += runs[i][1]
            width = runs[i][0]
            per_pass = budget // width
            passes = -(-rows // per_pass)
            cost = best[i] + rows * width + passes * overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    run_starts = [0]
    for _, count in runs:
        run_starts.append(run_starts[-1] + count)
    spans = []  # (first run, end run) of each chosen group, last group first
    j = m
    while j > 0:
        spans.append((cut[j], j))
        j = cut[j]
    groups: list[list[int]] = []
    for i, j in reversed(spans):
        lo, hi = run_starts[i], run_starts[j]
        per_pass = budget // runs[i][0]
        groups.extend(order[s:min(s + per_pass, hi)] for s in range(lo, hi, per_pass))
    return groups
