import math

import pytest
import torch
import torch.nn.functional as F

from embedforge.loss import InfoNCELoss, info_nce, similarity_logits


def test_info_nce_equals_a_hand_computed_2x2_case():
    # q0 = e0, q1 = e1; positives p0 = e0, p1 = (e0 + e1)/sqrt2; tau = 0.5
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    c = 1 / math.sqrt(2)
    # row 0 logits: [1, c]/tau, label 0; row 1 logits: [0, c]/tau, label 1
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    l1 = -math.log(math.exp(c / tau) / (math.exp(0) + math.exp(c / tau)))
    assert info_nce(q, p, temperature=tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_equals_cross_entropy_over_hand_built_matrix_with_hard_negatives():
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 8)  # 2 hard negatives per query
    tau = 0.02
    docs = torch.cat([p, n])
    sims = torch.stack([torch.stack([F.cosine_similarity(qi, dj, dim=0) for dj in docs]) for qi in q]) / tau
    expected = F.cross_entropy(sims, torch.arange(4))
    assert info_nce(q, p, n, tau).item() == pytest.approx(expected.item(), rel=1e-5)
    assert InfoNCELoss(tau)(q, p, n).item() == pytest.approx(expected.item(), rel=1e-5)


def test_query_slice_scores_only_local_queries():
    torch.manual_seed(1)
    q, p = torch.randn(6, 4), torch.randn(6, 4)
    logits = similarity_logits(q, p, temperature=0.1)
    expected = F.cross_entropy(logits[2:4], torch.tensor([2, 3]))
    assert info_nce(q, p, temperature=0.1, query_offset=2, num_queries=2).item() == pytest.approx(expected.item())


def test_perfect_retrieval_has_near_zero_loss():
    q = torch.eye(3)
    assert info_nce(q, q.clone(), temperature=0.02).item() < 1e-6


def test_gradient_flows_and_temperature_validated():
    q = torch.randn(3, 5, requires_grad=True)
    info_nce(q, torch.randn(3, 5)).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, q, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(-1)
