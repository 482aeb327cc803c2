"""Hard-negative mining as a Ray Data job with a real embedding model (all-MiniLM-L6-v2)."""

from __future__ import annotations

import pandas as pd

from embedforge.embedders import EmbedderSpec
from embedforge.train.mining import mine_hard_negatives


def test_mining_fills_only_missing_negatives_from_the_top_k(ray_cluster, minilm_dir):
    pairs = [
        ("how do cats purr", "Cats purr by vibrating muscles in the larynx."),
        ("why do kittens purr", "Kittens purr to signal contentment to their mother."),
        ("what causes rain", "Rain forms when water droplets in clouds grow heavy."),
        ("how do storms form", "Storms form when warm moist air rises quickly."),
        ("best bread flour", "Bread flour has more protein, giving chewy loaves."),
        ("sourdough starter", "A sourdough starter is flour and water fermented by wild yeast."),
    ]
    rows = pd.DataFrame({
        "id": [f"r{i}" for i in range(len(pairs))], "group": ["short_long"] * len(pairs), "task": [""] * len(pairs),
        "query": [q for q, _ in pairs], "positive": [p for _, p in pairs],
        "negatives": [[] for _ in pairs[:-1]] + [["Yeast is a fungus."]],
    })
    mined = mine_hard_negatives(rows, EmbedderSpec(minilm_dir, max_length=64), top_k=2, num_negatives=1, seed=0)
    assert mined["negatives"].iloc[-1] == ["Yeast is a fungus."]  # rows with negatives are untouched
    topic_of = {p: i // 2 for i, (_, p) in enumerate(pairs)}
    for i in range(len(pairs) - 1):
        (neg,) = mined["negatives"].iloc[i]
        assert neg != pairs[i][1]
        # Top-2 of a query is its positive and the same-topic passage: the mined negative is hard.
        assert topic_of.get(neg) == i // 2, (pairs[i][0], neg)

    # Positive-aware: a margin no candidate can clear leaves nothing to mine; a zero margin only drops
    # candidates the model scores above the positive itself (none here: each positive ranks first).
    spec = EmbedderSpec(minilm_dir, max_length=64)
    everything_too_close = mine_hard_negatives(rows, spec, top_k=2, num_negatives=1, seed=0, margin=2.0)
    assert [list(n) for n in everything_too_close["negatives"].iloc[:-1]] == [[]] * (len(pairs) - 1)
    above_the_positive = mine_hard_negatives(rows, spec, top_k=2, num_negatives=1, seed=0, margin=0.0)
    assert above_the_positive["negatives"].tolist() == mined["negatives"].tolist()
