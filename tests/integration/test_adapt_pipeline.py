"""configs/adapt.yaml end to end at fixture size — the CI-sized run of the SciFact adaptation path.

`embedforge pipeline --config configs/adapt.yaml` with only sizes overridden and the corpus pointed at
a six-document fixture (the one override a user gives for their own folder): the local llama.cpp
teacher writes queries for chunks, MiniLM filters them for consistency, the split holds out whole
documents, MiniLM itself is fully fine-tuned on Ray Train + ZeRO-3 with positive-aware mined
negatives, and the tuned student is scored against the untouched one on the held-out queries. The
report shows the funnel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embedforge.formats import read_beir
from embedforge.schema import chunk_id_of, doc_id_of_chunk

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIXTURE_CORPUS = REPO / "tests" / "fixtures" / "corpus" / "beir"


@pytest.fixture(scope="module")
def adapt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("adapt")
    cmd = [sys.executable, "-m", "embedforge.cli", "pipeline", "--config", "configs/adapt.yaml",
           f"run.output_dir={out}", f"generate.corpus.path={FIXTURE_CORPUS}",
           # sizes only: a handful of queries for 48-token chunks, three steps of four pairs
           "generate.corpus.num_queries=10", "generate.corpus.chunk_tokens=48", "generate.corpus.overlap_tokens=8",
           "generate.corpus.max_tokens=64", "generate.consistency.top_k=3", "generate.consistency.check_rows=4",
           "generate.shard_rows=4", "pipeline.heldout_fraction=0.3",
           "pipeline.heldout_min_queries=2", "pipeline.stages=[generate,split,train,evaluate,report]",
           "train.global_batch_size=4", "train.epochs=3", "train.max_steps=3", "train.warmup_steps=0",
           "train.mining_top_k=5", "train.checkpoint_every=2"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO / "platform")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=30 * 60)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return out / "adapt"


def _marker(run: Path, stage: str) -> dict:
    return json.loads((run / "pipeline" / f"{stage}.done.json").read_text())["result"]


def test_queries_for_the_fixture_corpus_pass_the_funnel_with_their_chunks(adapt_run):
    funnel = _marker(adapt_run, "generate")["synthetic"]["corpus"]
    assert funnel["documents"] == 6 and funnel["rows"] == funnel["target"] == 10
    assert funnel["rows"] + sum(funnel["rejects"].values()) == funnel["queries"]
    assert funnel["queries"] >= funnel["kept_after_validation"] >= funnel["kept_after_consistency"] >= 10
    assert funnel["consistency"]["model"] == "all-minilm-l6-v2" and funnel["consistency"]["top_k"] == 3
    # the corpus was encoded this session, before the first teacher call (runner.generate_synthetic)
    encoding_s = _marker(adapt_run, "generate")["synthetic"]["this_session"]["chunk_encoding_s"]
    assert encoding_s is not None and encoding_s > 0
    rows = pq.read_table(adapt_run / "data").to_pylist()
    assert len(rows) == 10 and all(chunk_id_of(r) for r in rows)
    report = (adapt_run / "report" / "report.md").read_text()
    assert "kept after consistency (top 3 of" in report and "fully fine-tuned model" in report
    assert "corpus encoded for the consistency filter (last session)" in report


def test_the_split_holds_out_whole_documents(adapt_run):
    split = _marker(adapt_run, "split")
    train = pq.read_table(split["train_data"]).to_pylist()
    held = read_beir(split["heldout_dir"], "test")
    rows = {r["id"]: r for r in pq.read_table(adapt_run / "data").to_pylist()}
    held_docs = {doc_id_of_chunk(chunk_id_of(rows[qid])) for qid in held["queries"]}
    train_docs = {doc_id_of_chunk(chunk_id_of(r)) for r in train}
    assert held_docs and train_docs and held_docs.isdisjoint(train_docs)
    # every chunk the rows point at is searched: the train side's chunks are distractors
    assert {d["text"] for d in held["corpus"].values()} >= {r["positive"] for r in train}


def test_minilm_was_fully_fine_tuned_and_scored_against_the_untouched_student(adapt_run):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    from embedforge.embedders import load_embedder
    from embedforge.evaluate.spec import ModelSpec
    from embedforge.models import resolve_backbone

    train = _marker(adapt_run, "train")
    assert train["adapter"] is None  # full fine-tuning: no adapter, no merge
    assert train["final_metrics"]["step"] == 3
    tuned = SentenceTransformer(train["sentence_transformers"], device="cpu")
    assert [type(m).__name__ for m in tuned] == ["Transformer", "Pooling", "Normalize"]
    assert tuned[1].pooling_mode == "mean" and tuned.max_seq_length == 256
    minilm = resolve_backbone("all-minilm-l6-v2")
    original = SentenceTransformer(minilm, device="cpu")
    texts = ["glaciers retreat as the climate warms", "how do plants turn light into sugar"]
    a, b = tuned.encode(texts), original.encode(texts)
    assert a.shape == b.shape == (2, 384)
    assert not np.allclose(a, b, atol=1e-6)  # the weights moved
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)  # MiniLM's Normalize module kept
    # what `embedforge evaluate` and serving load from the folder encodes as sentence-transformers does
    ours = load_embedder(ModelSpec(backbone=train["sentence_transformers"]))
    assert (ours.pooling, ours.normalize, ours.append_eos) == ("mean", True, False)
    np.testing.assert_allclose(ours.encode(texts), a, atol=1e-5)
    # every weight but BERT's unused pooler was trained
    base, trained = load_file(Path(minilm) / "model.safetensors"), load_file(Path(train["merged"]) / "model.safetensors")
    assert {n for n, v in base.items() if v.is_floating_point()} == set(trained)
    changed = {n for n, v in trained.items() if not np.array_equal(v.numpy(), base[n].float().numpy())}
    assert changed == {n for n in trained if not n.startswith("pooler.")}
    scores = _marker(adapt_run, "evaluate")["scores"]  # model label (the run's name for the tuned one) -> task
    assert set(scores) == {"adapt", "backbone"} and "HeldoutRetrieval" in scores["backbone"]
    # the fixture corpus has no labeled queries: nothing else is scored (SciFact, the shipped corpus's, is not)
    assert set(scores["adapt"]) == set(scores["backbone"]) == {"HeldoutRetrieval"}
    assert 0.0 <= scores["adapt"]["HeldoutRetrieval"] <= 1.0
