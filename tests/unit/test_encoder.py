import numpy as np
import pytest
import torch

from embedforge.encoder import Encoder, token_budget_batches
from embedforge.testing import tiny_model

TEXTS = ["hello world", "a", "some much longer text that needs more tokens, ok?", "", "mid length text"]


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("pooling", ["last_token", "mean", "weighted_mean"])
def test_left_and_right_padding_give_identical_vectors(arch, pooling, tiny_tokenizer):
    model = tiny_model(arch)
    right = Encoder(model, tiny_tokenizer, pooling=pooling, padding_side="right").encode(TEXTS)
    left = Encoder(model, tiny_tokenizer, pooling=pooling, padding_side="left").encode(TEXTS)
    np.testing.assert_allclose(left, right, atol=1e-5)


def test_batched_equals_one_by_one_and_order_restored(tiny_tokenizer, tiny_llama):
    enc = Encoder(tiny_llama, tiny_tokenizer, batch_tokens=40)
    batched = enc.encode(TEXTS)
    single = np.concatenate([enc.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # different texts give different vectors (order really restored, not just shape)
    assert not np.allclose(batched[0], batched[1])


def test_last_token_vector_is_the_eos_hidden_state(tiny_tokenizer, tiny_llama):
    enc = Encoder(tiny_llama, tiny_tokenizer, normalize=False)
    ids = enc.tokenize(["abc"])[0]
    with torch.no_grad():
        h = tiny_llama(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    np.testing.assert_allclose(enc.encode(["abc"])[0], h.numpy(), atol=1e-5)


def test_instruction_changes_query_vectors(tiny_tokenizer, tiny_llama):
    enc = Encoder(tiny_llama, tiny_tokenizer)
    plain = enc.encode(["cats"])
    instructed = enc.encode(["cats"], instruction="find pets")
    assert not np.allclose(plain, instructed)
    np.testing.assert_allclose(instructed, enc.encode(["Instruct: find pets\nQuery: cats"]), atol=1e-6)


def test_empty_and_over_long_texts_encode_and_wrong_types_or_pooling_are_refused(tiny_tokenizer, tiny_llama):
    enc = Encoder(tiny_llama, tiny_tokenizer, max_length=8)
    assert enc.encode([]).shape == (0, 32)
    assert enc.encode([""]).shape == (1, 32)  # EOS only
    assert enc.encode(["x" * 10_000]).shape == (1, 32)  # truncated, never an error
    with pytest.raises(TypeError, match="list"):
        enc.encode("a string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        enc.encode(["ok", 3])
    with pytest.raises(ValueError, match="last_token, mean, weighted_mean"):
        Encoder(tiny_llama, tiny_tokenizer, pooling="cls")


def test_token_budget_batches_respect_budget():
    lengths = [5, 1, 9, 3, 9, 2]
    batches = token_budget_batches(lengths, 18)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 18
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)
    assert token_budget_batches([100], 10) == [[0]]  # one over-long row is its own batch
