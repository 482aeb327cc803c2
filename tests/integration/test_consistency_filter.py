"""The consistency filter's pools on a real Ray cluster (2 CPUs) with the real MiniLM: the corpus is encoded
on a pool that takes the cluster's free CPUs, cached, and the checks' pool keeps to cpus_per_actor."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"


def _cfg(tmp_path):
    from embedforge.config import load_config

    data = {"run": {"name": "cf", "output_dir": str(tmp_path)},
            "generate": {"num_rows": 0,
                         "corpus": {"path": str(FIXTURES / "beir"), "num_queries": 4, "chunk_tokens": 48,
                                    "overlap_tokens": 8},
                         "consistency": {"model": "all-minilm-l6-v2", "top_k": 1, "cpus_per_actor": 1}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    return load_config(str(tmp_path / "c.yaml"))


def _free_cpus(expected: float) -> float:
    import ray

    deadline = time.monotonic() + 20  # released resources reach the GCS's view within a moment
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if free == expected or time.monotonic() > deadline:
            return free
        time.sleep(0.5)


def test_the_corpus_takes_the_cluster_then_checks_keep_to_their_share_and_a_rerun_reads_the_cache(ray_cluster, tmp_path):
    from embedforge.generate.consistency import ConsistencyFilter
    from embedforge.generate.corpus import load_chunks
    from embedforge.schema import CORPUS_SOURCE_PREFIX

    cfg = _cfg(tmp_path)
    chunks = load_chunks(cfg)
    free = _free_cpus(2.0)  # the fixture's cluster has 2 CPUs; an earlier test's actor may still hold one
    first = ConsistencyFilter(cfg, chunks, tmp_path / "cache")
    try:
        first.prepare()
        assert first.corpus_cpus_per_actor == max(1.0, free)  # every free CPU: no teacher actor runs yet
        assert first.chunk_encoding_s is not None and first.chunk_encoding_s > 0
        assert first.chunk_vecs.shape == (len(chunks.chunks), 384)
        assert _free_cpus(free - 1) == free - 1  # the corpus pool is gone; the checks' pool holds its one CPU
        # a chunk's own text as the query finds that chunk first
        rows = [{"query": ch.text, "task": "", "source": f"{CORPUS_SOURCE_PREFIX}{ch.id}"} for ch in chunks.chunks[:3]]
        assert first.ranks(rows).tolist() == [1, 1, 1]
    finally:
        first.close()
    assert list((tmp_path / "cache").glob("chunk_embeddings-*.npy"))

    again = ConsistencyFilter(cfg, chunks, tmp_path / "cache")
    try:
        again.prepare()
        assert again.chunk_encoding_s is None and again.corpus_cpus_per_actor is None  # read from the cache
        np.testing.assert_array_equal(again.chunk_vecs, first.chunk_vecs)
    finally:
        again.close()
