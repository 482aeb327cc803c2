"""The pipeline's held-out split: some generated rows become a retrieval task that is never trained on.

Which rows are held out is stable per row id (crc32), so reruns and resumed runs hold out the same
rows. Corpus-grounded rows are held out by *document* (every query written for any chunk of a
document lands on the same side): overlapping chunks of one document on both sides would let training
see the held-out answers. The held-out rows' queries become BEIR queries whose relevant document is
their positive; their positives and negatives form the corpus, and every corpus-grounded row's chunk
joins it as a distractor (the user's collection is what their queries search).
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

from pydantic import BaseModel

from embedforge.formats import write_beir
from embedforge.schema import chunk_id_of, doc_id_of_chunk


class SplitResult(BaseModel):
    """What the split stage wrote: the training rows' folder and the held-out BEIR task's folder."""

    train_rows: int
    heldout_queries: int
    heldout_corpus: int
    train_data: str
    heldout_dir: str


def is_heldout(row_id: str, fraction: float) -> bool:
    return (zlib.crc32(row_id.encode()) % 10_000) < fraction * 10_000


def split_key(row: dict) -> str:
    """What decides a row's side: its document for a corpus-grounded row, else the row itself."""
    chunk = chunk_id_of(row)
    return f"doc:{doc_id_of_chunk(chunk)}" if chunk is not None else row["id"]


def split_rows(rows: list[dict], fraction: float, groups: list[str], min_queries: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows); at least ``min_queries`` eligible rows are held out when possible
    (whole documents at a time for corpus-grounded rows)."""
    eligible = [r for r in rows if r["group"] in groups]
    held_keys = {split_key(r) for r in eligible if is_heldout(split_key(r), fraction)}
    held_ids = {r["id"] for r in eligible if split_key(r) in held_keys}
    if len(held_ids) < min_queries:
        extra = sorted({split_key(r) for r in eligible} - held_keys, key=lambda k: zlib.crc32(k.encode()))
        for key in extra:
            if len(held_ids) >= min_queries:
                break
            held_ids |= {r["id"] for r in eligible if split_key(r) == key}
    if len(held_ids) >= len(eligible) and eligible:
        raise ValueError(
            f"pipeline: only {len(eligible)} rows of groups {groups} were generated; holding out "
            f"{len(held_ids)} would leave none to train on (raise generate.num_rows or generate.corpus.num_queries)"
        )
    train = [r for r in rows if r["id"] not in held_ids]
    held = [r for r in rows if r["id"] in held_ids]
    return train, held


def heldout_task(held: list[dict], distractors: list[str] = ()) -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, dict[str, int]]]:
    """(corpus, queries, qrels) of the held-out rows, ``distractors`` added to the corpus; a document's
    id is a hash of its text."""
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
    for text in distractors:
        if text.strip():
            doc_id(text)
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
    corpus, queries, qrels = heldout_task(held, [r["positive"] for r in train_rows if chunk_id_of(r) is not None])
    write_beir(out_dir / "heldout", corpus, queries, qrels)
    return SplitResult(train_rows=len(train_rows), heldout_queries=len(queries), heldout_corpus=len(corpus),
                       train_data=str(train_dir), heldout_dir=str(out_dir / "heldout"))
