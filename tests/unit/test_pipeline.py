import json

import pytest

from embedforge.config import load_config
from embedforge.pipeline import Markers, split_rows, stage_fingerprints, write_beir


def _rows(n, group="short_long"):
    return [{"id": f"{group}-{i}", "group": group, "task": "t", "query": f"query {i}", "positive": f"doc {i}",
             "negatives": [f"neg {i}"], "language": "English", "teacher": "x", "source": "synthetic",
             "prompt_tokens": 0, "completion_tokens": 0} for i in range(n)]


def test_split_is_stable_disjoint_and_respects_groups():
    rows = _rows(40) + _rows(10, "long_short")
    train, held = split_rows(rows, 0.25, ["short_long"], 4)
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in held})
    assert len(train) + len(held) == 50
    assert all(r["group"] == "short_long" for r in held)  # classification rows are never held out
    assert 4 <= len(held) < 40
    again_train, again_held = split_rows(list(reversed(rows)), 0.25, ["short_long"], 4)
    assert {r["id"] for r in again_held} == {r["id"] for r in held}


def test_split_tops_up_to_min_queries_and_refuses_to_hold_out_everything():
    train, held = split_rows(_rows(6), 0.01, ["short_long"], 3)
    assert len(held) == 3 and len(train) == 3
    with pytest.raises(ValueError, match="generate.num_rows"):
        split_rows(_rows(3), 0.5, ["short_long"], 3)


def test_heldout_beir_folder_reads_back_with_the_evaluation_readers(tmp_path):
    from embedforge.evaluate.tasks import read_jsonl_texts, read_qrels

    held = _rows(5)
    held[1]["positive"] = held[0]["positive"]  # a shared document is stored once
    info = write_beir(held, tmp_path / "heldout")
    corpus = read_jsonl_texts(tmp_path / "heldout" / "corpus.jsonl", "document")
    queries = read_jsonl_texts(tmp_path / "heldout" / "queries.jsonl", "query")
    qrels = read_qrels(tmp_path / "heldout" / "qrels" / "test.tsv", set(queries), set(corpus))
    assert info == {"queries": 5, "corpus": 4 + 5}
    assert set(qrels) == {r["id"] for r in held}
    assert corpus[next(iter(qrels["short_long-0"]))]["text"] == "doc 0"


def test_fingerprints_chain_downstream_only():
    base = stage_fingerprints(load_config())
    changed = stage_fingerprints(load_config(None, ["evaluate.task_instructions={STSBenchmark: Retrieve similar sentences}"]))
    assert changed["generate"] == base["generate"] and changed["train"] == base["train"]
    assert changed["evaluate"] != base["evaluate"] and changed["report"] != base["report"]
    upstream = stage_fingerprints(load_config(None, ["train.lr=0.001"]))
    assert upstream["split"] == base["split"] and upstream["train"] != base["train"]
    assert upstream["serve"] != base["serve"]


def test_markers_need_matching_fingerprint(tmp_path):
    m = Markers(tmp_path)
    assert m.result_if_done("train", "abc") is None
    m.mark("train", "abc", {"merged": "/x"}, 1.0)
    assert m.result_if_done("train", "abc") == {"merged": "/x"}
    assert m.result_if_done("train", "other") is None
    assert json.loads((tmp_path / "train.done.json").read_text())["fingerprint"] == "abc"


def test_pipeline_stage_names_validated():
    from embedforge.config.base import ConfigError

    with pytest.raises(ConfigError, match="pipeline.stages"):
        load_config(None, ["pipeline.stages=[generate, deploy]"])
