"""Labeled data sets → training rows of the shared schema, each with its own task instruction.

BEIR folders (queries + corpus + qrels → query/positive), STS pairs (score ≥ threshold → positive
pair), labeled pairs (label 1 → positive; e.g. MSRP), classification TSVs (text → its label, a
misleading label drawn from the other labels). Each keeps a seeded ``sample_ratio`` share.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path

from embedforge.config.generate import LabeledDatasetConfig
from embedforge.schema import TrainingRow, arrow_schema

KIND_TO_GROUP = {"beir": "retrieval", "sts_pairs": "sts_pairs", "pair_classification": "pair_classification",
                 "classification": "classification"}


def _tsv(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"labeled data file {str(path)!r} does not exist")
    with path.open(newline="") as f:
        yield from csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)


def _need(rec: dict, cols: tuple[str, ...], path: Path) -> None:
    missing = [c for c in cols if c not in rec]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {sorted(rec)}")


def _beir(ds: LabeledDatasetConfig) -> Iterator[tuple[str, str, list[str]]]:
    root = Path(ds.path)
    qrels = root / "qrels" / f"{ds.split}.tsv"
    for needed in (root / "queries.jsonl", root / "corpus.jsonl", qrels):
        if not needed.is_file():
            raise FileNotFoundError(f"BEIR folder {str(root)!r}: {needed.name} missing (split {ds.split!r})")
    pairs = [(r["query-id"], r["corpus-id"]) for r in _tsv(qrels) if float(r.get("score", 1)) > 0]
    wanted_q = {q for q, _ in pairs}
    wanted_d = {d for _, d in pairs}
    queries, docs = {}, {}
    with (root / "queries.jsonl").open() as f:
        for line in f:
            obj = json.loads(line)
            if obj["_id"] in wanted_q:
                queries[obj["_id"]] = obj["text"]
    with (root / "corpus.jsonl").open() as f:
        for line in f:
            obj = json.loads(line)
            if obj["_id"] in wanted_d:
                title = obj.get("title") or ""
                docs[obj["_id"]] = f"{title} {obj['text']}".strip()
    for q, d in pairs:
        if q in queries and d in docs:
            yield queries[q], docs[d], []


def _sts(ds: LabeledDatasetConfig) -> Iterator[tuple[str, str, list[str]]]:
    for rec in _tsv(Path(ds.path)):
        _need(rec, ("sentence1", "sentence2", "score"), Path(ds.path))
        if float(rec["score"]) >= ds.score_threshold:
            yield rec["sentence1"], rec["sentence2"], []


def _pairs(ds: LabeledDatasetConfig) -> Iterator[tuple[str, str, list[str]]]:
    for rec in _tsv(Path(ds.path)):
        _need(rec, ("sentence1", "sentence2", "label"), Path(ds.path))
        if str(rec["label"]).strip() == "1":
            yield rec["sentence1"], rec["sentence2"], []


def _classification(ds: LabeledDatasetConfig, rng: random.Random) -> Iterator[tuple[str, str, list[str]]]:
    records = list(_tsv(Path(ds.path)))
    if records:
        _need(records[0], ("text", "label"), Path(ds.path))
    labels = sorted({r["label"] for r in records})
    if len(labels) < 2:
        raise ValueError(f"{ds.path}: a classification set needs at least two labels, found {labels}")
    for rec in records:
        others = [lab for lab in labels if lab != rec["label"]]
        # Labels become readable text ("card_arrival" → "card arrival") since they are encoded as documents.
        yield rec["text"], rec["label"].replace("_", " "), [rng.choice(others).replace("_", " ")]


def load_labeled(ds: LabeledDatasetConfig, seed: int = 0) -> list[TrainingRow]:
    rng = random.Random(f"{seed}:{ds.name}")
    source = {"beir": _beir, "sts_pairs": _sts, "pair_classification": _pairs}.get(ds.kind)
    triples = source(ds) if source else _classification(ds, rng)
    rows = []
    for i, (query, positive, negatives) in enumerate(triples):
        if not query.strip() or not positive.strip():
            continue
        if ds.sample_ratio < 1 and rng.random() >= ds.sample_ratio:
            continue
        rows.append(TrainingRow(
            id=f"{ds.name}-{i:07d}", group=KIND_TO_GROUP[ds.kind], task=ds.task, query=query.strip(),
            positive=positive.strip(), negatives=negatives, language="English", teacher=ds.name, source=ds.name,
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
