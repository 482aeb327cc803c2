"""Pure data preparation for training: row checks, tokenisation, source mixing, batch planning.

No Ray here: ``embedforge.train.dataset`` runs these functions as Ray Data steps, and unit tests call
them directly.

A *global batch* is one optimizer step for all workers together. Every global batch holds rows of a
single group (same-task batching, as E5, GritLM and FlagEmbedding do), never the same positive twice
(a duplicate would be scored as its own negative), and the same number of hard negatives per row, so
that every worker runs the same number of forward chunks and collective calls.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from embedforge.prompts import format_document, format_query, tokenize_with_eos
from embedforge.schema import GROUPS

REQUIRED_COLUMNS = ("id", "group", "task", "query", "positive", "negatives")


def row_problem(row: dict) -> str | None:
    """Why a row cannot be trained on, or None when it can."""
    for name in ("id", "query", "positive"):
        value = row.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{name} must be a non-empty string"
    if row.get("group") not in GROUPS:
        return f"group {row.get('group')!r} is not one of: {', '.join(GROUPS)}"
    task = row.get("task")
    if task is not None and not isinstance(task, str):
        return "task must be a string"
    negatives = row.get("negatives")
    if negatives is not None and not all(isinstance(n, str) for n in list(negatives)):
        return "negatives must be a list of strings"
    return None


def positive_key(text: str) -> str:
    """Identity of a positive for the no-duplicates rule (whitespace-insensitive)."""
    return hashlib.sha1(" ".join(text.split()).encode()).hexdigest()


def tokenize_rows(batch: dict, tokenizer, query_max_length: int, passage_max_length: int,
                  instructions: bool = True, append_eos: bool = True,
                  symmetric_groups: Sequence[str] = ()) -> dict:
    """Columns ``query_ids``, ``positive_ids``, ``negative_ids`` (list of id lists) and ``positive_key``.

    Queries get the instruction template with the row's ``task`` (``instructions=False``, i.e.
    ``model.instructions: false``: none, so queries are encoded exactly like documents); documents get
    none, except in the rows of ``symmetric_groups`` (``train.symmetric_groups``), whose positives and
    negatives are formatted like their query, as evaluation encodes both sides of a symmetric task;
    everything ends in EOS (``embedforge.prompts``), or, for an encoder student (``append_eos=False``),
    in its tokenizer's own [SEP]. Other columns pass through.
    """
    symmetric = set(symmetric_groups)
    query_tasks = [(t or None) if instructions else None for t in batch["task"]]
    # The instruction a row's documents are formatted with: its query's in a symmetric group, else none.
    document_tasks = [t if g in symmetric else None for t, g in zip(query_tasks, batch["group"], strict=True)]

    def formatted(text: str, task: str | None) -> str:
        return format_query(text, task) if task else format_document(text)

    queries = [formatted(q, t) for q, t in zip(batch["query"], query_tasks, strict=True)]
    positives = [formatted(p, t) for p, t in zip(batch["positive"], document_tasks, strict=True)]
    negatives = [[formatted(n, t) for n in (list(negs) if negs is not None else [])]
                 for negs, t in zip(batch["negatives"], document_tasks, strict=True)]
    flat = [n for negs in negatives for n in negs]
    flat_ids = tokenize_with_eos(tokenizer, flat, passage_max_length, append_eos=append_eos)
    negative_ids, start = [], 0
    for negs in negatives:
        negative_ids.append(flat_ids[start : start + len(negs)])
        start += len(negs)
    out = dict(batch)
    out["query_ids"] = tokenize_with_eos(tokenizer, queries, query_max_length, append_eos=append_eos)
    out["positive_ids"] = tokenize_with_eos(tokenizer, positives, passage_max_length, append_eos=append_eos)
    out["negative_ids"] = negative_ids
    out["positive_key"] = [positive_key(p) for p in batch["positive"]]
    return out


def mix_counts(sizes: Sequence[int], ratios: Sequence[float]) -> list[int]:
    """Rows to take from each source so the mix follows ``ratios`` and keeps the total row count.

    A source asked for more rows than it has is repeated (upsampled); one asked for fewer is sampled.
    """
    if len(sizes) != len(ratios):
        raise ValueError("sizes and ratios must have the same length")
    total = sum(sizes)
    share = sum(r for r, s in zip(ratios, sizes, strict=True) if s > 0)  # empty sources take no share
    exact = [total * r / share if s > 0 else 0.0 for r, s in zip(ratios, sizes, strict=True)]
    counts = [int(x) for x in exact]
    # Largest remainders get the rows rounding left over, so the total is kept exactly.
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def plan_group_batches(
    rows: Sequence[dict], global_batch_size: int, negatives_per_query: int, seed: int
) -> tuple[list[dict], list[dict]]:
    """(full global batches, leftover rows) from the rows of one group (each row: ``id``,
    ``positive_key``, ``query_ids``, ``positive_ids``, ``negative_ids``).

    Every batch holds exactly ``global_batch_size`` rows with distinct positives: a short batch (a
    group's remainder, or a group smaller than a batch) trains on a smaller softmax — a 2-way one
    gives loss ~0, 2 pairs at the full learning rate spiked the tiny run's loss to 9.8 — so its rows
    are handed back to be packed with other groups' leftovers (``pack_leftovers``). Rows are shuffled
    with ``seed`` (one per epoch: ``epoch_seed``) and dealt so that as many whole batches as the positives allow are filled.
    Each batch carries ``k`` hard negatives per row: the smallest number any of its rows has, capped
    at ``negatives_per_query``.
    """
    batches, leftover = _full_batches(rows, global_batch_size, seed)
    return [_batch_record(b, negatives_per_query, seed) for b in batches], leftover


def _full_batches(rows: Sequence[dict], global_batch_size: int, seed: int) -> tuple[list[list[dict]], list[dict]]:
    """As many whole batches of distinct positives as the rows can fill, and the rows left over.

    ``n`` batches can be filled exactly when ``sum(min(copies, n))`` over the positives reaches
    ``n * global_batch_size`` (a positive goes into a batch at most once). Laying each positive's copies
    (at most ``n``) side by side and dealing position ``i`` to batch ``i % n`` then puts no positive in a
    batch twice. A first-come greedy fill strands rows whenever several queries share a chunk
    (``generate.corpus.queries_per_chunk``): 98 rows over 73 chunks filled 2 batches of 32 instead of 3.
    """
    order = list(rows)
    random.Random(seed).shuffle(order)
    copies: dict[str, list[dict]] = {}
    for row in order:  # positives in shuffled order of first appearance; their copies in shuffled order
        copies.setdefault(row["positive_key"], []).append(row)
    sizes = [len(c) for c in copies.values()]

    def fillable(n: int) -> bool:
        return sum(min(size, n) for size in sizes) >= n * global_batch_size

    # Fillability is monotone (dropping a batch of a valid plan leaves a valid plan): bisect for the
    # largest n, one pass over the positives per probe. A step-down scan takes one pass per batch it
    # cannot fill: ~15,000 passes over 500,001 positives for a million rows, half of them one positive.
    n, most = 0, len(order) // global_batch_size
    while n < most:
        probe = (n + most + 1) // 2
        if fillable(probe):
            n = probe
        else:
            most = probe - 1
    if n == 0:
        return [], order
    dealt = [row for c in copies.values() for row in c[:n]][: n * global_batch_size]
    batches = [dealt[i::n] for i in range(n)]
    used = {id(row) for row in dealt}
    return batches, [row for row in order if id(row) not in used]


def pack_leftovers(rows: Sequence[dict], global_batch_size: int, negatives_per_query: int,
                   seed: int) -> tuple[list[dict], int]:
    """Full batches (group ``mixed``) from the groups' leftover rows, and the number of rows that fill
    no batch (dropped this epoch; the summary reports them). Each row keeps its own instruction
    (it is part of its tokenised query), so mixing tasks in one batch loses nothing but some of the
    same-task in-batch negatives."""
    batches, dropped = _full_batches([dict(r, group="mixed") for r in rows], global_batch_size, seed)
    return [_batch_record(b, negatives_per_query, seed) for b in batches], len(dropped)


def _batch_record(batch: list[dict], negatives_per_query: int, seed: int) -> dict:
    k = min([negatives_per_query] + [len(r["negative_ids"]) for r in batch])
    return {
        "group": batch[0].get("group", ""),
        "ids": [r["id"] for r in batch],
        "query_ids": [list(r["query_ids"]) for r in batch],
        "positive_ids": [list(r["positive_ids"]) for r in batch],
        # Row-major: row i's negatives sit at i*k .. i*k+k-1, so a worker's slice stays contiguous.
        "negative_ids": [list(n) for r in batch for n in list(r["negative_ids"])[:k]],
        "num_negatives": k,
        "order": batch_order_key(batch[0]["id"], seed),
    }


def derived_seed(seed: int, label: str) -> int:
    """A seed of its own for one use of the run's seed (``label`` names the use): 48 bits of a hash."""
    return int(hashlib.sha1(f"{seed}/{label}".encode()).hexdigest()[:12], 16)


def epoch_seed(seed: int, epoch: int) -> int:
    """The planning seed of one epoch: each epoch deals its own batches (as a shuffling sampler does),
    so the rows that fill no batch differ from epoch to epoch. Epoch 0 plans with the run's seed."""
    if epoch == 0:
        return seed
    return derived_seed(seed, f"epoch {epoch}")


def batch_order_key(first_id: str, seed: int) -> str:
    """A deterministic, group-mixing position for a batch (sorting by it interleaves the groups)."""
    return hashlib.sha1(f"{seed}:{first_id}".encode()).hexdigest()


def worker_slice(record: dict, rank: int, world_size: int) -> dict:
    """This worker's share of a global batch: its queries, their positives and their negatives."""
    n = len(record["query_ids"])
    if n % world_size:
        raise ValueError(f"a global batch of {n} rows does not split over {world_size} workers")
    per = n // world_size
    k = int(record["num_negatives"])
    lo, hi = rank * per, (rank + 1) * per
    return {
        "query_ids": [list(x) for x in record["query_ids"][lo:hi]],
        "positive_ids": [list(x) for x in record["positive_ids"][lo:hi]],
        "negative_ids": [list(x) for x in record["negative_ids"][lo * k : hi * k]],
        "num_negatives": k,
    }


def count_tokens(local: dict) -> int:
    return sum(len(s) for key in ("query_ids", "positive_ids", "negative_ids") for s in local[key])
