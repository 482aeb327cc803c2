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
import gzip
import json
from collections.abc import Iterator
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


def json_lines(fh, path) -> Iterator[tuple[int, object]]:
    """(line number, parsed object) of each non-blank line of an open JSON-lines file; a line that
    is not JSON raises ``FormatError`` naming the file and line."""
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        yield lineno, obj


def read_jsonl_texts(path: Path, what: str, keep: set[str] | None = None) -> dict[str, dict[str, str]]:
    """``{_id: {"text":..., "title":...}}`` from a BEIR jsonl file (``keep``: only those ids)."""
    rows: dict[str, dict[str, str]] = {}
    with open(_require(path), encoding="utf-8") as fh:
        for lineno, obj in json_lines(fh, path):
            if not isinstance(obj, dict) or "_id" not in obj or not isinstance(obj.get("text"), str):
                raise FormatError(f"{path}:{lineno}: a {what} needs '_id' and a string 'text'")
            rid = str(obj["_id"])
            if keep is not None and rid not in keep:
                continue
            if rid in rows:
                raise FormatError(f"{path}:{lineno}: duplicate _id {rid!r}")
            rows[rid] = {"text": obj["text"], "title": str(obj.get("title") or "")}
    if not rows and keep is None:
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


def read_beir(folder: str | Path, split: str, judged_only: bool = False) -> dict:
    """corpus, queries (those with judgements), relevant_docs of a BEIR folder, validated.

    ``judged_only``: the corpus holds only the judged documents (a training set's qrels name a few
    hundred thousand of FEVER's 5.4M; the ids are read from the qrels first)."""
    folder = Path(folder)
    qrels_path = _require(folder / "qrels" / f"{split}.tsv")
    keep = None
    if judged_only:
        with open(qrels_path, encoding="utf-8", newline="") as fh:
            keep = {row[1] for row in csv.reader(fh, delimiter="\t") if len(row) > 1}
    corpus = read_jsonl_texts(folder / "corpus.jsonl", "document", keep)
    queries = read_jsonl_texts(folder / "queries.jsonl", "query")
    qrels = read_qrels(qrels_path, set(queries), set(corpus))
    return {"corpus": corpus, "queries": {q: queries[q]["text"] for q in qrels}, "relevant_docs": qrels}


def labeled_beir_folder(path: str | Path, split: str) -> Path | None:
    """The BEIR folder ``path`` names (the folder, or its ``corpus.jsonl``) when it also holds labeled
    queries for ``split`` (``queries.jsonl`` and ``qrels/<split>.tsv``); None for anything else."""
    p = Path(path).expanduser()
    folder = p.parent if p.name == "corpus.jsonl" else p
    has = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    return folder if all(f.is_file() for f in has) else None


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


# ------------------------------------------------------------------ labeled training sets
# The files of the paper's labeled sets (generate/labeled.py): the id-keyed TSVs and TREC qrels MS MARCO
# and T2Ranking ship, and records (one JSON object each) of sets kept on the Hugging Face hub, exported
# to local files. Each may also be read gzipped (``name.gz``), as the sets are distributed.

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
# First fields of a header line some releases put on top of an id-keyed TSV or qrels (T2Ranking's).
HEADER_IDS = ("qid", "pid", "docid")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def find_data_file(folder: str | Path, name: str) -> Path:
    """``folder/name``, else ``folder/name.gz``."""
    folder = Path(folder)
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    raise FormatError(f"missing file: {folder / name} (or {name}.gz)")


def read_keyed_tsv(path: str | Path, columns: tuple[str, ...],
                   keep: set[str] | None = None) -> dict[str, dict[str, str]]:
    """``{id: {column: value}}`` from a headerless TSV of ``id<TAB>columns...`` (MS MARCO's
    ``collection.tsv``/``queries.train.tsv``/``msmarco-docs.tsv``, T2Ranking's collection and queries).

    No csv quoting: these files hold bare quotes, and the last column keeps any further tabs. A first line
    whose id is a column name (``HEADER_IDS``) is skipped. ``keep``: only those ids are stored and checked
    (an 8.8M-passage collection when a few hundred thousand passages are judged)."""
    path = Path(path)
    rows: dict[str, dict[str, str]] = {}
    lines = 0
    with _open_text(_require(path)) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            lines += 1
            rid, tab, rest = line.partition("\t")
            if lineno == 1 and rid.strip().lower() in HEADER_IDS:
                continue
            if keep is not None and rid not in keep:
                continue
            values = rest.split("\t", len(columns) - 1) if tab else []
            if len(values) != len(columns):
                raise FormatError(f"{path}:{lineno}: expected {1 + len(columns)} tab-separated columns "
                                  f"(id {' '.join(columns)}), got {1 + len(values)}")
            if rid in rows:
                raise FormatError(f"{path}:{lineno}: duplicate id {rid!r}")
            rows[rid] = dict(zip(columns, values, strict=True))
    if not lines:
        raise FormatError(f"{path}: no rows (the file is empty)")
    return rows


def read_trec_qrels(path: str | Path) -> list[tuple[str, str, int, int]]:
    """``[(query id, document id, relevance, line)]`` from TREC qrels: ``qid iteration docid relevance``
    separated by tabs or spaces (MS MARCO's ``qrels.train.tsv`` and ``msmarco-doctrain-qrels.tsv``,
    T2Ranking's graded ``qrels.train.tsv``), or ``qid docid`` pairs, each relevant (T2Ranking's
    ``qrels.retrieval.train.tsv``). A header line (first field ``qid``) is skipped."""
    path = Path(path)
    out = []
    with _open_text(_require(path)) as fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields or (lineno == 1 and fields[0].lower() in HEADER_IDS):
                continue
            if len(fields) == 2:
                out.append((fields[0], fields[1], 1, lineno))
                continue
            if len(fields) != 4:
                raise FormatError(f"{path}:{lineno}: expected 4 columns (qid iteration docid relevance) "
                                  f"or 2 (qid docid), got {len(fields)}")
            try:
                relevance = int(fields[3])
            except ValueError:
                raise FormatError(f"{path}:{lineno}: relevance {fields[3]!r} is not an integer") from None
            out.append((fields[0], fields[2], relevance, lineno))
    if not out:
        raise FormatError(f"{path}: no relevance judgements")
    return out


def _record_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(RECORD_SUFFIXES))
        if not files:
            raise FormatError(f"{path}: no data files in the folder ({', '.join(RECORD_SUFFIXES)})")
        return files
    if not path.name.endswith(RECORD_SUFFIXES):
        raise FormatError(f"{path}: not a records file (expected {', '.join(RECORD_SUFFIXES)}, or a folder of them)")
    return [_require(path)]


def _json_records(path: Path) -> Iterator[tuple[str, object]]:
    with _open_text(path) as fh:
        first = fh.read(1)
        while first and first.isspace():
            first = fh.read(1)
        fh.seek(0)
        if first == "[":  # one JSON array of records
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise FormatError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
            for n, obj in enumerate(data, 1):
                yield f"{path} record {n}", obj
            return
        for lineno, obj in json_lines(fh, path):
            yield f"{path}:{lineno}", obj


def _parquet_records(path: Path, columns: list[str] | None = None) -> Iterator[tuple[str, object]]:
    """``(where, row as a dict)`` of a Parquet file, streamed in batches (``columns``: only those)."""
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=columns):
        for obj in batch.to_pylist():
            n += 1
            yield f"{path} row {n}", obj


def read_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """``(where, record)`` for each record of a data set exported from the Hugging Face hub, ``where``
    naming the file and line (or row): JSON lines (``.jsonl``, or ``.json`` unless the file is one JSON
    array of records), Parquet, either JSON gzipped; a folder: each such file in it, in name order.

    A record is a JSON object with the hub set's columns, nested as ``datasets`` gives them (a sequence
    of dicts is a dict of lists, as in its Parquet and JSON exports). Records are streamed, not held."""
    files = _record_files(Path(path))
    count = 0
    for file in files:
        records = _parquet_records(file) if file.suffix == ".parquet" else _json_records(file)
        for where, obj in records:
            if not isinstance(obj, dict):
                raise FormatError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
            count += 1
            yield where, obj
    if not count:
        raise FormatError(f"{path}: no records (the data is empty)")


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


# ------------------------------------------------------------------------- corpora (documents)
# Readers of a corpus to generate queries for (generate/corpus.py): each returns
# ``{doc_id: {"title", "text"}}`` like ``read_jsonl_texts``. A BEIR ``corpus.jsonl`` is read by
# ``read_jsonl_texts(path, "document")``.

CORPUS_TEXT_SUFFIXES = (".txt", ".md")


def read_parquet_documents(path: str | Path, id_column: str, text_column: str,
                           title_column: str | None = None) -> dict[str, dict[str, str]]:
    """Documents of a Parquet file, or of every ``*.parquet`` under a folder (sorted by path), from the
    named columns; a missing column, a null or duplicate id fail naming the file and the row."""
    import pyarrow.parquet as pq

    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [_require(path)]
    if not files:
        raise FormatError(f"{path}: no .parquet files in the folder")
    wanted = [c for c in (id_column, text_column, title_column) if c]
    docs: dict[str, dict[str, str]] = {}
    for file in files:
        names = pq.read_schema(file).names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise FormatError(f"{file}: no column {missing[0]!r} (has: {', '.join(names)})")
        for n, (_, row) in enumerate(_parquet_records(file, wanted)):
            rid, text, title = row[id_column], row[text_column], row.get(title_column) if title_column else None
            if rid is None or not str(rid).strip():
                raise FormatError(f"{file}: row {n}: empty {id_column!r}")
            if text is not None and not isinstance(text, str):
                raise FormatError(f"{file}: row {n}: {text_column!r} is not a string ({type(text).__name__})")
            rid = str(rid)
            if rid in docs:
                raise FormatError(f"{file}: row {n}: duplicate id {rid!r}")
            docs[rid] = {"text": text or "", "title": str(title or "")}
    if not docs:
        raise FormatError(f"{path}: no documents (the Parquet data is empty)")
    return docs


def read_text_folder(folder: str | Path, suffixes: tuple[str, ...] = CORPUS_TEXT_SUFFIXES) -> dict[str, dict[str, str]]:
    """One document per ``.txt``/``.md`` file under ``folder`` (recursive, sorted), its id the path
    relative to the folder with ``/`` separators; the whole file is the text (no title)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FormatError(f"missing folder: {folder}")
    docs: dict[str, dict[str, str]] = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        docs[file.relative_to(folder).as_posix()] = {"text": text, "title": ""}
    if not docs:
        raise FormatError(f"{folder}: no {' or '.join(suffixes)} files")
    return docs
