"""embedders.py: a sentence-transformers directory loads into the platform encoder with its own pooling."""

from __future__ import annotations

import numpy as np

TEXTS = ["a cat sits on the mat", "stocks fell", "hi", "the quick brown fox jumps over the lazy dog"]


def test_sentence_transformers_dir_matches_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    from embedforge.config import ModelConfig
    from embedforge.embedders import load_embedder

    enc = load_embedder(ModelConfig(backbone=minilm_dir))
    assert enc.pooling == "mean" and enc.normalize
    ref = SentenceTransformer(minilm_dir, device="cpu").encode(TEXTS + ["word " * 400], normalize_embeddings=False)
    ours = enc.encode(TEXTS + ["word " * 400])
    cos = (ours * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999, cos
