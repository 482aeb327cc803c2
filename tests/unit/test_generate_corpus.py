"""Corpus-grounded generation without Ray or a teacher: the corpus readers (BEIR, Parquet, a folder of
.txt/.md), chunking (exact boundaries), chunk sampling and the style mix, the style prompts and the
parsing of answers, config errors, the consistency ranking, the driver's pending-row accounting and
the funnel."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from embedforge.config import ConfigError, validated
from embedforge.config.generate import CORPUS_STYLES, CorpusConfig, GenerateConfig
from embedforge.formats import FormatError, document_text, read_parquet_documents, read_text_folder
from embedforge.generate.consistency import filter_spec, own_chunk_ranks
from embedforge.generate.corpus import (
    ChunkSampler,
    CorpusChunks,
    CorpusPlanner,
    chunk_document,
    chunk_documents,
    corpus_funnel,
    detect_format,
    load_chunks,
    read_documents,
    tokenizer_spans,
    window_bounds,
    word_spans,
)
from embedforge.generate.pipeline import parse_outcome
from embedforge.generate.taxonomy import load_corpus_styles, passage_for_prompt, style_sequence
from embedforge.generate.validation import Deduper, Rejected, copies, validate_corpus_query
from embedforge.schema import chunk_id_of, corpus_source, doc_id_of_chunk

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"


def _cfg(**corpus):
    corpus.setdefault("path", str(FIXTURES / "beir"))
    return validated({"generate": {"num_rows": 0, "corpus": corpus}})


# ------------------------------------------------------------------------------------ readers


def test_the_three_layouts_read_as_documents_and_the_format_is_detected_from_the_path(tmp_path):
    beir = read_documents(CorpusConfig(path=str(FIXTURES / "beir")))
    assert list(beir) == ["bees", "volcano", "aqueduct", "tcp", "jazz", "sourdough"]
    assert beir["bees"]["title"] == "Honeybee waggle dance" and beir["bees"]["text"].startswith("Forager honeybees")
    assert read_documents(CorpusConfig(path=str(FIXTURES / "beir" / "corpus.jsonl"))) == beir

    parquet = read_documents(CorpusConfig(path=str(FIXTURES / "documents.parquet"), id_column="doc_id",
                                          text_column="body", title_column="heading"))
    assert parquet == {
        "p1": {"text": "Tides are caused mainly by the Moon's gravity pulling on the oceans.", "title": "Tides"},
        "p2": {"text": "Like poles of two magnets repel each other and unlike poles attract.", "title": "Magnets"},
        "p3": {"text": "A prism splits white light into a spectrum of colours.", "title": ""},
    }
    # a folder of Parquet files reads them all, in path order
    (tmp_path / "pq").mkdir()
    shutil.copy(FIXTURES / "documents.parquet", tmp_path / "pq" / "a.parquet")
    assert detect_format(tmp_path / "pq") == "parquet"
    assert list(read_parquet_documents(tmp_path / "pq", "doc_id", "body")) == ["p1", "p2", "p3"]

    text = read_documents(CorpusConfig(path=str(FIXTURES / "text")))
    assert list(text) == ["notes/glaciers.md", "photosynthesis.txt"]  # ids: relative paths; .csv ignored
    assert text["notes/glaciers.md"]["text"].startswith("# Glaciers") and text["photosynthesis.txt"]["title"] == ""

    assert detect_format(FIXTURES / "beir") == "beir"
    assert detect_format(FIXTURES / "beir" / "corpus.jsonl") == "beir"
    assert detect_format(FIXTURES / "documents.parquet") == "parquet"
    assert detect_format(FIXTURES / "text") == "text"
    # an override wins over detection: the BEIR folder read as plain text files finds none
    with pytest.raises(FormatError, match=r"generate.corpus \(format text\).*no .txt or .md files"):
        read_documents(CorpusConfig(path=str(FIXTURES / "beir"), format="text"))


def test_bad_corpus_input_fails_naming_the_key_and_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError, match=r"generate.corpus.path '/no/such/corpus' does not exist"):
        read_documents(CorpusConfig(path="/no/such/corpus"))
    with pytest.raises(FormatError, match=r"documents.parquet: no column 'text' \(has: doc_id, heading, body\).*"
                                          r"generate.corpus.id_column='doc_id', text_column='text'"):
        read_documents(CorpusConfig(path=str(FIXTURES / "documents.parquet"), id_column="doc_id"))
    with pytest.raises(FormatError, match=r"no column 'id'"):
        read_documents(CorpusConfig(path=str(FIXTURES / "documents.parquet"), text_column="body"))
    (tmp_path / "c.csv").write_text("id,text\n")
    with pytest.raises(ConfigError, match=r"cannot tell the format.*generate.corpus.format: beir"):
        read_documents(CorpusConfig(path=str(tmp_path / "c.csv")))
    with pytest.raises(ConfigError, match="a folder of .txt/.md files, not a file"):
        read_documents(CorpusConfig(path=str(tmp_path / "c.csv"), format="text"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(FormatError, match=r"x.txt: not UTF-8"):
        read_text_folder(tmp_path / "bad")
    (tmp_path / "dup.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(FormatError, match=r"generate.corpus \(format beir\): .*dup.jsonl:2: duplicate _id 'a'"):
        read_documents(CorpusConfig(path=str(tmp_path / "dup.jsonl")))


def test_config_errors_name_the_field_and_the_allowed_values():
    with pytest.raises(Exception, match=r"unknown style 'quiz' in generate.corpus.styles; styles: question, claim, "
                                        r"keyword, title, paraphrase"):
        GenerateConfig(corpus={"path": "x", "styles": {"quiz": 1}})
    with pytest.raises(Exception, match=r"unknown style 'summary' in generate.corpus.instructions"):
        GenerateConfig(corpus={"path": "x", "instructions": {"summary": "Retrieve."}})
    with pytest.raises(Exception, match="positive total"):
        GenerateConfig(corpus={"path": "x", "styles": {"claim": 0}})
    with pytest.raises(Exception, match=r"overlap_tokens \(64\) must be smaller than generate.corpus.chunk_tokens \(64\)"):
        GenerateConfig(corpus={"path": "x", "chunk_tokens": 64, "overlap_tokens": 64})
    with pytest.raises(ConfigError, match=r"generate.corpus.format.*'auto', 'beir', 'parquet' or 'text'"):
        validated({"generate": {"corpus": {"path": "x", "format": "csv"}}})
    with pytest.raises(ConfigError, match=r"unknown key 'generate.corpus.num_rows'"):
        validated({"generate": {"corpus": {"path": "x", "num_rows": 3}}})
    with pytest.raises(ConfigError, match=r"generate.consistency.top_k"):
        validated({"generate": {"consistency": {"top_k": 0}}})
    assert GenerateConfig(corpus={"path": "x"}, num_rows=0).uses_teachers
    assert not GenerateConfig(corpus={"path": "x", "num_queries": 0}, num_rows=0).uses_teachers
    assert set(GenerateConfig(corpus={"path": "x"}).corpus.styles) == set(CORPUS_STYLES)
    # chunks longer than the passage length training uses would be cut: refused, naming both keys
    with pytest.raises(ConfigError, match=r"chunk_tokens \(600\) must be below the passage length.*512"):
        load_chunks(_cfg(chunk_tokens=600))


# ----------------------------------------------------------------------------------- chunking


def test_window_bounds_are_evenly_sized_overlapping_and_cover_the_text():
    assert window_bounds(0, 4, 1) == []
    assert window_bounds(3, 4, 1) == [(0, 3)]
    assert window_bounds(4, 4, 1) == [(0, 4)]
    assert window_bounds(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert window_bounds(40, 32, 8) == [(0, 24), (16, 40)]  # two of 24, not 32 + a sliver of 8 new tokens
    assert window_bounds(100, 10, 2)[-2:] == [(88, 98), (90, 100)]
    for n in range(1, 120):
        for chunk in (2, 5, 16):
            for overlap in range(chunk):
                b = window_bounds(n, chunk, overlap)
                assert b[0][0] == 0 and b[-1][1] == n and all(0 < e - s <= chunk for s, e in b)
                assert all(s2 > s1 and e1 - s2 >= overlap for (s1, e1), (s2, _) in zip(b, b[1:], strict=False))
                assert len(b) == (1 if n <= chunk else math.ceil((n - overlap) / (chunk - overlap)))
    with pytest.raises(ValueError):
        window_bounds(10, 4, 4)


def test_chunks_of_a_hand_built_text_have_exact_boundaries_and_stable_ids(tiny_tokenizer):
    text = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    chunks = chunk_document("doc/a", text, word_spans(text), 4, 1)
    assert [(c.id, c.doc_id, c.text) for c in chunks] == [
        ("doc/a#0", "doc/a", "w0 w1 w2 w3"), ("doc/a#1", "doc/a", "w3 w4 w5 w6"), ("doc/a#2", "doc/a", "w6 w7 w8 w9")]
    # counted with a tokenizer (here one token per character): the same rule over its tokens
    spans = tokenizer_spans(tiny_tokenizer)(["abcdefghij"])[0]
    assert [c.text for c in chunk_document("d", "abcdefghij", spans, 4, 1)] == ["abcd", "defg", "ghij"]
    # a document's title goes first, as mteb joins title and text; empty documents give no chunk
    docs = {"x": {"title": "T", "text": "a b c"}, "empty": {"title": "", "text": "  "}, "y": {"title": "", "text": "d"}}
    assert [(c.id, c.text) for c in chunk_documents(docs, 3, 1)] == [("x#0", "T a b"), ("x#1", "a b c"), ("y#0", "d")]


def test_chunks_counted_with_the_backbone_tokenizer_fit_chunk_tokens(minilm_dir):
    cfg = validated({"model": {"backbone": "all-minilm-l6-v2"},
                     "generate": {"num_rows": 0, "corpus": {"path": str(FIXTURES / "beir"), "chunk_tokens": 24,
                                                            "overlap_tokens": 4}}})
    got = load_chunks(cfg)
    assert got.documents == 6 and got.counted_with == "tokenizer of all-minilm-l6-v2"
    from embedforge.models import load_tokenizer

    tok = load_tokenizer(minilm_dir)
    sizes = [len(tok(c.text, add_special_tokens=False)["input_ids"]) for c in got.chunks]
    assert max(sizes) <= 24 and len(got.chunks) > 6
    # WordPiece cuts words ("acetic" -> ace ##tic): a chunk's edges are moved to whole words
    docs = read_documents(cfg.generate.corpus)
    for c in got.chunks:
        full = document_text(docs[c.doc_id])
        at = full.index(c.text)
        end = at + len(c.text)
        assert (at == 0 or full[at - 1].isspace()) and (end == len(full) or full[end].isspace()), c
    assert [c.id for c in got.chunks if c.doc_id == "bees"] == [f"bees#{n}" for n in range(len([c for c in got.chunks if c.doc_id == "bees"]))]
    words = load_chunks(_cfg(tokenizer="words", chunk_tokens=24, overlap_tokens=4))
    assert words.counted_with == "words" and max(len(c.text.split()) for c in words.chunks) <= 24
    assert load_chunks(_cfg(tokenizer="words")).fingerprint() == load_chunks(_cfg(tokenizer="words")).fingerprint()


# ----------------------------------------------------------------------------------- sampling


def test_chunk_sampling_takes_every_chunk_once_per_pass_seeded_by_the_run():
    a = ChunkSampler(7, run_seed=0)
    first, second = [a(i) for i in range(7)], [a(i) for i in range(7, 14)]
    assert sorted(first) == sorted(second) == list(range(7)) and first != second
    assert [ChunkSampler(7, 0)(i) for i in range(14)] == first + second  # a rerun asks the same chunks
    assert [ChunkSampler(7, 1)(i) for i in range(7)] != first


def test_styles_are_interleaved_in_proportion_to_the_mix():
    seq = style_sequence({s: 1.0 for s in CORPUS_STYLES}, 10)
    assert seq == list(CORPUS_STYLES) * 2
    seq = style_sequence({"question": 3, "claim": 1}, 8)
    assert Counter(seq) == {"question": 6, "claim": 2} and seq[:4].count("claim") == 1
    assert style_sequence({"claim": 1, "title": 0}, 3) == ["claim"] * 3


def test_planned_requests_carry_style_chunk_and_instruction_and_are_reproducible():
    cfg = _cfg(tokenizer="words", chunk_tokens=24, overlap_tokens=4, instructions={"claim": "Given a scientific claim, retrieve documents that support or refute the claim"})
    chunks = load_chunks(cfg)
    planner = CorpusPlanner(cfg.generate.corpus, chunks, run_seed=0)
    reqs = planner.requests(0, 6, {"t": 1.0})
    assert [r["id"] for r in reqs] == [f"corpus-{s}-{i:07d}" for i, s in enumerate(list(CORPUS_STYLES) + ["question"])]
    assert reqs == CorpusPlanner(cfg.generate.corpus, chunks, 0).requests(0, 6, {"t": 1.0})
    assert planner.requests(3, 3, {"t": 1.0}) == reqs[3:]  # a later round continues the same sequence
    for req in reqs:
        values = json.loads(req["values"])
        style = load_corpus_styles()[values["style"]]
        chunk = chunks.chunks[chunks.position[values["chunk_id"]]]
        assert values["passage"] == chunk.text and req["group"] == "retrieval" and req["teacher"] == "t"
        assert req["task"] == planner.instruction(style.name) and req["max_tokens"] == 128
        prompt = json.loads(req["messages"])[0]["content"]
        assert chunk.text in prompt and f'"{style.key}"' in prompt
        assert json.loads(req["schema"])["required"] == [style.key]
    assert reqs[1]["task"] == "Given a scientific claim, retrieve documents that support or refute the claim"
    assert reqs[0]["task"] == "Given a question, retrieve passages that answer the question"


def test_queries_per_chunk_asks_consecutive_styles_about_one_chunk_and_shares_its_prompt_prefix():
    cfg = _cfg(tokenizer="words", chunk_tokens=24, overlap_tokens=4, queries_per_chunk=4,
               styles={"question": 1, "claim": 1, "keyword": 0, "title": 1, "paraphrase": 1})
    chunks = load_chunks(cfg)
    reqs = CorpusPlanner(cfg.generate.corpus, chunks, 0).requests(0, 8, {"t": 1.0})
    chunk_of = [json.loads(r["values"])["chunk_id"] for r in reqs]
    assert len(set(chunk_of[:4])) == 1 and len(set(chunk_of[4:])) == 1 and chunk_of[0] != chunk_of[4]
    assert [json.loads(r["values"])["style"] for r in reqs[:4]] == ["question", "claim", "title", "paraphrase"]
    # the chunk is the sampler's (i // 4)-th, so a rebuild from the id and a resume mid-group agree
    sampler = ChunkSampler(len(chunks.chunks), 0)
    assert chunk_of == [chunks.chunks[sampler(i // 4)].id for i in range(8)]
    # what the teacher's prefix cache reuses: the prompts agree up to the end of the chunk
    prompts = [json.loads(r["messages"])[0]["content"] for r in reqs[:4]]
    shared = os.path.commonprefix(prompts)
    assert json.loads(reqs[0]["values"])["passage"] in shared
    with pytest.raises(ValueError, match="queries_per_chunk"):
        _cfg(queries_per_chunk=0)


# ------------------------------------------------------------------------------------ prompts


def test_every_style_prompt_renders_fully_in_the_papers_json_style():
    styles = load_corpus_styles()
    assert tuple(styles) == CORPUS_STYLES
    cfg = _cfg(tokenizer="words")
    for style in styles.values():
        chunks = CorpusChunks([chunk_document("d", "A {curly} passage about bees.", word_spans("A {curly} passage about bees."), 50, 0)[0]], 1, "words")
        req = CorpusPlanner(cfg.generate.corpus.model_copy(update={"styles": {style.name: 1.0}}), chunks, 0).requests(0, 1, {"t": 1})[0]
        prompt = json.loads(req["messages"])[0]["content"]
        assert "A {curly} passage about bees." in prompt  # braces of the passage are left as they are
        left = set(re.findall(r"\{(\w+)\}", prompt)) - {"curly"}
        assert not left, (style.name, left)
        assert f"{style.min_words} to {style.max_words} words" in prompt and "in English" in prompt
        assert "JSON object only" in prompt and style.instruction.startswith("Given a")
    assert passage_for_prompt("one two three four", 100) == "one two three four"
    assert passage_for_prompt("alpha beta gamma delta epsilon", 16) == "alpha beta ..."


def test_answers_are_parsed_into_rows_or_rejected_by_a_named_reason():
    claim = load_corpus_styles()["claim"]
    passage = ("Forager honeybees tell their nestmates where flowers are by dancing on the comb and the angle of "
               "the waggle run gives the direction")
    ok = validate_corpus_query('{"claim": "  Bees  dance to share the direction of food. "}', claim, passage, 10)
    assert ok == "Bees dance to share the direction of food."

    def reason(text, style=claim):
        with pytest.raises(Rejected) as exc:
            validate_corpus_query(text, style, passage, 10)
        return exc.value.reason

    assert reason("not json") == "invalid_json"
    assert reason('{"question": "Why do bees dance at all?"}') == "missing_key"
    assert reason('{"claim": "Bees dance.", "extra": "x"}') == "missing_key"
    assert reason('{"claim": 3}') == "not_string"
    assert reason('{"claim": "  "}') == "empty"
    assert reason('{"claim": "12 34 56 78 90"}') == "no_words"
    assert reason('{"claim": "Bees dance."}') == "too_short"
    assert reason(json.dumps({"claim": "word " * 41})) == "too_long"
    assert reason(json.dumps({"claim": passage})) == "copied_chunk"
    assert reason('{"claim": "This passage provides evidence for bees communicating by dancing"}') == "refers_to_chunk"
    assert reason('{"claim": "Bees, as this passage shows, communicate by dancing"}') == "refers_to_chunk"
    # a lead-in up to "that" / ":" is cut and the rest is checked like any answer
    assert validate_corpus_query('{"claim": "This passage provides evidence that bees communicate with a dance"}',
                                 claim, passage, 10) == "Bees communicate with a dance"
    assert validate_corpus_query('{"claim": "The abstract supports the claim: waggle runs point at the food"}',
                                 claim, passage, 10) == "Waggle runs point at the food"
    assert reason('{"claim": "This passage suggests that the passage is about bees"}') == "refers_to_chunk"
    assert reason('{"claim": "This passage shows that bees dance a lot."}') == "too_short"  # 4 words left
    # only reporting words lead in: a relative "that" is no lead-in's end
    assert reason('{"claim": "The passage supports signalling that is achieved through mitochondrial MAVS"}') == "refers_to_chunk"
    assert reason('{"claim": "<Title of the passage> explains bee dances"}') == "refers_to_chunk"
    assert validate_corpus_query('{"claim": "A text message alerts foragers to flowers"}', claim, passage, 10)
    # ten words in a row from the chunk is a copy; fewer is not
    assert copies("So forager honeybees tell their nestmates where flowers are by dancing today", passage, 10)
    assert not copies("Honeybees tell their nestmates where flowers are, scientists say", passage, 10)

    # through the pipeline's parse step (what the teacher actors run)
    cfg = _cfg(tokenizer="words")
    chunks = load_chunks(cfg)
    req = CorpusPlanner(cfg.generate.corpus, chunks, 0).requests(1, 1, {"local": 1})[0]  # a claim
    values = json.loads(req["values"])
    answer = {**req, "text": '{"claim": "Silica-rich magma erupts more explosively than basalt."}', "error": "",
              "finish_reason": "stop", "prompt_tokens": 300, "completion_tokens": 15, "latency_s": 0.5}
    out = parse_outcome(answer, 1, 5)
    assert out["status"] == "kept", out
    row = json.loads(out["payload"])
    assert row == {"id": "corpus-claim-0000001", "group": "retrieval", "task": "Given a claim, retrieve documents that support it",
                   "query": "Silica-rich magma erupts more explosively than basalt.", "positive": values["passage"],
                   "negatives": [], "language": "English", "teacher": "local", "source": corpus_source(values["chunk_id"]),
                   "prompt_tokens": 300, "completion_tokens": 15}
    assert chunk_id_of(row) == values["chunk_id"] and doc_id_of_chunk(values["chunk_id"]) == "volcano"
    cut = parse_outcome({**answer, "text": '{"claim": "Silica', "finish_reason": "length"}, 1, 5)
    assert (cut["status"], cut["reason"]) == ("rejected", "truncated")


def test_corpus_rows_dedupe_on_the_query_only():
    d = Deduper()
    row = {"group": "retrieval", "query": "Why do bees dance?", "positive": "chunk", "source": "corpus:bees#0"}
    assert d.add(row)
    assert d.add({**row, "query": "How far away is the food?"})  # the same chunk, another query: kept
    assert not d.add({**row, "query": "why do bees DANCE", "source": "corpus:bees#1"})


def test_schema_chunk_ids():
    assert chunk_id_of({"source": "corpus:a#b#3"}) == "a#b#3" and doc_id_of_chunk("a#b#3") == "a#b"
    assert chunk_id_of({"source": "synthetic"}) is None and chunk_id_of({}) is None


# -------------------------------------------------------------------------------- consistency


def test_own_chunk_rank_on_hand_built_vectors():
    chunks = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float32)
    queries = np.array([
        [1, 0, 0],        # own chunk 0: the best match
        [1, 0.1, 0],      # own chunk 1: chunk 0 and chunk 3 score higher
        [0, 0, 5],        # own chunk 2: length does not matter (cosine)
        [1, 1, 0],        # own chunk 0 ties nothing, chunk 3 is exact: rank 2
        [0.5, 0.5, 0.5],  # own chunk 2: chunk 3 beats it; 0, 1 and 2 tie (ties do not push it down)
    ], dtype=np.float32)
    ranks = own_chunk_ranks(queries, chunks, np.array([0, 1, 2, 0, 2]))
    assert ranks.tolist() == [1, 3, 1, 2, 2]
    assert own_chunk_ranks(queries, chunks, np.array([0, 1, 2, 0, 2]), block=2).tolist() == ranks.tolist()
    with pytest.raises(ValueError):
        own_chunk_ranks(queries, chunks, np.array([0, 9, 2, 0, 2]))


def test_a_consistency_reject_records_its_rank_and_it_reads_back():
    from embedforge.generate.consistency import reject_detail, reject_rank

    detail = reject_detail(np.int64(339), 9764, 5)
    assert detail == "its chunk ranks 339 of 9764 (top_k=5)"
    assert [reject_rank(reject_detail(r, 9764, 5)) for r in (6, 50, 9439)] == [6, 50, 9439]


def test_the_filter_model_is_named_or_the_backbone_or_the_student(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    base = {"model": {"backbone": "smollm2-135m", "adapter": str(adapter)}}
    spec, instr, label = filter_spec(validated(base))
    assert (spec.backbone, spec.adapter, instr, label) == ("all-minilm-l6-v2", None, False, "all-minilm-l6-v2")
    spec, instr, label = filter_spec(validated({**base, "generate": {"consistency": {"model": "backbone"}}}))
    assert (spec.backbone, spec.adapter, instr) == ("smollm2-135m", None, True) and label == "backbone (smollm2-135m)"
    spec, instr, _ = filter_spec(validated({**base, "generate": {"consistency": {"model": "student", "instructions": False}}}))
    assert (spec.backbone, spec.adapter, instr) == ("smollm2-135m", str(adapter), False)


class _FakeFilter:
    """Ranks by a table (query -> rank), as ConsistencyFilter.ranks would."""

    top_k = 2

    def __init__(self, ranks):
        self.table, self.calls = ranks, []
        self.chunks = CorpusChunks([], 0, "words")

    def ranks(self, rows):
        self.calls.append(len(rows))
        return np.array([self.table[r["query"]] for r in rows])


def _outcome(i, query, status="kept", reason=""):
    row = {"id": f"corpus-claim-{i:07d}", "group": "retrieval", "task": "t", "query": query, "positive": f"chunk {i}",
           "negatives": [], "language": "English", "teacher": "local", "source": f"corpus:d#{i}",
           "prompt_tokens": 1, "completion_tokens": 1}
    return {"id": row["id"], "group": "retrieval", "kind": "example", "teacher": "local", "language": "English",
            "raw": query, "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0, "status": status,
            "reason": reason, "detail": "", "payload": json.dumps(row) if status == "kept" else ""}


def test_the_driver_checks_waiting_corpus_rows_before_committing_and_counts_every_reject(tmp_path):
    from embedforge.generate.runner import Committer
    from embedforge.generate.store import RunStore

    store = RunStore(tmp_path / "run")
    gen = GenerateConfig(num_rows=0, corpus={"path": "x"}, consistency={"check_rows": 3}, shard_rows=100)
    fake = _FakeFilter({"a q": 1, "b q": 5, "c q": 2, "d q": 1, "e q": 1})
    committer = Committer(store, gen, {"retrieval": 2}, [], [], consistency=fake)
    kept = []
    committer.on_kept = kept.append
    outs = [_outcome(0, "a q"), _outcome(1, "", "rejected", "too_short"), _outcome(2, "b q"), _outcome(3, "A Q"),
            _outcome(4, "c q"), _outcome(5, "d q"), _outcome(6, "e q")]
    for out in outs:
        committer.add(out)
    # three valid rows waited and were checked together; the last two wait (the duplicate never waits)
    assert fake.calls == [3] and len(committer.pending) == 2 and not committer.records
    committer.flush()  # a commit checks what waits first
    assert fake.calls == [3, 2] and not committer.pending
    status = {r["id"][-1]: (r["status"], r["reason"]) for r in committer.records}
    assert status == {"0": ("kept", ""), "1": ("rejected", "too_short"), "2": ("rejected", "consistency"),
                      "3": ("rejected", "duplicate"), "4": ("kept", ""), "5": ("rejected", "surplus"),
                      "6": ("rejected", "surplus")}
    assert len(kept) == 2 and not committer.missing()
    rejects = [json.loads(line) for p in (store.gen_dir / "rejects").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert {r["reason"] for r in rejects} == {"too_short", "consistency", "duplicate", "surplus"}
    assert "ranks 5" in next(r["detail"] for r in rejects if r["reason"] == "consistency")

    chunks = CorpusChunks(chunk_documents({"d": {"title": "", "text": " ".join(f"w{i}" for i in range(20))}}, 4, 1), 1, "words")
    funnel = corpus_funnel(store.load().records, chunks, 2, {"model": "m", "top_k": 2})
    assert (funnel.queries, funnel.kept_after_validation, funnel.kept_after_consistency, funnel.rows) == (7, 5, 4, 2)
    assert funnel.chunks == len(chunks.chunks) and funnel.chunks_asked == 7 and funnel.documents == 1
    assert sum(funnel.rejects.values()) + funnel.rows == funnel.queries
    assert funnel.per_style == {"claim": {"queries": 7, "rows": 2}}
    # four queries a chunk: requests 0..6 asked about chunks 0 and 1
    assert corpus_funnel(store.load().records, chunks, 2, None, queries_per_chunk=4).chunks_asked == 2
