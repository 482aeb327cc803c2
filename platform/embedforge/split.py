"""The pipeline's held-out split: some generated rows become a retrieval task that is never trained on.

Which rows are held out is stable per row id (crc32), so reruns and resumed runs hold out the same
rows. The held-out rows' queries become BEIR queries whose relevant document is their positive; all
their positives and negatives form the corpus.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

from pydantic import BaseModel

from embedforge.formats import write_beir


class SplitResult(BaseModel):
    """What the split stage wrote: the training rows' folder and the held-out BEIR task's folder."""

    train_rows: int
    heldout_queries: int
    heldout_corpus: int
    train_data: str
    heldout_dir: str


def is_heldout(row_id: str, fraction: float) -> bool:
    return (zlib.crc32(row_id.encode()) % 10_000) < fraction * 10_000


def split_rows(rows: list[dict], fraction: float, groups: list[str], min_queries: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows); at least ``min_queries`` eligible rows are held out when possible."""
    eligible = [r for r in rows if r["group"] in groups]
    held_ids = {r["id"] for r in eligible if is_heldout(r["id"], fraction)}
    if len(held_ids) < min_queries:
        extra = sorted((r for r in eligible if r["id"] not in held_ids), key=lambda r: zlib.crc32(r["id"].encode()))
        held_ids |= {r["id"] for r in extra[: min_queries - len(held_ids)]}
    if len(held_ids) >= len(eligible) and eligible:
        raise ValueError(
            f"pipeline: only {len(eligible)} rows of groups {groups} were generated; holding out "
            f"{len(held_ids)} would leave none to train on (raise generate.num_rows)"
        )
    train = [r for r in rows if r["id"] not in held_ids]
    held = [r for r in rows if r["id"] in held_ids]
    return train, held


def heldout_task(held: list[dict]) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus, queries, qrels) of the held-out rows; a document's id is a hash of its text."""
    corpus: dict[str, dict[str, str]] = {}

    def doc_id(text: str) -> str:
        did = "d" + hashlib.sha1(text.encode()).hexdigest()[:12]
        corpus[did] = {"title": "", "text": text}
        return did

    queries, qrels = {}, {}
    for r in held:
        qrels[r["id"]] = {doc_id(r["positive"]): 1}
        for neg in r.get("negatives") or []:
            if neg.strip():
                doc_id(neg)
        queries[r["id"]] = r["query"]
    return corpus, queries, qrels


def run_split(pipeline_cfg, data_dir: Path, out_dir: Path) -> SplitResult:
    """Read the generated Parquet rows under ``data_dir``; write ``out_dir/train_data`` and ``out_dir/heldout``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedforge.schema import arrow_schema

    files = sorted(data_dir.glob("*.parquet"))
    if not files:
        raise ValueError(f"pipeline: no generated data under {data_dir} (run the generate stage)")
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    p = pipeline_cfg
    train_rows, held = split_rows(rows, p.heldout_fraction, p.heldout_groups, p.heldout_min_queries)
    train_dir = out_dir / "train_data"
    train_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(train_rows, schema=arrow_schema()), train_dir / "rows.parquet")
    corpus, queries, qrels = heldout_task(held)
    write_beir(out_dir / "heldout", corpus, queries, qrels)
    return SplitResult(train_rows=len(train_rows), heldout_queries=len(queries), heldout_corpus=len(corpus),
                       train_data=str(train_dir), heldout_dir=str(out_dir / "heldout"))
