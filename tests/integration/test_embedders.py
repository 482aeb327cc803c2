"""One model, one set of vectors: evaluation (in process and on the Ray actor pool), serving (the
replica's loading and request path, without Serve) and hard-negative mining (the actor pool) encode
the same texts identically, for the real tiny decoder and for a sentence-transformers directory."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

LONG = "The quick brown fox jumps over the lazy dog and keeps running across the field. " * 40
TEXTS = ["A girl is styling her hair.", "Stock markets fell sharply today.", "short", LONG,
         "A group of men play soccer on the beach."]
INSTRUCTION = "Retrieve semantically similar text"


def evaluation_vectors(cfg, instruction: str | None, on_ray: bool) -> np.ndarray:
    from embedforge.encode_pool import EncodingPool
    from embedforge.evaluate.spec import ModelSpec
    from embedforge.evaluate.wrapper import EmbedforgeModel

    spec = ModelSpec.of(cfg.model)
    pool = EncodingPool(spec, num_actors=1, cpus_per_actor=1, batch_size=2) if on_ray else None
    try:
        model = EmbedforgeModel(spec, "test/embedders", encoder=pool, cache_dir="", batch_size=2)
        vecs = model.encode_texts(TEXTS, instruction)
    finally:
        if pool is not None:
            pool.close()
    assert model.stats.encoded == len(TEXTS) and (pool is not None) == on_ray
    return vecs


def serving_vectors(cfg, instruction: str | None) -> np.ndarray:
    """What a replica answers: the config as the deployment receives it, its model, its request path."""
    from embedforge.config import EmbedforgeConfig
    from embedforge.embedders import load_embedder
    from embedforge.serving.protocol import EmbeddingRequest
    from embedforge.serving.service import EmbeddingService

    replica_cfg = EmbedforgeConfig.model_validate(cfg.model_dump(mode="json"))
    service = EmbeddingService(load_embedder(replica_cfg.model), "m", replica_cfg.serve)
    sequences = service.sequences_for(EmbeddingRequest(model="m", input=TEXTS, instruction=instruction))
    return asyncio.run(service.encode(sequences))


def mining_vectors(cfg, instruction: str | None) -> np.ndarray:
    from embedforge.train import mining

    return mining._embed(TEXTS, [instruction or ""] * len(TEXTS), mining.mining_spec(cfg.model), replicas=1,
                         resource_check="fail")


@pytest.mark.parametrize("backbone", ["smollm2", "minilm"])
def test_evaluation_serving_and_mining_give_the_same_vectors(ray_cluster, backbone, smollm2_dir, minilm_dir):
    from embedforge.config import load_config
    from embedforge.embedders import load_embedder

    # smollm2: a short max_length truncates LONG, and a pooling other than the default shows that every
    # path reads the section; minilm: its own files set pooling, normalisation and max length (256).
    model = [f"model.backbone={smollm2_dir}", "model.max_length=32", "model.pooling=mean"] \
        if backbone == "smollm2" else [f"model.backbone={minilm_dir}", "model.pooling=last_token"]
    cfg = load_config(None, [*model, "serve.truncate=true"])
    embedder = load_embedder(cfg.model)
    assert embedder.pooling == "mean"  # smollm2: the section's; minilm: its directory's, over the section's
    # minilm: max_seq_length + 1, so that its longest input is 256 tokens ([SEP] included), as in
    # sentence-transformers; smollm2: 31 tokens of text + the appended EOS.
    max_length, longest = (32, 32) if backbone == "smollm2" else (257, 256)
    assert embedder.max_length == max_length
    assert max(embedder.count_tokens(TEXTS)) == longest
    for instruction in (None, INSTRUCTION):
        reference = embedder.encode(TEXTS, instruction)
        assert reference.shape == (len(TEXTS), 576 if backbone == "smollm2" else 384)
        paths = {
            "evaluation, in process": evaluation_vectors(cfg, instruction, on_ray=False),
            "evaluation, actor pool": evaluation_vectors(cfg, instruction, on_ray=True),
            "serving": serving_vectors(cfg, instruction),
            "mining": mining_vectors(cfg, instruction),
        }
        for name, vecs in paths.items():
            assert vecs.dtype == np.float32, name
            assert np.allclose(vecs, reference, atol=1e-6), (name, instruction, float(np.abs(vecs - reference).max()))
