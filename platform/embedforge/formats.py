"""One reader and one writer per data-set file format the platform reads or writes.

BEIR folders (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), STS pairs (TSV:
``sentence1 sentence2 score``), labeled pairs (TSV: ``sentence1 sentence2 label``) and
classification sets (TSV: ``text label``). Readers are pure functions that validate as they read:
a missing file, a malformed line, qrels naming unknown ids or an empty file raise ``FormatError``
naming the file and the line. Generation (labeled sets, contamination texts), evaluation (local
tasks), the pipeline's held-out split and the benchmarks all read and write through here.

Every TSV is read and written with the csv module's standard quoting: a field in double quotes may
hold tabs, newlines and doubled quotes (Banking77, STSB and MSRP quote some of their sentences).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from embedforge.config.base import ConfigError

STS_COLUMNS = ("sentence1", "sentence2", "score")
PAIR_COLUMNS = ("sentence1", "sentence2", "label")
PAIR_LABELS = ("0", "1")  # 1 = the two sentences are paraphrases / positives
CLASSIFICATION_COLUMNS = ("text", "label")
# Columns of any TSV whose cells are text an evaluation shows a model (contamination checks).
TEXT_COLUMNS = ("text", "sentence", "sentence1", "sentence2", "query", "title")


class FormatError(ConfigError):
    """A data file that cannot be used; the message names the file (and the line)."""


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FormatError(f"missing file: {path}")
    return path


# ------------------------------------------------------------------------------------------ BEIR


def read_jsonl_texts(path: Path, what: str) -> dict[str, dict[str, str]]:
    """``{_id: {"text":..., "title":...}}`` from a BEIR jsonl file."""
    rows: dict[str, dict[str, str]] = {}
    with open(_require(path), encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or "_id" not in obj or not isinstance(obj.get("text"), str):
                raise FormatError(f"{path}:{lineno}: a {what} needs '_id' and a string 'text'")
            rid = str(obj["_id"])
            if rid in rows:
                raise FormatError(f"{path}:{lineno}: duplicate _id {rid!r}")
            rows[rid] = {"text": obj["text"], "title": str(obj.get("title") or "")}
    if not rows:
        raise FormatError(f"{path}: no {what}s (the file is empty)")
    return rows


def read_qrels(path: Path, query_ids: set[str], corpus_ids: set[str]) -> dict[str, dict[str, int]]:
    """``{query_id: {corpus_id: score}}``; every id must exist in queries/corpus."""
    qrels: dict[str, dict[str, int]] = {}
    with open(_require(path), encoding="utf-8", newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and row[0] == "query-id":
                continue
            if len(row) != 3:
                raise FormatError(f"{path}:{lineno}: expected 3 tab-separated columns "
                                  f"(query-id corpus-id score), got {len(row)}")
            qid, did, score = row
            try:
                s = int(float(score))
            except ValueError:
                raise FormatError(f"{path}:{lineno}: score {score!r} is not a number") from None
            if qid not in query_ids:
                raise FormatError(f"{path}:{lineno}: query-id {qid!r} is not in queries.jsonl")
            if did not in corpus_ids:
                raise FormatError(f"{path}:{lineno}: corpus-id {did!r} is not in corpus.jsonl")
            qrels.setdefault(qid, {})[did] = s
    if not qrels:
        raise FormatError(f"{path}: no relevance judgements")
    return qrels


def read_beir(folder: str | Path, split: str) -> dict:
    """corpus, queries (those with judgements), relevant_docs of a BEIR folder, validated."""
    folder = Path(folder)
    qrels_path = _require(folder / "qrels" / f"{split}.tsv")
    corpus = read_jsonl_texts(folder / "corpus.jsonl", "document")
    queries = read_jsonl_texts(folder / "queries.jsonl", "query")
    qrels = read_qrels(qrels_path, set(queries), set(corpus))
    return {"corpus": corpus, "queries": {q: queries[q]["text"] for q in qrels}, "relevant_docs": qrels}


def document_text(doc: dict[str, str]) -> str:
    """A BEIR document as the one text a model encodes: title, a space, text (as mteb joins them)."""
    return f"{doc.get('title') or ''} {doc['text']}".strip()


def write_beir(folder: str | Path, corpus: dict[str, dict[str, str]], queries: dict[str, str],
               qrels: dict[str, dict[str, int]], split: str = "test") -> Path:
    """A BEIR folder; ``corpus`` maps ids to ``{"title", "text"}``. Files are replaced whole."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for did, doc in corpus.items():
            fh.write(json.dumps({"_id": did, "title": doc.get("title", ""), "text": doc["text"]}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in qrels.items():
            for did, score in docs.items():
                fh.write(f"{qid}\t{did}\t{score}\n")
    return folder


# ------------------------------------------------------------------------------------------- TSV


def read_tsv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a TSV with a header naming ``columns`` (extra columns ignored); ``_line`` is each
    row's line number, for errors about its values."""
    rows = []
    with open(_require(path), encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None:
            raise FormatError(f"{path}: empty file (expected a header: {' '.join(columns)})")
        missing = [c for c in columns if c not in header]
        if missing:
            raise FormatError(f"{path}:1: header lacks column(s) {', '.join(missing)} (has: {' '.join(header)})")
        idx = [header.index(c) for c in columns]
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if len(row) < len(header):
                raise FormatError(f"{path}:{lineno}: expected {len(header)} tab-separated columns, got {len(row)}")
            rows.append({**{c: row[i] for c, i in zip(columns, idx, strict=True)}, "_line": lineno})
    if not rows:
        raise FormatError(f"{path}: no rows")
    return rows


def _write_tsv(path: str | Path, columns: tuple[str, ...], rows: list[dict]) -> Path:
    """A header and one line per row; csv quotes any field holding a tab, newline or quote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        minimal = csv.writer(fh, delimiter="\t", lineterminator="\n")
        # With "\n" line ends csv leaves a lone "\r" unquoted, and readers take it for a line end:
        # rows holding one are written fully quoted.
        quoted = csv.writer(fh, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_ALL)
        minimal.writerow(columns)
        for row in rows:
            values = [row[c] for c in columns]
            (quoted if any("\r" in str(v) for v in values) else minimal).writerow(values)
    return path


def read_sts_file(path: str | Path) -> list[dict]:
    """``[{"sentence1", "sentence2", "score": float}]`` from an STS TSV (e.g. STSB)."""
    path = Path(path)
    out = []
    for r in read_tsv(path, STS_COLUMNS):
        try:
            score = float(r["score"])
        except ValueError:
            raise FormatError(f"{path}:{r['_line']}: score {r['score']!r} is not a number") from None
        out.append({"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": score})
    return out


def write_sts(path: str | Path, rows: list[dict]) -> Path:
    return _write_tsv(path, STS_COLUMNS, rows)


def read_pairs(path: str | Path) -> list[dict]:
    """``[{"sentence1", "sentence2", "label": 0 or 1}]`` from a labeled-pair TSV (e.g. MSRP)."""
    path = Path(path)
    out = []
    for r in read_tsv(path, PAIR_COLUMNS):
        label = r["label"].strip()
        if label not in PAIR_LABELS:
            raise FormatError(f"{path}:{r['_line']}: label {r['label']!r} is not one of {', '.join(PAIR_LABELS)}")
        out.append({"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": int(label)})
    return out


def write_pairs(path: str | Path, rows: list[dict]) -> Path:
    return _write_tsv(path, PAIR_COLUMNS, rows)


def read_classification_file(path: str | Path) -> list[dict]:
    """``[{"text", "label"}]`` from a classification TSV (e.g. Banking77); labels kept as written."""
    return [{"text": r["text"], "label": r["label"]} for r in read_tsv(Path(path), CLASSIFICATION_COLUMNS)]


def write_classification(path: str | Path, rows: list[dict]) -> Path:
    return _write_tsv(path, CLASSIFICATION_COLUMNS, rows)


# ----------------------------------------------------------------------------- any text file


def read_texts(path: str | Path) -> list[str]:
    """Every non-blank text of a data file: a ``.tsv``'s text columns (``TEXT_COLUMNS``), a BEIR
    ``.jsonl``'s text and title, else each line. Contamination checks compare against these."""
    path = Path(path)
    if path.suffix == ".jsonl":
        docs = read_jsonl_texts(path, "record").values()
        texts = [t for doc in docs for t in (doc["text"], doc["title"])]
    elif path.suffix == ".tsv":
        with open(_require(path), encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh, delimiter="\t"), [])
        columns = tuple(h for h in header if h.lower() in TEXT_COLUMNS)
        if not columns:
            raise FormatError(f"{path}:1: no text column in the header (has: {' '.join(header)}; "
                              f"text columns are: {' '.join(TEXT_COLUMNS)})")
        texts = [r[c] for r in read_tsv(path, columns) for c in columns]
    else:
        with open(_require(path), encoding="utf-8") as fh:
            texts = [line.rstrip("\n") for line in fh]
    return [t for t in texts if t.strip()]
