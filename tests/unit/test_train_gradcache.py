"""Gradient caching on one process: the LoRA gradient equals the plain full-batch gradient."""

from __future__ import annotations

import pytest
import torch

from embedforge.config.train import LoraSettings
from embedforge.testing import tiny_model
from embedforge.train.gradcache import RandContext, chunks_of, contrastive_backward
from embedforge.train.model import add_lora


def lora_model(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    # init_lora_weights=False: with zero-initialised B the A gradients are zero and prove nothing.
    return add_lora(tiny_model("llama", seed=seed), LoraSettings(r=4, alpha=8, dropout=dropout),
                    init_lora_weights=False).train()


def batch(n=6, k=1, seed=0):
    g = torch.Generator().manual_seed(seed)

    def seq():
        return [1] + torch.randint(4, 40, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist() + [2]

    return {"query_ids": [seq() for _ in range(n)], "positive_ids": [seq() for _ in range(n)],
            "negative_ids": [seq() for _ in range(n * k)], "num_negatives": k}


def lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run(chunk_size, dropout=0.0, rng_seed=123, local=None, mask=None):
    model = lora_model(dropout)
    torch.manual_seed(rng_seed)
    loss = contrastive_backward(model, local or batch(), pad_id=0, temperature=0.05, chunk_size=chunk_size,
                                mask=mask)
    return loss, lora_grads(model)


@pytest.mark.parametrize("chunk_size", [1, 5, 100])
def test_gradcache_gradient_equals_full_batch_gradient(chunk_size):
    ref_loss, ref = run(None)
    loss, got = run(chunk_size)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert any(g.abs().max() > 1e-3 for n, g in ref.items() if "lora_A" in n)  # non-trivial A gradients
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=2e-4, msg=name)


def test_dropout_masks_are_replayed_per_chunk():
    # One chunk covering the batch draws the same dropout masks as the plain forward only if the
    # RNG state is replayed for the graph pass; several chunks still give the loss of the cached pass.
    ref_loss, ref = run(None, dropout=0.3)
    loss, got = run(100, dropout=0.3)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=2e-4, msg=name)


def test_without_rng_replay_the_dropout_gradient_differs(monkeypatch):
    ref_loss, ref = run(100, dropout=0.3)

    class NoReplay(RandContext):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr("embedforge.train.gradcache.RandContext", NoReplay)
    _, got = run(100, dropout=0.3)
    assert any(not torch.allclose(got[n], ref[n], atol=1e-5) for n in ref)


def test_hard_negatives_change_the_gradient_and_zero_negatives_work():
    _, with_negs = run(3, local=batch(k=2))
    _, none = run(3, local={**batch(k=2), "negative_ids": [], "num_negatives": 0})
    assert any(not torch.allclose(with_negs[n], none[n]) for n in none)


def test_chunks_cover_every_sequence_once():
    parts = chunks_of(10, 4)
    assert [(s.start, s.stop) for s in parts] == [(0, 4), (4, 8), (8, 10)]
    assert chunks_of(3, None) == [slice(0, 3)]


# --- false-negative masking (train.guide_model): the mask is applied in the loss both paths use ---------

def step_mask(n=6, k=1, seed=5, p=0.4):
    """A fixed mask over the batch's logits (every query x every positive and negative)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n + n * k, generator=g) < p


@pytest.mark.parametrize("chunk_size", [1, 5, 100])
def test_masked_gradcache_gradient_equals_masked_full_batch_gradient(chunk_size):
    mask = step_mask()
    ref_loss, ref = run(None, mask=mask)
    loss, got = run(chunk_size, mask=mask)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=2e-4, msg=name)
    # the mask matters: the unmasked loss and gradient differ
    plain_loss, plain = run(chunk_size)
    assert abs(plain_loss.item() - loss.item()) > 1e-4
    assert any(not torch.allclose(plain[n], got[n], atol=1e-5) for n in plain)


def test_masked_gradcache_with_dropout_replays_and_an_empty_mask_changes_nothing():
    mask = step_mask(n=6, k=2, seed=6)
    local = batch(k=2)
    ref_loss, ref = run(None, dropout=0.3, local=local, mask=mask)
    loss, got = run(100, dropout=0.3, local=local, mask=mask)
    assert loss == pytest.approx(ref_loss.item(), rel=1e-5)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=2e-4, msg=name)
    plain_loss, plain = run(3, local=local)
    empty_loss, empty = run(3, local=local, mask=torch.zeros(6, 18, dtype=torch.bool))
    assert empty_loss.item() == plain_loss.item()
    for name in plain:
        torch.testing.assert_close(empty[name], plain[name], rtol=0, atol=0, msg=name)


def test_cross_worker_masked_loss_equals_the_single_process_masked_loss(monkeypatch):
    """Two workers simulated in one process: each gathers the global batch (a fake all_gather that
    returns every worker's rows, as the real one does) and applies its rows of the global mask. The
    per-worker losses are the global loss's local rows, their mean is the single-process masked loss,
    and the mean's gradient is the single-process gradient (what DeepSpeed's averaging gives)."""
    from embedforge.loss import info_nce
    from embedforge.train import gradcache

    torch.manual_seed(0)
    world_size, n, k, dim, tau = 2, 3, 2, 8, 0.05
    q, p, neg = torch.randn(world_size * n, dim), torch.randn(world_size * n, dim), torch.randn(world_size * n * k, dim)
    mask = step_mask(n=world_size * n, k=k, seed=9, p=0.5)
    leaves = [x.clone().requires_grad_() for x in (q, p, neg)]
    ref = info_nce(*leaves, tau, mask=mask)
    ref.backward()
    ref_grads = [x.grad for x in leaves]

    glob = [x.clone().requires_grad_() for x in (q, p, neg)]  # the gathered tensors, shared by the "workers"
    losses = []
    for rank in range(world_size):
        rows = [slice(rank * n, (rank + 1) * n)] * 2 + [slice(rank * n * k, (rank + 1) * n * k)]
        local = [g.detach()[r] for g, r in zip(glob, rows, strict=True)]
        by_local = {id(x): g for x, g in zip(local, glob, strict=True)}

        def fake_gather(x, by_local=by_local):
            return by_local[id(x)]

        monkeypatch.setattr(gradcache, "world", lambda rank=rank: (rank, world_size))
        monkeypatch.setattr(gradcache, "gather_with_grad", fake_gather)
        loss = gradcache.cross_worker_info_nce(*local, tau, mask=mask)
        direct = info_nce(q, p, neg, tau, query_offset=rank * n, num_queries=n, mask=mask)
        assert loss.item() == pytest.approx(direct.item(), rel=1e-6)
        losses.append(loss)
    mean = sum(losses) / world_size
    assert mean.item() == pytest.approx(ref.item(), rel=1e-6)
    mean.backward()
    for got, want in zip(glob, ref_grads, strict=True):
        torch.testing.assert_close(got.grad, want, rtol=1e-5, atol=1e-6)
