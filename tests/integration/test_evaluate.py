"""Evaluation end to end on a local Ray cluster: the harness reproduces all-MiniLM-L6-v2's published
MTEB scores, a decoder + LoRA adapter gets the paper's instructions through Ray-sharded encoding, and
a killed encoding run resumes from the cache re-encoding only what is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedforge.config import load_config
from embedforge.evaluate.cache import EmbeddingCache, namespace_key, text_hash

PUBLISHED_MINILM = {"STSBenchmark": 0.8203, "Banking77Classification": 0.8004, "SciFact": 0.6451}


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"run.output_dir={tmp_path}", "run.name=evalrun",
                              f"evaluate.cache_dir={tmp_path / 'cache'}", *overrides])


def test_minilm_reproduces_published_stsb_and_banking77(ray_cluster, shared_data, tmp_path):
    from embedforge.evaluate.runner import evaluate_model

    cfg = _cfg(
        tmp_path, "model.backbone=all-minilm-l6-v2", "model.instructions=false",
        f"evaluate.local_tasks=[{{kind: sts, path: {shared_data / 'stsb'}, name: STSBenchmark}},"
        f" {{kind: classification, path: {shared_data / 'banking77'}, name: Banking77Classification}}]",
        f"evaluate.baselines={{all-minilm-l6-v2: {{published: {json.dumps(PUBLISHED_MINILM)}}}}}",
    )
    out = evaluate_model(cfg).model_dump()
    scores = out["scores"]["evalrun"]
    assert abs(scores["STSBenchmark"] - 0.8203) <= 0.005, scores
    assert abs(scores["Banking77Classification"] - 0.8004) <= 0.005, scores
    # Banking77 (13k texts) went through the Ray actors, STSB (2.7k unique) partly
    assert out["encode_stats"]["evalrun"]["encoded"] > 0
    results = Path(out["results_dir"]) / "evalrun"
    sts = json.loads((results / "STSBenchmark.json").read_text())
    assert sts["task_name"] == "STSBenchmark"
    assert abs(sts["scores"]["test"][0]["main_score"] - scores["STSBenchmark"]) < 1e-5  # mteb rounds
    summary = json.loads(Path(out["summary"]["json"]).read_text())
    assert summary["columns"] == ["evalrun", "all-minilm-l6-v2 (published)"]
    md = Path(out["summary"]["markdown"]).read_text()
    assert "| STSBenchmark | cosine_spearman |" in md and "0.8203 |" in md
    assert Path(out["summary"]["chart"]).stat().st_size > 1000
    # Leaderboard-ready: results/<org__name>/<revision>/ as MTEB's results repository has them, with a
    # ModelMeta mteb validates (parameters counted from the safetensors headers: MiniLM's 22.7 M).
    from mteb.results import TaskResult

    from embedforge.evaluate.leaderboard import load_saved_meta

    board = Path(out["leaderboard_dir"])
    assert board.parts[-3:-1] == ("results", "embedforge__evalrun")
    meta = load_saved_meta(board)
    assert (meta.name, meta.revision, meta.embed_dim, meta.max_tokens) == (
        "embedforge/evalrun", out["encode_stats"]["evalrun"]["fingerprint"], 384, 257)
    assert 22_000_000 < meta.n_parameters < 23_500_000 and meta.use_instructions is False
    assert TaskResult.from_disk(board / "STSBenchmark.json").get_score() == pytest.approx(scores["STSBenchmark"])


@pytest.fixture
def small_scifact(shared_data, tmp_path):
    """SciFact's test queries whose relevant documents fall in the first 150 documents (+ those)."""
    from embedforge.formats import read_beir, write_beir

    data = read_beir(shared_data / "scifact", "test")
    docs = [{"_id": did, **doc} for did, doc in list(data["corpus"].items())[:150]]
    ids = {d["_id"] for d in docs}
    qrels = {q: {d: s for d, s in rel.items() if d in ids} for q, rel in data["relevant_docs"].items()}
    qrels = {q: rel for q, rel in qrels.items() if rel}
    queries = [{"_id": q, "text": data["queries"][q]} for q in qrels]
    out = write_beir(tmp_path / "scifact-small", {d["_id"]: d for d in docs},
                     {q["_id"]: q["text"] for q in queries}, qrels)
    return out, docs, queries


def test_decoder_with_adapter_gets_instructions_through_ray(ray_cluster, small_scifact, smollm2_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from embedforge.encoder import Encoder
    from embedforge.evaluate.runner import evaluate_model
    from embedforge.evaluate.spec import ModelSpec
    from embedforge.models import load_backbone

    folder, docs, queries = small_scifact
    base, tok = load_backbone(smollm2_dir)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")

    cfg = _cfg(tmp_path, f"model.backbone={smollm2_dir}", f"model.adapter={tmp_path / 'adapter'}",
               "model.max_length=64", "evaluate.ray_batch_size=32",
               f"evaluate.local_tasks=[{{kind: beir, path: {folder}, name: SciFact}}]",
               "evaluate.baselines={e5: {published: {SciFact: 0.7642}}}")
    out = evaluate_model(cfg).model_dump()
    ndcg = out["scores"]["evalrun"]["SciFact"]
    assert 0.0 < ndcg <= 1.0
    stats = out["encode_stats"]["evalrun"]
    assert stats["encoded"] == len(docs) + len(queries)
    # One pool for the run: queries and documents (two encode calls) on one actor, loaded once.
    assert stats["encode_calls"] >= 2 and stats["model_loads"] == 1, stats

    # What the cache holds is what the Encoder gives for the paper's instruction (queries) and none (docs).
    merged, tok = load_backbone(smollm2_dir, adapter=str(tmp_path / "adapter"))
    enc = Encoder(merged, tok, max_length=64)
    fp = ModelSpec.of(cfg.model).fingerprint()
    instr = "Given a scientific claim, retrieve documents that support or refute the claim"
    qcache = EmbeddingCache(tmp_path / "cache", namespace_key(fp, instr))
    dcache = EmbeddingCache(tmp_path / "cache", namespace_key(fp, None))
    q_texts = [q["text"] for q in queries[:3]]
    d_texts = [(d["title"] + " " + d["text"]).strip() for d in docs[::50]]
    got_q = qcache.get_many([text_hash(t) for t in q_texts])
    got_d = dcache.get_many([text_hash(t) for t in d_texts])
    np.testing.assert_allclose(np.stack([got_q[text_hash(t)] for t in q_texts]), enc.encode(q_texts, instr), atol=2e-4)
    np.testing.assert_allclose(np.stack([got_d[text_hash(t)] for t in d_texts]), enc.encode(d_texts), atol=2e-4)

    # A rerun is served entirely from the cache and gives the same score.
    again = evaluate_model(cfg).model_dump()
    assert again["encode_stats"]["evalrun"]["encoded"] == 0
    assert again["scores"]["evalrun"]["SciFact"] == pytest.approx(ndcg, abs=1e-6)


def test_mteb_on_the_exported_folder_scores_what_the_platform_scores(ray_cluster, small_scifact, shared_data,
                                                                      smollm2_dir, tmp_path):
    """The exported sentence-transformers folder, run by mteb itself (its own sentence-transformers
    wrapper and prompt lookup), gives the platform evaluator's scores on a retrieval task (queries
    instructed, documents not) and an STS task (both sides instructed)."""
    import mteb
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
    from sentence_transformers import SentenceTransformer

    from embedforge.config.evaluate import LocalTaskConfig
    from embedforge.evaluate.runner import evaluate_model
    from embedforge.evaluate.tasks import local_task
    from embedforge.formats import read_sts_file, write_sts
    from embedforge.train.model import save_sentence_transformers
    from embedforge.train.runner import training_instructions

    folder, _, _ = small_scifact
    sts = tmp_path / "stsb-small"
    sts.mkdir()
    write_sts(sts / "test.tsv", read_sts_file(shared_data / "stsb" / "test.tsv")[::20])
    exported = save_sentence_transformers(smollm2_dir, tmp_path / "st", max_length=64,
                                          instructions=training_instructions())
    tasks = [{"kind": "beir", "path": str(folder), "name": "SciFact"},
             {"kind": "sts", "path": str(sts), "name": "STSBenchmark"}]
    cfg = _cfg(tmp_path, f"model.backbone={exported}", "evaluate.num_actors=1",
               f"evaluate.local_tasks={json.dumps(tasks)}")
    ours = evaluate_model(cfg).scores["evalrun"]

    st = SentenceTransformerEncoderWrapper(SentenceTransformer(str(exported), device="cpu"))
    for spec in tasks:
        result = mteb.evaluate(st, local_task(LocalTaskConfig(**spec)), cache=None, show_progress_bar=False, raise_error=True)
        theirs = float(result.task_results[0].get_score())
        assert theirs == pytest.approx(ours[spec["name"]], abs=2e-3), (spec["name"], theirs, ours)


ENCODE_SCRIPT = r"""
import json, sys
from embedforge.evaluate.spec import ModelSpec
from embedforge.encode_pool import EncodingPool
from embedforge.evaluate.wrapper import EmbedforgeModel
texts = json.load(open(sys.argv[1]))
spec = ModelSpec("all-minilm-l6-v2")
model = EmbedforgeModel(spec, "test/minilm", encoder=EncodingPool(spec, num_actors=1, batch_size=16),
                        instructions=False, cache_dir=sys.argv[2])
vecs = model.encode_texts(texts, None)
import numpy as np
np.save(sys.argv[3], vecs)
print("STATS " + json.dumps({"encoded": model.stats.encoded, "hits": model.stats.cache_hits}), flush=True)
"""


def test_killed_encoding_resumes_from_cache(ray_cluster, shared_data, minilm_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from embedforge.evaluate.spec import ModelSpec

    # 240 abstracts (15 batches of 16): the kill after 3 batches still lands mid-run, and the test takes
    # 97 s here instead of the 301 s it took with 600.
    lines = (shared_data / "scifact" / "corpus.jsonl").read_text().splitlines()[:240]
    texts = [(d["title"] + " " + d["text"]).strip() for d in map(json.loads, lines)]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    cache_root = tmp_path / "cache"
    spec = ModelSpec("all-minilm-l6-v2")
    cache = lambda: EmbeddingCache(cache_root, namespace_key(spec.fingerprint(), None))  # noqa: E731
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    cmd = [sys.executable, "-c", ENCODE_SCRIPT, str(tmp_path / "texts.json"), str(cache_root), str(tmp_path / "v.npy")]

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 180
    while cache().shard_count() < 3:
        assert proc.poll() is None, "encoding finished before it could be killed"
        assert time.time() < deadline, "no batch reached the cache within 180 s"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cached = len(cache())
    assert 0 < cached < len(texts)

    def rerun() -> dict:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        line = [x for x in res.stdout.splitlines() if x.startswith("STATS ")][-1]
        return json.loads(line[len("STATS "):])

    stats = rerun()
    assert stats["encoded"] == len(texts) - cached  # only what was missing
    vecs = np.load(tmp_path / "v.npy")
    sample = list(range(0, len(texts), 23))
    st = SentenceTransformer(minilm_dir, device="cpu").encode([texts[i] for i in sample])
    np.testing.assert_allclose(vecs[sample], st, atol=1e-4)  # joined back by id, in input order
    assert rerun()["encoded"] == 0  # a complete cache: nothing encoded


@pytest.mark.slow
def test_minilm_reproduces_published_scifact(ray_cluster, shared_data, tmp_path):
    """~15 min on 2 cores: the whole SciFact corpus through Ray actors."""
    from embedforge.evaluate.runner import evaluate_model

    cfg = _cfg(tmp_path, "model.backbone=all-minilm-l6-v2", "model.instructions=false",
               f"evaluate.local_tasks=[{{kind: beir, path: {shared_data / 'scifact'}, name: SciFact}}]")
    scores = evaluate_model(cfg).scores["evalrun"]
    assert abs(scores["SciFact"] - 0.6451) <= 0.005, scores
