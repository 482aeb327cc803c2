import math

import pytest
import torch
import torch.nn.functional as F

from embedforge.loss import InfoNCELoss, false_negative_mask, info_nce, similarity_logits


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


# --- false-negative masking (GISTEmbed-style, train.guide_model) -------------------------------------------

# 3 queries x 4 candidates (3 positives, 1 hard negative); query i's positive is column i.
GUIDE_3x4 = torch.tensor([
    [0.70, 0.72, 0.40, 0.66],   # positive 0.70
    [0.20, 0.50, 0.55, 0.10],   # positive 0.50
    [0.90, 0.10, 0.30, 0.95],   # positive 0.30
], dtype=torch.float64)


def test_false_negative_mask_2x2_masks_what_the_guide_scores_above_the_positive():
    scores = torch.tensor([[0.8, 0.9], [0.3, 0.5]])
    mask = false_negative_mask(scores, torch.tensor([0, 1]))
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[False, True], [False, False]]


@pytest.mark.parametrize("strategy, margin, expected", [
    # strictly above the positive
    ("absolute", 0.0, [[False, True, False, False], [False, False, True, False], [True, False, False, True]]),
    # above positive - 0.05: row 0's 0.66 > 0.65 joins
    ("absolute", 0.05, [[False, True, False, True], [False, False, True, False], [True, False, False, True]]),
    # above positive x 0.95: row 0's 0.66 < 0.665 stays, row 1's 0.55 > 0.475 goes
    ("relative", 0.05, [[False, True, False, False], [False, False, True, False], [True, False, False, True]]),
    # above positive x 0.9: row 0's 0.66 > 0.63 goes
    ("relative", 0.1, [[False, True, False, True], [False, False, True, False], [True, False, False, True]]),
    # above positive - 0.35: row 1's 0.20 > 0.15 goes too, row 2's 0.10 > -0.05 too
    ("absolute", 0.35, [[False, True, True, True], [True, False, True, False], [True, True, False, True]]),
])
def test_false_negative_mask_3x4_absolute_and_relative_margins(strategy, margin, expected):
    mask = false_negative_mask(GUIDE_3x4, torch.arange(3), strategy, margin)
    assert mask.tolist() == expected


def test_false_negative_mask_never_masks_the_positive():
    # With any margin > 0 a positive scores above its own threshold; it stays unmasked all the same.
    for strategy, margin in (("absolute", 0.5), ("relative", 0.9)):
        mask = false_negative_mask(GUIDE_3x4, torch.arange(3), strategy, margin)
        assert not mask.diagonal().any()
    # positives elsewhere than the diagonal (a worker's slice of a gathered batch: offset 2)
    scores = torch.tensor([[0.1, 0.2, 0.5, 0.6, 0.9], [0.1, 0.2, 0.5, 0.6, 0.9]])
    mask = false_negative_mask(scores, [2, 3], "absolute", 0.0)
    assert mask.tolist() == [[False, False, False, True, True], [False, False, False, False, True]]


def test_false_negative_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="margin_strategy must be one of absolute, relative"):
        false_negative_mask(GUIDE_3x4, torch.arange(3), "ratio", 0.1)
    with pytest.raises(ValueError, match="positive_index has 2 entries for 3 queries"):
        false_negative_mask(GUIDE_3x4, [0, 1])


def _unit(angle):
    return [math.cos(angle), math.sin(angle)]


def test_masked_info_nce_2x2_hand_computed():
    # The 2x2 case above: q0 = e0, q1 = e1; p0 = e0, p1 = (e0 + e1)/sqrt2; tau = 0.5.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    tau, c = 0.5, 1 / math.sqrt(2)
    l1 = -math.log(math.exp(c / tau) / (math.exp(0) + math.exp(c / tau)))
    # Mask row 0's in-batch negative p1: row 0 is left with its positive alone (loss 0), row 1 as before.
    mask = torch.tensor([[False, True], [False, False]])
    assert info_nce(q, p, temperature=tau, mask=mask).item() == pytest.approx(l1 / 2, rel=1e-6)
    # Everything masked: only the positives stay, both losses 0.
    assert info_nce(q, p, temperature=tau, mask=torch.ones(2, 2, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-7)


def test_masked_info_nce_3x4_with_a_hard_negative_hand_computed():
    # Unit vectors at angles: cosine = cos(angle difference). Columns: p0, p1, p2, n0.
    qa, da = [0.0, 1.0, 2.0], [0.3, 1.2, 1.8, 0.6]
    q = torch.tensor([_unit(a) for a in qa], dtype=torch.float64)
    p = torch.tensor([_unit(a) for a in da[:3]], dtype=torch.float64)
    n = torch.tensor([_unit(da[3])], dtype=torch.float64)
    tau = 0.1
    mask = false_negative_mask(GUIDE_3x4, torch.arange(3), "absolute", 0.05)
    kept = [[j for j in range(4) if not mask[i, j]] for i in range(3)]
    assert kept == [[0, 2], [0, 1, 3], [1, 2]]
    expected = 0.0
    for i in range(3):
        s = [math.cos(qa[i] - da[j]) / tau for j in range(4)]
        expected += -(s[i] - math.log(sum(math.exp(s[j]) for j in kept[i])))
    assert info_nce(q, p, n, tau, mask=mask).item() == pytest.approx(expected / 3, rel=1e-9)
    # A worker's slice (rows 1..2) takes its rows of the global mask.
    part = sum(-(math.cos(qa[i] - da[i]) / tau - math.log(sum(math.exp(math.cos(qa[i] - da[j]) / tau)
                                                               for j in kept[i]))) for i in (1, 2)) / 2
    assert info_nce(q, p, n, tau, query_offset=1, num_queries=2, mask=mask).item() == pytest.approx(part, rel=1e-9)
    assert InfoNCELoss(tau)(q, p, n, mask=mask).item() == pytest.approx(expected / 3, rel=1e-9)


def test_no_candidate_masked_gives_todays_loss():
    torch.manual_seed(3)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(8, 8)
    plain = info_nce(q, p, n, 0.02)
    assert torch.equal(info_nce(q, p, n, 0.02, mask=torch.zeros(4, 12, dtype=torch.bool)), plain)
    # a mask that marks only the positives masks nothing: the positive is never masked
    only_positives = torch.zeros(4, 12, dtype=torch.bool)
    only_positives[torch.arange(4), torch.arange(4)] = True
    assert torch.equal(info_nce(q, p, n, 0.02, mask=only_positives), plain)
    # nor does a guide that scores nothing above a positive
    scores = torch.full((4, 12), 0.1)
    scores[torch.arange(4), torch.arange(4)] = 0.9
    assert torch.equal(info_nce(q, p, n, 0.02, mask=false_negative_mask(scores, torch.arange(4))), plain)


def test_masked_candidates_get_no_gradient_and_mask_shape_is_checked():
    torch.manual_seed(4)
    q, p = torch.randn(3, 5), torch.randn(3, 5)
    n = torch.randn(3, 5, requires_grad=True)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[:, 4] = True  # the second hard negative, for every query
    info_nce(q, p, n, 0.1, mask=mask).backward()
    assert n.grad[1].abs().sum() == 0 and n.grad[0].abs().sum() > 0
    with pytest.raises(ValueError, match=r"mask has shape \(3, 3\); the logits .* have \(3, 6\)"):
        info_nce(q, p, n, 0.1, mask=torch.zeros(3, 3, dtype=torch.bool))
