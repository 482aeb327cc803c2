"""Corpus-grounded generation end to end: the real local teacher (llama.cpp, SmolLM2-135M) writes
queries for chunks of a six-document corpus through the Ray Data teacher path, MiniLM (on the encoding
pool) filters them for consistency, the rows and the funnel add up, and a rerun plans nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from embedforge.generate.corpus import load_chunks, style_of_id
from embedforge.generate.taxonomy import load_corpus_styles
from embedforge.schema import chunk_id_of

# Slow (left out of CI): test_adapt_pipeline runs corpus generation with the same teacher and filter
# inside the pipeline; this adds the ledger-level checks and the rerun that plans nothing.
pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"


def test_corpus_queries_from_the_local_teacher_filtered_by_minilm_then_a_rerun_plans_nothing(ray_cluster, tmp_path, capsys):
    from embedforge.config import load_config
    from embedforge.generate.runner import generate_data

    cfg_data = {
        "run": {"name": "corpus", "output_dir": str(tmp_path), "seed": 0},
        "generate": {
            "num_rows": 0,
            "local_teacher": {"enabled": True, "n_threads": 2, "n_ctx": 2048, "max_concurrency": 2},
            "corpus": {"path": str(FIXTURES / "beir"), "num_queries": 6, "chunk_tokens": 48, "overlap_tokens": 8,
                       "max_tokens": 64},
            "consistency": {"model": "all-minilm-l6-v2", "top_k": 3, "check_rows": 4},
            "shard_rows": 4, "progress": False, "reject_min_attempts": 100, "max_rounds": 8,
        },
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg_data))
    cfg = load_config(str(tmp_path / "c.yaml"))
    chunks = load_chunks(cfg)
    text_of = {c.id: c.text for c in chunks.chunks}

    t0 = time.monotonic()
    result = generate_data(cfg).synthetic
    first_s = time.monotonic() - t0
    funnel = result.corpus
    assert result.complete and result.per_group == {"retrieval": 6}, result.model_dump()

    rows = pq.read_table(tmp_path / "corpus" / "data").to_pylist()
    assert len(rows) == 6 and len({r["query"].casefold() for r in rows}) == 6
    styles = load_corpus_styles()
    for row in rows:
        chunk_id = chunk_id_of(row)
        assert chunk_id in text_of and row["positive"] == text_of[chunk_id]  # the chunk id is on the row
        assert row["group"] == "retrieval" and row["negatives"] == [] and row["teacher"] == "local"
        assert row["task"] == styles[style_of_id(row["id"])].instruction  # the instruction of its style
    assert len({style_of_id(r["id"]) for r in rows}) >= 2  # the mix reaches the rows

    # every attempt is a kept row or a reject with a reason, in the funnel and in the ledger alike
    assert funnel.queries == result.attempts
    assert funnel.rows + sum(funnel.rejects.values()) == funnel.queries
    assert sum(result.rejects.values()) == result.attempts - result.rows
    assert funnel.queries >= funnel.kept_after_validation >= funnel.kept_after_consistency >= funnel.rows == 6
    assert funnel.kept_after_validation - funnel.kept_after_consistency == funnel.rejects.get("consistency", 0)
    assert funnel.chunks == len(chunks.chunks) and funnel.documents == 6
    assert funnel.consistency == {"model": "all-minilm-l6-v2", "top_k": 3, "candidates": len(chunks.chunks),
                                  "instructions": False}
    rejects = [json.loads(line) for p in (tmp_path / "corpus" / "generate" / "rejects").glob("*.jsonl")
               for line in p.read_text().splitlines()]
    assert len(rejects) == funnel.queries - funnel.rows
    summary = json.loads((tmp_path / "corpus" / "generate" / "summary.json").read_text())
    assert summary["corpus"]["queries"] == funnel.queries and summary["rejects"] == result.rejects
    assert list((tmp_path / "corpus" / "generate" / "corpus").glob("chunk_embeddings-*.npy"))

    # the same command again: everything is committed, nothing is planned, no teacher call is made
    commits = sorted(p.name for p in (tmp_path / "corpus" / "generate" / "commits").glob("*.json"))
    again = generate_data(load_config(str(tmp_path / "c.yaml"))).synthetic
    assert again.this_session.attempts == 0 and again.attempts == result.attempts
    # the first session encoded the corpus (before its first teacher call); the rerun, with nothing
    # missing, starts no filter at all
    assert result.this_session.chunk_encoding_s > 0 and again.this_session.chunk_encoding_s is None
    assert again.corpus == funnel
    assert sorted(p.name for p in (tmp_path / "corpus" / "generate" / "commits").glob("*.json")) == commits
    with capsys.disabled():
        print(f"\ncorpus generation: {funnel.queries} queries -> {funnel.kept_after_validation} valid -> "
              f"{funnel.kept_after_consistency} consistent -> {funnel.rows} rows in {first_s:.0f} s "
              f"({result.this_session.wall_s:.0f} s generating; rejects {funnel.rejects}; "
              f"{result.completion_tokens / max(1, result.attempts):.0f} completion tokens a query)")
