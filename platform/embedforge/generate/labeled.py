"""Labeled data sets → training rows of the shared schema, each with its own task instruction.

BEIR folders (queries + corpus + qrels → query/positive), STS pairs (score ≥ threshold → positive
pair), labeled pairs (label 1 → positive; e.g. MSRP), classification TSVs (text → its label, a
misleading label drawn from the other labels). Each keeps a seeded ``sample_ratio`` share.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from embedforge.config.generate import LabeledDatasetConfig
from embedforge.formats import (
    FormatError,
    document_text,
    read_beir,
    read_classification_file,
    read_pairs,
    read_sts_file,
)
from embedforge.schema import TrainingRow, arrow_schema

KIND_TO_GROUP = {"beir": "retrieval", "sts_pairs": "sts_pairs", "pair_classification": "pair_classification",
                 "classification": "classification"}


def _beir(ds: LabeledDatasetConfig) -> Iterator[tuple[str, str, list[str]]]:
    data = read_beir(ds.path, ds.split)
    for qid, docs in data["relevant_docs"].items():
        for did, score in docs.items():
            if score > 0:  # BEIR qrels may list judged-irrelevant documents (score 0)
                yield data["queries"][qid], document_text(data["corpus"][did]), []


def _sts(ds: LabeledDatasetConfig) -> Iterator[tuple[str, str, list[str]]]:
    for rec in read_sts_file(ds.path):
        if rec["score"] >= ds.score_threshold:
            yield rec["sentence1"], rec["sentence2"], []


def _pairs(ds: LabeledDatasetConfig) -> Iterator[tuple[str, str, list[str]]]:
    for rec in read_pairs(ds.path):
        if rec["label"] == 1:
            yield rec["sentence1"], rec["sentence2"], []


def _classification(ds: LabeledDatasetConfig, rng: random.Random) -> Iterator[tuple[str, str, list[str]]]:
    records = read_classification_file(ds.path)
    labels = sorted({r["label"] for r in records})
    if len(labels) < 2:
        raise FormatError(f"{ds.path}: a classification set needs at least two labels, found {labels}")
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
