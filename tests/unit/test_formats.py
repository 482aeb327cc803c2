"""Data-set file formats (embedforge.formats): what each reader returns, that each writer's file reads
back as the same rows, and that bad input fails naming the file, the line and what was wrong."""

from __future__ import annotations

import pytest

from embedforge.config.base import ConfigError
from embedforge.formats import (
    FormatError,
    find_data_file,
    read_beir,
    read_classification_file,
    read_keyed_tsv,
    read_pairs,
    read_records,
    read_sts_file,
    read_texts,
    read_trec_qrels,
    write_beir,
    write_classification,
    write_pairs,
    write_sts,
)

CORPUS = {"d1": {"title": "Cats", "text": "Cats purr."}, "d2": {"title": "", "text": "Stocks fell."}}
QUERIES = {"q1": "what sound do cats make", "q2": "unjudged query"}
# Fields a TSV must quote: a tab, a newline, a doubled quote, a carriage return.
AWKWARD = ["a\ttab", "multi\nline", 'say "hi"', "carriage\rreturn", " padded "]


def _beir(folder, corpus=CORPUS, queries=QUERIES, qrels=None):
    return write_beir(folder, corpus, queries, qrels if qrels is not None else {"q1": {"d1": 1}})


def test_formats_errors_are_config_errors():
    assert issubclass(FormatError, ConfigError)


# ------------------------------------------------------------------------------------------ BEIR


def test_beir_reader_keeps_judged_queries_only(tmp_path):
    data = read_beir(_beir(tmp_path / "t"), "test")
    assert data["corpus"] == {"d1": {"text": "Cats purr.", "title": "Cats"}, "d2": {"text": "Stocks fell.", "title": ""}}
    assert data["queries"] == {"q1": "what sound do cats make"}
    assert data["relevant_docs"] == {"q1": {"d1": 1}}


def test_beir_round_trip_gives_the_same_corpus_queries_and_qrels(tmp_path):
    corpus = {"d1": {"title": 'A "quoted"\ttitle', "text": "multi\nline ünïcode"}, "d2": {"title": "", "text": "x"}}
    queries = {"q1": "first", "q2": "second\twith tab"}
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}
    write_beir(tmp_path / "b", corpus, queries, qrels, split="dev")
    data = read_beir(tmp_path / "b", "dev")
    assert data == {"corpus": corpus, "queries": queries, "relevant_docs": qrels}


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_beir_missing_file_is_named(tmp_path, missing):
    folder = _beir(tmp_path / "t")
    (folder / missing).unlink()
    with pytest.raises(FormatError, match=f"missing file: .*{missing}"):
        read_beir(folder, "test")


def test_qrels_naming_an_unknown_id_fail_naming_file_and_line(tmp_path):
    folder = _beir(tmp_path / "t", qrels={"q1": {"d1": 1, "d9": 1}})
    with pytest.raises(FormatError, match=r"qrels/test.tsv:3: corpus-id 'd9' is not in corpus.jsonl"):
        read_beir(folder, "test")
    folder = _beir(tmp_path / "u", qrels={"q7": {"d1": 1}})
    with pytest.raises(FormatError, match=r"qrels/test.tsv:2: query-id 'q7' is not in queries.jsonl"):
        read_beir(folder, "test")


def test_qrels_with_a_bad_score_or_column_count_fail_naming_file_and_line(tmp_path):
    folder = _beir(tmp_path / "t")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(FormatError, match=r"qrels/test.tsv:2: score 'high' is not a number"):
        read_beir(folder, "test")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n")
    with pytest.raises(FormatError, match=r"qrels/test.tsv:3: expected 3 tab-separated columns "
                                          r"\(query-id corpus-id score\), got 2"):
        read_beir(folder, "test")


def test_empty_corpus_bad_json_and_duplicate_ids_fail_naming_the_file(tmp_path):
    with pytest.raises(FormatError, match=r"corpus.jsonl: no documents"):
        read_beir(_beir(tmp_path / "t", corpus={}), "test")
    folder = _beir(tmp_path / "u")
    with open(folder / "corpus.jsonl", "a") as fh:
        fh.write('{"_id": "d3", "text": \n')
    with pytest.raises(FormatError, match=r"corpus.jsonl:3: not valid JSON"):
        read_beir(folder, "test")
    folder = _beir(tmp_path / "v")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')
    with pytest.raises(FormatError, match=r"queries.jsonl:2: duplicate _id 'q1'"):
        read_beir(folder, "test")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "title": "no text"}\n')
    with pytest.raises(FormatError, match=r"queries.jsonl:1: a query needs '_id' and a string 'text'"):
        read_beir(folder, "test")


def test_beir_judged_only_holds_just_the_judged_documents_and_still_checks_the_qrels(tmp_path):
    data = read_beir(_beir(tmp_path / "t"), "test", judged_only=True)
    assert data["corpus"] == {"d1": {"text": "Cats purr.", "title": "Cats"}}
    assert data["queries"] == {"q1": "what sound do cats make"} and data["relevant_docs"] == {"q1": {"d1": 1}}
    folder = _beir(tmp_path / "u", qrels={"q1": {"d9": 1}})
    with pytest.raises(FormatError, match=r"qrels/test.tsv:2: corpus-id 'd9' is not in corpus.jsonl"):
        read_beir(folder, "test", judged_only=True)


# ------------------------------------------------------------------ labeled training sets


def test_keyed_tsv_reads_id_and_columns_unquoted_keeping_only_the_asked_ids(tmp_path):
    path = tmp_path / "collection.tsv"
    path.write_text('0\tsay "hi" there\n1\tsecond\twith a tab\n2\tthird\n')
    assert read_keyed_tsv(path, ("text",)) == {"0": {"text": 'say "hi" there'}, "1": {"text": "second\twith a tab"},
                                               "2": {"text": "third"}}
    assert read_keyed_tsv(path, ("text",), keep={"2"}) == {"2": {"text": "third"}}
    docs = tmp_path / "msmarco-docs.tsv"
    docs.write_text("D1\thttp://a\tTitle\tBody text\nD2\thttp://b\t\t\n")  # empty title and body kept
    assert read_keyed_tsv(docs, ("url", "title", "text")) == {
        "D1": {"url": "http://a", "title": "Title", "text": "Body text"}, "D2": {"url": "http://b", "title": "", "text": ""}}


def test_keyed_tsv_skips_a_header_line_reads_gzip_and_fails_naming_file_and_line(tmp_path):
    import gzip

    path = tmp_path / "queries.train.tsv.gz"
    path.write_bytes(gzip.compress("qid\ttext\n50003\t鹦鹉用什么磨牙\n".encode()))
    assert find_data_file(tmp_path, "queries.train.tsv") == path
    assert read_keyed_tsv(path, ("text",)) == {"50003": {"text": "鹦鹉用什么磨牙"}}
    bad = tmp_path / "docs.tsv"
    bad.write_text("D1\thttp://a\tTitle\tBody\nD2\thttp://b\n")
    with pytest.raises(FormatError, match=r"docs.tsv:2: expected 4 tab-separated columns \(id url title text\), got 2"):
        read_keyed_tsv(bad, ("url", "title", "text"))
    assert read_keyed_tsv(bad, ("url", "title", "text"), keep={"D1"})["D1"]["text"] == "Body"  # unneeded lines unread
    bad.write_text("1\ta\n1\tb\n")
    with pytest.raises(FormatError, match=r"docs.tsv:2: duplicate id '1'"):
        read_keyed_tsv(bad, ("text",))
    bad.write_text("")
    with pytest.raises(FormatError, match=r"docs.tsv: no rows"):
        read_keyed_tsv(bad, ("text",))
    with pytest.raises(FormatError, match=r"missing file: .*absent.tsv \(or absent.tsv.gz\)"):
        find_data_file(tmp_path, "absent.tsv")


def test_trec_qrels_tab_or_space_separated_and_pairs(tmp_path):
    path = tmp_path / "qrels.tsv"
    path.write_text("1185869\t0\t0\t1\n3 0 D312959 1\n50000\t0\t762239\t0\n")
    assert read_trec_qrels(path) == [("1185869", "0", 1, 1), ("3", "D312959", 1, 2), ("50000", "762239", 0, 3)]
    path.write_text("qid\tpid\n50003\t0\n")
    assert read_trec_qrels(path) == [("50003", "0", 1, 2)]
    path.write_text("1 0 D1 1\n1 0 D2\n")
    with pytest.raises(FormatError, match=r"qrels.tsv:2: expected 4 columns \(qid iteration docid relevance\) or 2"):
        read_trec_qrels(path)
    path.write_text("1 0 D1 high\n")
    with pytest.raises(FormatError, match=r"qrels.tsv:1: relevance 'high' is not an integer"):
        read_trec_qrels(path)


def test_records_of_json_lines_a_json_array_parquet_and_a_folder(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = [{"query": "a", "passages": {"is_selected": [1], "passage_text": ["x"]}}, {"query": "b", "passages": None}]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    (tmp_path / "d" / "b.json").write_text(json.dumps(recs))
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d" / "c.parquet")
    (tmp_path / "d" / "notes.txt").write_text("not data")
    got = list(read_records(tmp_path / "d"))
    assert [r for _, r in got] == recs * 3
    assert [w.rsplit("/", 1)[-1] for w, _ in got] == ["a.jsonl:1", "a.jsonl:2", "b.json record 1", "b.json record 2",
                                                     "c.parquet row 1", "c.parquet row 2"]


def test_records_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"query": "a"}\n{"query": \n')
    with pytest.raises(FormatError, match=r"train.jsonl:2: not valid JSON"):
        list(read_records(path))
    path.write_text('{"query": "a"}\n["not", "an", "object"]\n')
    with pytest.raises(FormatError, match=r"train.jsonl:2: a record must be a JSON object, got list"):
        list(read_records(path))
    path.write_text("\n")
    with pytest.raises(FormatError, match=r"train.jsonl: no records"):
        list(read_records(path))
    with pytest.raises(FormatError, match=r"train.tsv: not a records file \(expected .jsonl, .json, .parquet"):
        list(read_records(tmp_path / "train.tsv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match=r"empty: no data files in the folder"):
        list(read_records(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------- STS


def test_sts_round_trip_gives_the_same_rows(tmp_path):
    rows = [{"sentence1": s, "sentence2": f"other {i}", "score": i * 1.25 + 0.1} for i, s in enumerate(AWKWARD)]
    assert read_sts_file(write_sts(tmp_path / "sts.tsv", rows)) == rows


def test_sts_reader_takes_quoted_fields_and_ignores_extra_columns(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text('id\tsentence1\tsentence2\tscore\n7\t"a\ttab"\tb\t1\n')
    assert read_sts_file(path) == [{"sentence1": "a\ttab", "sentence2": "b", "score": 1.0}]


def test_sts_bad_score_fails_naming_file_and_line(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\tfive\n")
    with pytest.raises(FormatError, match=r"test.tsv:3: score 'five' is not a number"):
        read_sts_file(path)


def test_sts_missing_column_fails_naming_the_column_and_line_one(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("sentence1\tscore\na\t1\n")
    with pytest.raises(FormatError, match=r"test.tsv:1: header lacks column\(s\) sentence2 \(has: sentence1 score\)"):
        read_sts_file(path)


def test_tsv_short_row_empty_file_and_no_rows_are_errors(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\n")
    with pytest.raises(FormatError, match=r"test.tsv:3: expected 3 tab-separated columns, got 2"):
        read_sts_file(path)
    path.write_text("")
    with pytest.raises(FormatError, match=r"test.tsv: empty file \(expected a header: sentence1 sentence2 score\)"):
        read_sts_file(path)
    path.write_text("sentence1\tsentence2\tscore\n")
    with pytest.raises(FormatError, match=r"test.tsv: no rows"):
        read_sts_file(path)
    with pytest.raises(FormatError, match=r"missing file: .*absent.tsv"):
        read_sts_file(tmp_path / "absent.tsv")


# ----------------------------------------------------------------------------------------- pairs


def test_pairs_round_trip_gives_the_same_rows(tmp_path):
    rows = [{"sentence1": s, "sentence2": f"other {i}", "label": i % 2} for i, s in enumerate(AWKWARD)]
    assert read_pairs(write_pairs(tmp_path / "pairs.tsv", rows)) == rows


def test_pairs_label_outside_0_1_fails_naming_file_line_and_allowed_values(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence1\tsentence2\tlabel\na\tb\t1\nc\td\t0\ne\tf\tyes\n")
    with pytest.raises(FormatError, match=r"train.tsv:4: label 'yes' is not one of 0, 1"):
        read_pairs(path)


def test_pairs_missing_label_column_fails_naming_it_and_line_one(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence1\tsentence2\tscore\na\tb\t1\n")
    with pytest.raises(FormatError, match=r"train.tsv:1: header lacks column\(s\) label"):
        read_pairs(path)


# -------------------------------------------------------------------------------- classification


def test_classification_round_trip_gives_the_same_rows(tmp_path):
    rows = [{"text": s, "label": f"label_{i % 2}"} for i, s in enumerate(AWKWARD)]
    assert read_classification_file(write_classification(tmp_path / "train.tsv", rows)) == rows


def test_classification_reader_takes_a_quoted_multiline_text(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text('text\tlabel\n"multi\nline"\tgreet\nbye\tleave\n')
    assert read_classification_file(path) == [{"text": "multi\nline", "label": "greet"},
                                              {"text": "bye", "label": "leave"}]


def test_classification_missing_column_fails_naming_it_and_line_one(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nhi\tgreet\n")
    with pytest.raises(FormatError, match=r"train.tsv:1: header lacks column\(s\) text \(has: sentence label\)"):
        read_classification_file(path)


# ------------------------------------------------------------------------------------- any texts


def test_texts_of_a_tsv_are_its_text_columns_unquoted(tmp_path):
    path = write_sts(tmp_path / "sts.tsv", [{"sentence1": 'say "hi"', "sentence2": "multi\nline", "score": 3.0},
                                            {"sentence1": "  ", "sentence2": "b", "score": 1.0}])
    assert read_texts(path) == ['say "hi"', "multi\nline", "b"]  # scores are no text; blanks dropped


def test_texts_of_a_tsv_without_a_text_column_fail_naming_the_allowed_columns(tmp_path):
    path = tmp_path / "scores.tsv"
    path.write_text("id\tscore\n1\t2\n")
    with pytest.raises(FormatError, match=r"scores.tsv:1: no text column .*has: id score.*text sentence sentence1"):
        read_texts(path)


def test_texts_of_a_beir_jsonl_are_text_then_title_and_of_other_files_their_lines(tmp_path):
    folder = _beir(tmp_path / "b")
    assert read_texts(folder / "corpus.jsonl") == ["Cats purr.", "Cats", "Stocks fell."]
    (tmp_path / "notes.txt").write_text("one\n\ntwo\n")
    assert read_texts(tmp_path / "notes.txt") == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"query": "no id"}\n')
    with pytest.raises(FormatError, match=r"bad.jsonl:1: a record needs '_id' and a string 'text'"):
        read_texts(tmp_path / "bad.jsonl")
