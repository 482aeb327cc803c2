"""serving/batching.py: padded-token counts, cutting a batch into forward passes within the token budget, and
the queue that batches concurrent requests while the model is busy."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embedforge.serving.batching import ForwardQueue, forward_groups, padded_tokens, split_for_budget


def test_padded_tokens_is_rows_times_longest():
    assert padded_tokens([[[1, 2, 3]], [[1], [1, 2]]]) == 3 * 3
    assert padded_tokens([]) == 0


@given(st.lists(st.integers(1, 50), min_size=1, max_size=60), st.integers(50, 400))
def test_split_for_budget_covers_everything_within_budget(lengths, budget):
    seqs = [[0] * n for n in lengths]
    groups = split_for_budget(seqs, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(seqs)))
    for g in groups:
        assert padded_tokens([[seqs[i] for i in g]]) <= budget


def forward_cost(groups, lengths, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=80), st.integers(40, 600), st.integers(0, 300))
def test_forward_groups_partition_within_budget_and_beat_simple_cuts(lengths, budget, overhead):
    groups = forward_groups(lengths, budget, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) * max(lengths[i] for i in g) <= budget for g in groups)
    # No worse than one pass over everything, when the budget allows that (as in a replica, where
    # ForwardQueue already keeps the whole batch within the budget) ...
    if len(lengths) * max(lengths) <= budget:
        assert forward_cost(groups, lengths, overhead) <= forward_cost([list(range(len(lengths)))], lengths, overhead)
    # ... nor than one pass per distinct length (cut to the budget).
    per_length = []
    for n in set(lengths):
        rows = [i for i in range(len(lengths)) if lengths[i] == n]
        per_length += [rows[s:s + budget // n] for s in range(0, len(rows), budget // n)]
    assert forward_cost(groups, lengths, overhead) <= forward_cost(per_length, lengths, overhead)


@given(st.lists(st.integers(1, 30), min_size=1, max_size=7), st.integers(0, 100))
def test_forward_groups_is_optimal_over_contiguous_cuts(lengths, overhead):
    """Exhaustive check: every way to cut the length-sorted rows into passes costs at least as much."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = min(
        forward_cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)), strict=True)], lengths, overhead)
        for mask in range(2 ** (len(order) - 1))
        for cuts in [tuple(k + 1 for k in range(len(order) - 1) if mask >> k & 1)]
    )
    assert forward_cost(forward_groups(lengths, 10_000, overhead), lengths, overhead) == best


def test_forward_groups_cut_per_length_without_overhead_and_once_with_a_huge_one():
    lengths = [9, 3, 9, 5, 3, 3]
    assert forward_groups(lengths, 1000, 0) == [[0, 2], [3], [1, 4, 5]]  # a pass per length: no padding
    assert forward_groups(lengths, 1000, 10_000) == [[0, 2, 3, 1, 4, 5]]  # one pass
    assert forward_groups(lengths, 18, 10_000) == [[0, 2], [3], [1, 4, 5]]  # the budget still holds
    assert forward_groups([], 10, 0) == []
    with pytest.raises(ValueError, match="over the batch budget of 4"):
        forward_groups([5], 4, 0)


def test_split_for_budget_refuses_a_sequence_over_budget():
    with pytest.raises(ValueError, match="over the batch budget of 4"):
        split_for_budget([[0] * 5], 4)


class GatedModel:
    """Stands in for the model thread: records each batch, holds it until ``gate`` is set, and returns one
    vector per chunk (its row lengths), so each caller can check it got its own chunk's result."""

    def __init__(self):
        self.batches: list[list] = []
        self.gate = asyncio.Event()

    async def __call__(self, chunks):
        self.batches.append(chunks)
        await self.gate.wait()
        if any(chunk == [[666]] for chunk in chunks):
            raise RuntimeError("bad batch")
        return [[len(seq) for seq in chunk] for chunk in chunks]


def test_chunks_that_arrive_during_a_forward_pass_form_the_next_batch_together():
    async def scenario():
        model = GatedModel()
        queue = ForwardQueue(model, max_batch_tokens=1000)
        first = asyncio.create_task(queue.encode([[1, 2]]))
        await asyncio.sleep(0)  # the first batch starts alone (the model was idle) ...
        later = [asyncio.create_task(queue.encode([[1] * n])) for n in range(1, 6)]
        await asyncio.sleep(0.01)  # ... and the five callers arriving meanwhile wait for it
        assert len(model.batches) == 1
        model.gate.set()
        results = await asyncio.gather(first, *later)
        return model.batches, results

    batches, results = asyncio.run(scenario())
    assert [len(b) for b in batches] == [1, 5]  # Ray's @serve.batch gave 1 per batch under load here
    assert results == [[2], [1], [2], [3], [4], [5]]


def test_a_batch_stays_within_the_token_budget_oldest_chunks_first():
    async def scenario():
        model = GatedModel()
        model.gate.set()
        queue = ForwardQueue(model, max_batch_tokens=12)
        # 4 chunks of 2 rows x 3 tokens: padded 6 each, two fit the budget of 12
        results = await asyncio.gather(*(queue.encode([[i] * 3, [i] * 3]) for i in range(4)))
        return model.batches, results

    batches, results = asyncio.run(scenario())
    assert [len(b) for b in batches] == [2, 2]
    assert [c[0][0] for b in batches for c in b] == [0, 1, 2, 3]
    assert all(padded_tokens(b) <= 12 for b in batches) and results == [[3, 3]] * 4


def test_a_failing_batch_fails_its_callers_only_and_cancelled_callers_are_skipped():
    async def scenario():
        model = GatedModel()
        queue = ForwardQueue(model, max_batch_tokens=1000)
        first = asyncio.create_task(queue.encode([[1]]))
        await asyncio.sleep(0)
        bad = asyncio.create_task(queue.encode([[666]]))
        gone = asyncio.create_task(queue.encode([[7, 7, 7]]))
        await asyncio.sleep(0)
        gone.cancel()  # a client that went away: never encoded
        model.gate.set()
        out = await asyncio.gather(first, bad, return_exceptions=True)
        after = await queue.encode([[1, 1]])  # the queue still works
        return model.batches, out, after

    batches, (first, bad), after = asyncio.run(scenario())
    assert first == [1] and isinstance(bad, RuntimeError) and after == [2]
    assert [[c for c in b] for b in batches] == [[[[1]]], [[[666]]], [[[1, 1]]]]
