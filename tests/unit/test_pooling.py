import pytest
import torch

from embedforge.pooling import (
    l2_normalize,
    last_token_pool,
    mean_pool,
    pool,
    position_ids_from_mask,
    weighted_mean_pool,
)

# Two sequences of 3 and 2 real tokens; hidden value = 10*row + position-in-text + 1.
RIGHT_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
LEFT_MASK = torch.tensor([[1, 1, 1], [0, 1, 1]])
RIGHT_H = torch.tensor([[[1.0], [2.0], [3.0]], [[11.0], [12.0], [-99.0]]])
LEFT_H = torch.tensor([[[1.0], [2.0], [3.0]], [[-99.0], [11.0], [12.0]]])


@pytest.mark.parametrize("h,mask", [(RIGHT_H, RIGHT_MASK), (LEFT_H, LEFT_MASK)], ids=["right", "left"])
def test_last_token_takes_last_real_token(h, mask):
    assert last_token_pool(h, mask).squeeze(-1).tolist() == [3.0, 12.0]


@pytest.mark.parametrize("h,mask", [(RIGHT_H, RIGHT_MASK), (LEFT_H, LEFT_MASK)], ids=["right", "left"])
def test_mean_ignores_padding(h, mask):
    assert mean_pool(h, mask).squeeze(-1).tolist() == pytest.approx([2.0, 11.5])


@pytest.mark.parametrize("h,mask", [(RIGHT_H, RIGHT_MASK), (LEFT_H, LEFT_MASK)], ids=["right", "left"])
def test_weighted_mean_weights_by_text_position(h, mask):
    # (1*1 + 2*2 + 3*3) / 6 and (1*11 + 2*12) / 3
    assert weighted_mean_pool(h, mask).squeeze(-1).tolist() == pytest.approx([14 / 6, 35 / 3])


def test_pool_dispatches_by_name_and_refuses_an_unknown_pooling():
    assert torch.equal(pool(RIGHT_H, RIGHT_MASK, "last_token"), last_token_pool(RIGHT_H, RIGHT_MASK))
    with pytest.raises(ValueError, match="last_token, mean, weighted_mean"):
        pool(RIGHT_H, RIGHT_MASK, "cls")


def test_position_ids_count_real_tokens():
    assert position_ids_from_mask(LEFT_MASK).tolist() == [[0, 1, 2], [0, 0, 1]]
    assert position_ids_from_mask(RIGHT_MASK).tolist() == [[0, 1, 2], [0, 1, 1]]


def test_l2_normalize_gives_unit_length():
    v = l2_normalize(torch.tensor([[3.0, 4.0]]))
    assert v[0].tolist() == pytest.approx([0.6, 0.8])
