"""generate/contamination.py: the evaluation-set index (exact + hashed n-grams) and what tasks add to it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from embedforge.config.evaluate import LocalTaskConfig
from embedforge.generate.contamination import (
    ContaminationIndex,
    build_run_index,
    evaluation_texts,
    ngram_hashes,
)

pytestmark = pytest.mark.unit


def test_index_matches_normalised_text_or_a_shared_ngram():
    evals = ["A plane is taking off.", " ".join(f"w{i}" for i in range(30))]
    idx = ContaminationIndex.build(evals, ngram=8)
    assert len(idx) == 2 and len(idx.grams) == 30 - 8 + 1
    assert idx.match("a PLANE is taking off") == "exact"
    assert idx.match("prefix words " + " ".join(f"w{i}" for i in range(5, 14)) + " suffix") == "ngram"
    assert idx.match("w1 w2 w3 w4 w5 w6 w7") is None  # shorter than the n-gram
    assert idx.match("w0 w1 w2 w3 w4 w5 w6 w8") is None  # eight words, but not a run of the text
    assert idx.match("A plane is landing.") is None
    assert idx.check_row({"query": "x", "positive": "y", "negatives": ["a plane is taking off"]}) == "negative exact"


def test_ngram_hashes_depend_on_word_order_and_are_the_same_in_another_process():
    words = np.array([11, 22, 33, 44], dtype=np.uint64)
    fwd, rev = ngram_hashes(words, 2), ngram_hashes(words[::-1].copy(), 2)
    assert len(fwd) == 3 and not set(fwd.tolist()) & set(rev.tolist())
    assert len(ngram_hashes(words, 5)) == 0
    # Python's hash() is salted per process; the index's hashes must not be (actors build none, but
    # the index is cached on disk and read by later sessions).
    code = ("import sys; sys.path.insert(0, 'platform'); from embedforge.generate.contamination import "
            "ContaminationIndex as C; print(C.build(['one two three four five six'], ngram=3).grams.tolist())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}
    assert len(runs) == 1
    assert json.loads(runs.pop()) == ContaminationIndex.build(["one two three four five six"], ngram=3).grams.tolist()


def test_state_and_file_round_trips_keep_every_answer(tmp_path):
    idx = ContaminationIndex.build(["the quick brown fox jumps over the lazy dog", "hello"], ngram=4)
    for copy in (ContaminationIndex.from_state(idx.to_state()),
                 (idx.save(tmp_path / "i.npz"), ContaminationIndex.load(tmp_path / "i.npz"))[1]):
        assert copy.match("Hello!") == "exact" and copy.match("a fox jumps over the lazy cat") == "ngram"
        assert copy.match("the brown fox") is None and len(copy) == 2


def _sts_folder(tmp_path, pairs):
    folder = tmp_path / "sts"
    folder.mkdir()
    lines = ["sentence1\tsentence2\tscore"] + [f"{a}\t{b}\t{s}" for a, b, s in pairs]
    (folder / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def _beir_folder(tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = {"d1": "Aspirin lowers the risk of a second heart attack in adults over fifty.",
            "d2": "Vitamin C does not shorten the common cold in most adults studied.",
            "d3": "Unjudged corpus text that no query of the test split points at."}
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n"
                                                 for k, v in docs.items()))
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "does aspirin prevent heart attacks"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n")
    return folder


def test_mteb_tasks_contribute_their_evaluated_texts_retrieval_only_its_queries_and_relevant_documents(tmp_path):
    """Local tasks are mteb tasks (the same AbsTask classes and dataset layouts mteb's hub tasks load into)."""
    from embedforge.evaluate.tasks import local_task

    sts = local_task(LocalTaskConfig(kind="sts", name="STSBenchmark", split="test",
                                     path=str(_sts_folder(tmp_path, [("A cat sits.", "A cat is sitting.", 4.5)]))))
    assert sorted(evaluation_texts(sts)) == ["A cat is sitting.", "A cat sits."]  # no score column
    beir = local_task(LocalTaskConfig(kind="beir", name="SciFact", split="test", path=str(_beir_folder(tmp_path))))
    texts = set(evaluation_texts(beir))
    assert "does aspirin prevent heart attacks" in texts
    assert any("Aspirin lowers the risk" in t for t in texts)
    assert not any("Vitamin C" in t or "Unjudged" in t for t in texts)  # score 0 and unjudged documents


def test_the_run_index_is_built_once_per_fingerprint_and_a_missing_file_names_the_key(tmp_path):
    eval_file = tmp_path / "eval.txt"
    eval_file.write_text("one evaluation sentence that must never be generated again\n")
    from embedforge.evaluate.tasks import local_task

    task = local_task(LocalTaskConfig(kind="sts", name="STSBenchmark", split="test",
                                      path=str(_sts_folder(tmp_path, [("A dog runs.", "A dog is running.", 5.0)]))))
    idx, summary = build_run_index([str(eval_file)], [task], 5, tmp_path / "cache", ["STSBenchmark:local"])
    assert summary["sources"] == {str(eval_file): 1, "STSBenchmark:local": 2} and summary["texts"] == 3
    assert idx.match("a dog runs") == "exact"
    cached = list((tmp_path / "cache").glob("contamination-*.npz"))
    assert len(cached) == 1
    again, _ = build_run_index([str(eval_file)], [object()], 5, tmp_path / "cache", ["STSBenchmark:local"])
    assert again.match("a dog runs") == "exact"  # read from the cache: the dummy task was never loaded
    eval_file.write_text("a different sentence entirely written later on\n")
    rebuilt, _ = build_run_index([str(eval_file)], [task], 5, tmp_path / "cache", ["STSBenchmark:local"])
    assert rebuilt.match("one evaluation sentence that must never be generated again") is None
    with pytest.raises(FileNotFoundError, match="generate.contamination.eval_files"):
        build_run_index([str(tmp_path / "absent.tsv")], [], 13, tmp_path / "cache", [])


def test_real_eval_files_read_into_an_index_that_matches_them(shared_data, tmp_path):
    idx, summary = build_run_index([str(shared_data / "stsb" / "test.tsv"), str(shared_data / "scifact" / "queries.jsonl")],
                                   [], 13, tmp_path, [])
    assert summary["sources"][str(shared_data / "stsb" / "test.tsv")] > 2000
    assert summary["sources"][str(shared_data / "scifact" / "queries.jsonl")] > 1000
    from embedforge.formats import read_texts

    sentence = read_texts(shared_data / "stsb" / "test.tsv")[5]
    assert idx.match(sentence) == "exact"


def test_an_aggregate_task_contributes_every_subtask_in_the_english_subsets(repo_root):
    """CQADupstackRetrieval is scored as its 12 forums: each forum's data counts. The hub is unreachable
    here, so each forum is given the data mteb would load (its retrieval layout) and marked loaded."""
    from datasets import Dataset

    from embedforge.config import load_config
    from embedforge.evaluate.tasks import named_task

    assert load_config(repo_root / "configs" / "paper.yaml").generate.contamination.against_evaluation
    aggregate = named_task("CQADupstackRetrieval")
    for sub in aggregate.tasks:
        name = sub.metadata.name
        sub.dataset = {"default": {"test": {
            "queries": Dataset.from_list([{"id": "q1", "text": f"how do I configure {name}"}]),
            "corpus": Dataset.from_list([{"id": "d1", "title": "", "text": f"answer for {name}"},
                                         {"id": "d2", "title": "", "text": "never judged"}]),
            "relevant_docs": {"q1": {"d1": 1}}, "top_ranked": None}}}
        sub.data_loaded = True
    texts = list(evaluation_texts(aggregate))
    assert len(texts) == 2 * 12 and "how do I configure CQADupstackAndroidRetrieval" in texts
    assert "never judged" not in texts


def test_a_corpus_grounded_row_is_checked_on_its_query_only():
    """Its positive is the user's own document, which an evaluation on the same corpus also holds."""
    from embedforge.schema import CORPUS_SOURCE_PREFIX

    doc = "aspirin lowers the risk of a second heart attack in adults over fifty years old"
    idx = ContaminationIndex.build([doc, "does aspirin prevent heart attacks"], ngram=5)
    row = {"query": "is aspirin good for the heart", "positive": doc, "negatives": []}
    assert idx.check_row(row) == "positive exact"  # a taxonomy row with a test document as positive
    corpus_row = {**row, "source": f"{CORPUS_SOURCE_PREFIX}d1#0"}
    assert idx.check_row(corpus_row) is None
    assert idx.check_row({**corpus_row, "query": "Does aspirin prevent heart attacks?"}) == "query exact"
