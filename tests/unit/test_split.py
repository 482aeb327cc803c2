import pytest

from embedforge.formats import read_beir, write_beir
from embedforge.split import heldout_task, split_rows


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


def test_heldout_task_stores_shared_documents_once_and_reads_back_as_beir(tmp_path):
    held = _rows(5)
    held[1]["positive"] = held[0]["positive"]  # a shared document is stored once
    corpus, queries, qrels = heldout_task(held)
    assert (len(queries), len(corpus)) == (5, 4 + 5)
    data = read_beir(write_beir(tmp_path / "heldout", corpus, queries, qrels), "test")
    assert set(data["relevant_docs"]) == {r["id"] for r in held}
    assert data["corpus"][next(iter(data["relevant_docs"]["short_long-0"]))]["text"] == "doc 0"
    assert data["relevant_docs"]["short_long-0"] == data["relevant_docs"]["short_long-1"]
