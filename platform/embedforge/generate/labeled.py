"""Labeled data sets → training rows of the shared schema, each with its own task instruction.

One converter per layout (``generate.labeled[].kind``) maps a set's own records to (query, positive,
hard negatives); every positive the source gives is a row (as BEIR qrels are read), the hard negatives
the source gives for that query go with it (at most ``negatives`` of them, the first ones), and a seeded
``sample_ratio`` share is kept. Files are read by ``embedforge.formats``; ``docs/generate.md`` says where
to get each of the paper's sets (Wang et al. 2024, §4.1) and ``configs/paper.yaml`` lists them.

File kinds (``path``: the set's own files, a name may also be present gzipped, ``name.gz``):

- ``beir``: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); qrels score > 0 → query /
  document as title + text. FEVER (BEIR's fever.zip; only judged documents are held).
- ``msmarco_passage``: MS MARCO passage ranking as microsoft.github.io/msmarco ships it: collection.tsv
  (pid, passage), queries.train.tsv (qid, query), qrels.train.tsv (``qid 0 pid 1``). No negatives.
- ``msmarco_document``: MS MARCO document ranking: msmarco-docs.tsv (docid, url, title, body),
  msmarco-doctrain-queries.tsv (qid, query), msmarco-doctrain-qrels.tsv (``qid 0 docid 1``, space-
  separated). Positive = title + body. No negatives.
- ``t2ranking``: THUIR/T2Ranking's data/ folder (its README): collection.tsv (pid, passage),
  queries.train.tsv (qid, query), qrels.retrieval.train.tsv (qid, pid; optional header line); negatives:
  the passages its graded qrels.train.tsv (``qid 0 pid level``, levels 0-3) marks 0, when present.
- ``sts_pairs`` (score ≥ threshold), ``pair_classification`` (label 1, e.g. MSRP), ``classification``
  (text → its label, a misleading label from the others as negative; or, ``positive: example``, text →
  another text of its label, a text of another label as negative): TSVs.

Record kinds (``hub``: read with ``datasets.load_dataset(hub, hub_config, split=split)``; or ``path``:
local .jsonl/.json/.parquet exports of the same records, read by ``formats.read_records``):

- ``ms_marco``: ``microsoft/ms_marco`` (v1.1/v2.1, dataset card): query, passages {is_selected,
  passage_text, url} → each selected passage a positive, the not-selected ones its negatives.
- ``tevatron``: Tevatron's training records (tevatron README; ``Tevatron/wikipedia-nq``, ``-trivia``,
  ``-squad``; ``miracl/miracl``; ``castorini/mr-tydi`` card): query_id, query, positive_passages /
  negative_passages [{docid, title, text}] → passages as title + text.
- ``hotpot_qa``: ``hotpotqa/hotpot_qa`` (distractor/fullwiki, dataset card): question, supporting_facts
  {title, sent_id}, context {title, sentences} → each supporting paragraph (title + its sentences) a
  positive, the other context paragraphs (the distractors) negatives.
- ``nli``: premise, hypothesis, label 0 entailment / 1 neutral / 2 contradiction / -1 none
  (``stanfordnlp/snli``, ``nyu-mll/multi_nli``, ``sentence-transformers/all-nli`` pair-class) → premise /
  each entailed hypothesis, the premise's contradicted hypotheses as negatives (SimCSE's construction).
- ``quora_duplicates``: ``sentence-transformers/quora-duplicates`` triplet (or pair) config: anchor,
  positive[, negative].
- ``eli5``: the ELI5 records of the (now withdrawn) ``eli5`` hub set and its builder: q_id, title,
  selftext, answers {a_id, text, score} → title / the highest-voted answer. No negatives.
- ``dureader``: DuReader-retrieval's JSON lines (RocketQA DuReader-Retrieval-Baseline): question_id,
  question, answer_paragraphs [{paragraph_id, paragraph_text}]. No negatives.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from embedforge.config.generate import LabeledDatasetConfig
from embedforge.formats import (
    FormatError,
    document_text,
    find_data_file,
    read_beir,
    read_classification_file,
    read_keyed_tsv,
    read_pairs,
    read_records,
    read_sts_file,
    read_trec_qrels,
)
from embedforge.schema import TrainingRow, arrow_schema

KIND_TO_GROUP = {
    "beir": "retrieval", "msmarco_passage": "retrieval", "msmarco_document": "retrieval", "t2ranking": "retrieval",
    "ms_marco": "retrieval", "tevatron": "retrieval", "hotpot_qa": "retrieval", "eli5": "retrieval",
    "dureader": "retrieval", "nli": "sts_pairs", "sts_pairs": "sts_pairs", "quora_duplicates": "pair_classification",
    "pair_classification": "pair_classification", "classification": "classification",
}

Triples = Iterator[tuple[str, str, list[str]]]
Records = Iterable[tuple[str, dict]]


# ----------------------------------------------------------------------------------- file kinds


def _beir(ds: LabeledDatasetConfig) -> Triples:
    data = read_beir(ds.path, ds.split, judged_only=True)
    for qid, docs in data["relevant_docs"].items():
        for did, score in docs.items():
            if score > 0:  # BEIR qrels may list judged-irrelevant documents (score 0)
                yield data["queries"][qid], document_text(data["corpus"][did]), []


def _judged(queries_file: Path, qrels_file: Path, collection_file: Path, columns: tuple[str, ...],
            graded_file: Path | None = None, max_negatives: int = 0) -> Triples:
    """Query / judged document from id-keyed TSVs and qrels: the qrels first, then only the queries and
    documents they name. ``graded_file``: TREC qrels whose relevance-0 documents are the negatives."""
    judged = [(q, d, line) for q, d, relevance, line in read_trec_qrels(qrels_file) if relevance > 0]
    wanted = {q for q, _, _ in judged}
    negative_ids: dict[str, list[tuple[str, int]]] = {}
    if graded_file is not None:
        for q, d, relevance, line in read_trec_qrels(graded_file):
            if relevance == 0 and q in wanted and len(negs := negative_ids.setdefault(q, [])) < max_negatives:
                negs.append((d, line))
    queries = read_keyed_tsv(queries_file, ("text",), keep=wanted)
    docs = read_keyed_tsv(collection_file, columns, keep={d for _, d, _ in judged}
                          | {d for negs in negative_ids.values() for d, _ in negs})
    for q, d, line in judged:
        if q not in queries:
            raise FormatError(f"{qrels_file}:{line}: query id {q!r} is not in {queries_file.name}")
        if d not in docs:
            raise FormatError(f"{qrels_file}:{line}: document id {d!r} is not in {collection_file.name}")
        for n, n_line in negative_ids.get(q, []):
            if n not in docs:
                raise FormatError(f"{graded_file}:{n_line}: document id {n!r} is not in {collection_file.name}")
        negatives = [document_text(docs[n]) for n, _ in negative_ids.get(q, [])]
        yield queries[q]["text"], document_text(docs[d]), negatives


def _msmarco_passage(ds: LabeledDatasetConfig) -> Triples:
    folder = Path(ds.path)
    return _judged(find_data_file(folder, "queries.train.tsv"), find_data_file(folder, "qrels.train.tsv"),
                   find_data_file(folder, "collection.tsv"), ("text",))


def _msmarco_document(ds: LabeledDatasetConfig) -> Triples:
    folder = Path(ds.path)
    return _judged(find_data_file(folder, "msmarco-doctrain-queries.tsv"),
                   find_data_file(folder, "msmarco-doctrain-qrels.tsv"),
                   find_data_file(folder, "msmarco-docs.tsv"), ("url", "title", "text"))


def _t2ranking(ds: LabeledDatasetConfig) -> Triples:
    folder = Path(ds.path)
    graded = next((p for p in (folder / "qrels.train.tsv", folder / "qrels.train.tsv.gz") if p.is_file()), None)
    return _judged(find_data_file(folder, "queries.train.tsv"), find_data_file(folder, "qrels.retrieval.train.tsv"),
                   find_data_file(folder, "collection.tsv"), ("text",), graded, ds.negatives)


def _sts(ds: LabeledDatasetConfig) -> Triples:
    for rec in read_sts_file(ds.path):
        if rec["score"] >= ds.score_threshold:
            yield rec["sentence1"], rec["sentence2"], []


def _pairs(ds: LabeledDatasetConfig) -> Triples:
    for rec in read_pairs(ds.path):
        if rec["label"] == 1:
            yield rec["sentence1"], rec["sentence2"], []


def _classification(ds: LabeledDatasetConfig, rng: random.Random, examples_rng: random.Random) -> Triples:
    """Text → its label's name, another label's name as the negative (``positive: label``); or text →
    another text of its label, a text of another label as the negative (``positive: example``: the
    label's name never appears, so the space learns the labels' own texts, as a classifier reads them).
    The negative's label is drawn from ``rng`` in both modes, so one seed samples the same rows in
    both; the texts from ``examples_rng``. A text whose label has no other distinct text has no
    positive in ``example`` mode and gives no row."""
    records = read_classification_file(ds.path)
    labels = sorted({r["label"] for r in records})
    if len(labels) < 2:
        raise FormatError(f"{ds.path}: a classification set needs at least two labels, found {labels}")
    texts: dict[str, list[str]] = {}
    for rec in records:
        texts.setdefault(rec["label"], []).append(rec["text"])
    for rec in records:
        negative_label = rng.choice([lab for lab in labels if lab != rec["label"]])
        if ds.positive == "label":
            # Labels become readable text ("card_arrival" → "card arrival") since they are encoded as documents.
            yield rec["text"], rec["label"].replace("_", " "), [negative_label.replace("_", " ")]
            continue
        same = [t for t in texts[rec["label"]] if t.strip() != rec["text"].strip()]
        if same:
            yield rec["text"], examples_rng.choice(same), [examples_rng.choice(texts[negative_label])]


# --------------------------------------------------------------------------------- record kinds


def _get(rec: dict, key: str, where: str, kind: type = str):
    value = rec.get(key) if isinstance(rec, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        got = "nothing" if value is None else f"{type(value).__name__} {str(value)[:60]!r}"
        raise FormatError(f"{where}: needs {key!r} as a {kind.__name__}, got {got}")
    return value


def _columns(rec: dict, parent: str, keys: tuple[str, ...], where: str) -> list[list]:
    """Equal-length lists under ``rec[parent]`` (how ``datasets`` gives a sequence of dicts)."""
    group = _get(rec, parent, where, dict)
    cols = [_get(group, key, f"{where}: {parent}", list) for key in keys]
    if len({len(c) for c in cols}) > 1:
        raise FormatError(f"{where}: {parent}.{' / '.join(keys)} differ in length")
    return cols


def _passage(p: dict, where: str) -> str:
    return document_text({"title": str(p.get("title") or ""), "text": _get(p, "text", where)})


def _ms_marco(records: Records) -> Triples:
    for where, rec in records:
        query = _get(rec, "query", where)
        selected, texts = _columns(rec, "passages", ("is_selected", "passage_text"), where)
        negatives = [t for s, t in zip(selected, texts, strict=True) if not s]
        for s, text in zip(selected, texts, strict=True):
            if s:
                yield query, text, negatives


def _tevatron(records: Records) -> Triples:
    for where, rec in records:
        query = _get(rec, "query", where)
        positives = _get(rec, "positive_passages", where, list)
        negatives = [_passage(p, f"{where}: negative_passages") for p in rec.get("negative_passages") or []]
        for p in positives:
            yield query, _passage(p, f"{where}: positive_passages"), negatives


def _hotpot_qa(records: Records) -> Triples:
    for where, rec in records:
        question = _get(rec, "question", where)
        (supporting,) = _columns(rec, "supporting_facts", ("title",), where)
        titles, sentences = _columns(rec, "context", ("title", "sentences"), where)
        # HotpotQA keeps each sentence's leading space: joined, they are the paragraph.
        paragraphs = [(title, f"{title} {''.join(sents)}".strip()) for title, sents in zip(titles, sentences, strict=True)]
        negatives = [text for title, text in paragraphs if title not in supporting]
        for title, text in paragraphs:
            if title in supporting:
                yield question, text, negatives


NLI_LABELS = {0: "entailment", 1: "neutral", 2: "contradiction", -1: "no gold label"}


def _nli(records: Records) -> Triples:
    by_premise: dict[str, tuple[list[str], list[str]]] = {}
    for where, rec in records:
        premise, hypothesis = _get(rec, "premise", where), _get(rec, "hypothesis", where)
        label = rec.get("label")
        if type(label) is not int or label not in NLI_LABELS:
            raise FormatError(f"{where}: label {label!r} is not one of "
                              + ", ".join(f"{k} ({v})" for k, v in NLI_LABELS.items()))
        entailed, contradicted = by_premise.setdefault(premise, ([], []))
        if label == 0:
            entailed.append(hypothesis)
        elif label == 2:
            contradicted.append(hypothesis)
    for premise, (entailed, contradicted) in by_premise.items():
        for hypothesis in entailed:
            yield premise, hypothesis, contradicted


def _quora_duplicates(records: Records) -> Triples:
    for where, rec in records:
        anchor, positive = _get(rec, "anchor", where), _get(rec, "positive", where)
        negative = _get(rec, "negative", where) if rec.get("negative") is not None else ""
        yield anchor, positive, [negative] if negative else []


def _eli5(records: Records) -> Triples:
    for where, rec in records:
        title = _get(rec, "title", where)
        texts, scores = _columns(rec, "answers", ("text", "score"), where)
        if texts:
            best = max(range(len(texts)), key=lambda i: scores[i])  # the first of equally voted answers
            yield title, texts[best], []


def _dureader(records: Records) -> Triples:
    for where, rec in records:
        question = _get(rec, "question", where)
        for p in _get(rec, "answer_paragraphs", where, list):
            yield question, _get(p, "paragraph_text", f"{where}: answer_paragraphs"), []


def _hub_records(ds: LabeledDatasetConfig) -> Records:
    """The hub set's records (one thin call to the datasets library); its failure says to use `path`."""
    where = f"hub {ds.hub} ({ds.hub_config or 'default'}, {ds.split})"
    try:
        import datasets

        data = datasets.load_dataset(ds.hub, ds.hub_config, split=ds.split)
    except Exception as exc:  # no network, no such set or config, a loader script datasets no longer runs
        raise FormatError(
            f"generate.labeled {ds.name!r}: could not load {where} with the datasets library "
            f"({type(exc).__name__}: {str(exc)[:300]}). Where the hub is out of reach, download or export "
            f"that split's records (.jsonl/.json/.parquet) and give their file or folder as `path` "
            f"instead of `hub` (docs/generate.md)") from exc
    return ((f"{where} record {i}", rec) for i, rec in enumerate(data, 1))


RECORD_CONVERTERS = {"ms_marco": _ms_marco, "tevatron": _tevatron, "hotpot_qa": _hotpot_qa, "nli": _nli,
                     "quora_duplicates": _quora_duplicates, "eli5": _eli5, "dureader": _dureader}
FILE_CONVERTERS = {"beir": _beir, "msmarco_passage": _msmarco_passage, "msmarco_document": _msmarco_document,
                   "t2ranking": _t2ranking, "sts_pairs": _sts, "pair_classification": _pairs}


def _triples(ds: LabeledDatasetConfig, rng: random.Random, seed: int) -> Triples:
    if ds.kind in RECORD_CONVERTERS:
        records = _hub_records(ds) if ds.hub else read_records(ds.path)
        return RECORD_CONVERTERS[ds.kind](records)
    if ds.kind == "classification":
        return _classification(ds, rng, random.Random(f"{seed}:{ds.name}:examples"))
    return FILE_CONVERTERS[ds.kind](ds)


def load_labeled(ds: LabeledDatasetConfig, seed: int = 0) -> list[TrainingRow]:
    rng = random.Random(f"{seed}:{ds.name}")
    tasks = [ds.task] if isinstance(ds.task, str) else ds.task
    rows = []
    for i, (query, positive, negatives) in enumerate(_triples(ds, rng, seed)):
        query, positive = query.strip(), positive.strip()
        if not query or not positive:
            continue
        if ds.sample_ratio < 1 and rng.random() >= ds.sample_ratio:
            continue
        negatives = [n.strip() for n in negatives if n.strip() and n.strip() != positive][: ds.negatives]
        rows.append(TrainingRow(
            id=f"{ds.name}-{i:07d}", group=KIND_TO_GROUP[ds.kind], task=tasks[len(rows) % len(tasks)], query=query,
            positive=positive, negatives=negatives, language=ds.language, teacher=ds.name, source=ds.name,
        ))
        if ds.max_rows and len(rows) >= ds.max_rows:
            break
    return rows


def write_labeled(datasets: list[LabeledDatasetConfig], data_dir: str | Path, seed: int = 0) -> dict[str, int]:
    """One Parquet file per data set (rewritten whole: the same config gives the same file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for ds in datasets:
        rows = load_labeled(ds, seed)
        tmp = data_dir / f".labeled-{ds.name}.parquet.tmp"
        pq.write_table(pa.Table.from_pylist([r.to_dict() for r in rows], schema=arrow_schema()), tmp)
        tmp.replace(data_dir / f"labeled-{ds.name}.parquet")
        counts[ds.name] = len(rows)
    return counts
