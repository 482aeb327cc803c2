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


def _corpus_rows(docs: int, per_doc: int):
    from embedforge.schema import CORPUS_SOURCE_PREFIX

    return [{**_rows(1, "retrieval")[0], "id": f"corpus-question-{d * per_doc + c}", "query": f"q {d}.{c}",
             "positive": f"chunk {c % 2} of document {d}", "negatives": [],
             "source": f"{CORPUS_SOURCE_PREFIX}doc{d}#{c % 2}"} for d in range(docs) for c in range(per_doc)]


def test_corpus_rows_are_held_out_by_document_and_every_chunk_joins_the_heldout_corpus(tmp_path):
    rows = _corpus_rows(40, 3)
    train, held = split_rows(rows, 0.25, ["retrieval"], 4)
    docs = lambda rs: {r["source"].split("#")[0] for r in rs}  # noqa: E731
    assert held and train and docs(held).isdisjoint(docs(train))  # no document on both sides
    assert all(sum(r["source"].startswith(d + "#") for r in held) == 3 for d in docs(held))  # whole documents
    # topped up whole documents at a time as well
    _, few = split_rows(_corpus_rows(10, 3), 0.001, ["retrieval"], 4)
    assert len(few) == 6 and len(docs(few)) == 2
    corpus, queries, qrels = heldout_task(held, [r["positive"] for r in train])
    assert len(queries) == len(held)
    assert {d["text"] for d in corpus.values()} == {r["positive"] for r in rows}  # train chunks are distractors
