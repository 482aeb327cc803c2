"""train/loop.py's ``step_seed``: every (run.seed, rank, step) gets its own torch seed, within the range
``torch.manual_seed`` takes. The loop's use of it (resumed steps repeat bit for bit, with dropout on) is
tested in tests/integration/test_train_job.py."""

from __future__ import annotations

import torch

from embedforge.train.loop import step_seed


def test_every_seed_rank_and_step_gets_its_own_torch_seed():
    keys = [(seed, rank, step) for seed in (0, 1, 2, 12345) for rank in range(8) for step in range(2000)]
    seeds = [step_seed(*k) for k in keys]
    assert len(set(seeds)) == len(keys)
    assert all(0 <= s < 2**63 for s in seeds)
    assert step_seed(2**62, 7, 10**6) < 2**63


def test_the_same_step_draws_the_same_dropout_mask():
    def mask(seed, rank, step):
        torch.manual_seed(step_seed(seed, rank, step))
        return torch.nn.functional.dropout(torch.ones(64), p=0.5, training=True)

    assert torch.equal(mask(0, 1, 5), mask(0, 1, 5))
    assert not torch.equal(mask(0, 1, 5), mask(0, 0, 5))
    assert not torch.equal(mask(0, 1, 5), mask(0, 1, 6))
