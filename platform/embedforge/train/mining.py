"""Hard-negative mining: for each row without negatives, take negatives from the top-k documents a
given embedding model retrieves for its query, excluding the query's positives (the paper mined the
top-100 with mE5-base).

The corpus is every distinct positive and negative of the rows. Embedding runs on the encoding
pool (``embedforge.encode_pool``, one model replica per actor); the top-k search is a chunked matrix
product.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pandas as pd

from embedforge.embedders import EmbedderSpec
from embedforge.encode_pool import encode_on_pool


def top_k_indices(queries: np.ndarray, corpus: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """(nq, min(k, nc)) corpus indices by descending cosine score (inputs L2-normalised)."""
    k = min(k, corpus.shape[0])
    out = np.zeros((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk] @ corpus.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        out[start : start + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def unit_rows(vecs: np.ndarray) -> np.ndarray:
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)


def likely_false_negatives(candidate_scores: np.ndarray, positive_scores: np.ndarray,
                           max_positive_ratio: float | None = None, margin: float | None = None) -> np.ndarray:
    """Boolean mask, True where a candidate scores too close to its query's positive to be trusted as a
    negative: above ``max_positive_ratio`` x the positive's score (NV-Retriever's rule, e.g. 0.95) or
    above the positive's score minus ``margin``. ``candidate_scores`` (nq, k); ``positive_scores`` (nq,)."""
    pos = np.asarray(positive_scores, dtype=np.float64)[:, None]
    scores = np.asarray(candidate_scores, dtype=np.float64)
    mask = np.zeros(scores.shape, dtype=bool)
    if max_positive_ratio is not None:
        mask |= scores > max_positive_ratio * pos
    if margin is not None:
        mask |= scores > pos - margin
    return mask


def select_negatives(
    ranked: np.ndarray, corpus: Sequence[str], exclude: Sequence[set[str]], num_negatives: int, seed: int,
    skip: np.ndarray | None = None,
) -> list[list[str]]:
    """For each query, ``num_negatives`` documents sampled from its ranked top-k minus ``exclude`` and
    minus the candidates ``skip`` marks (``likely_false_negatives``, same shape as ``ranked``)."""
    rng = random.Random(seed)
    picked = []
    for q, (row, banned) in enumerate(zip(ranked, exclude, strict=True)):
        candidates = [corpus[i] for j, i in enumerate(row)
                      if corpus[i] not in banned and not (skip is not None and skip[q, j])]
        picked.append(rng.sample(candidates, min(num_negatives, len(candidates))))
    return picked


def mining_spec(model, mining_model: str | None = None) -> EmbedderSpec:
    """What mining encodes with: ``train.mining_model`` (null: the backbone itself, without an adapter,
    since training has not made one yet) with the ``model`` section's pooling, dtype and max length,
    loaded by ``load_embedder`` like everywhere else, on CPU actors."""
    return EmbedderSpec.of(model, backbone=mining_model or model.backbone, adapter=None, device="cpu")


def _embed(texts: list[str], instructions: list[str], model, replicas: int, resource_check: str) -> np.ndarray:
    # One CPU per actor: mining runs before training, on whatever the cluster has.
    return encode_on_pool(model, texts, instructions, num_actors=replicas, cpus_per_actor=1.0, batch_size=64,
                          stage="mining", settings="1 CPU each, for train.mine_negatives",
                          resource_check=resource_check)


def mine_hard_negatives(
    rows: pd.DataFrame, model, top_k: int = 100, num_negatives: int = 1, seed: int = 0,
    replicas: int = 1, instructions: bool = True, resource_check: str = "fail",
    max_positive_ratio: float | None = None, margin: float | None = None,
) -> pd.DataFrame:
    """``rows`` with ``negatives`` filled for the rows that had none; other rows are untouched.

    ``model``: the ``model`` section to embed with (``mining_spec`` makes it from the root config).

    Queries are embedded with their row's task instruction, as training will see them; with
    ``instructions=False`` (``model.instructions: false``) without, exactly like documents.
    """
    rows = rows.reset_index(drop=True).copy()
    negs = [list(n) if n is not None else [] for n in rows["negatives"]]
    need = [i for i, n in enumerate(negs) if not n]
    if not need:
        return rows
    corpus = sorted({*rows["positive"].tolist(), *(d for n in negs for d in n)})
    corpus_vecs = _embed(corpus, [""] * len(corpus), model, replicas, resource_check)
    query_tasks = [(rows["task"][i] or "") if instructions else "" for i in need]
    query_vecs = _embed([rows["query"][i] for i in need], query_tasks, model, replicas, resource_check)
    # A query's positives: every positive paired with the same query text anywhere in the data.
    positives_of: dict[str, set[str]] = {}
    for q, p in zip(rows["query"], rows["positive"], strict=True):
        positives_of.setdefault(q, set()).add(p)
    # Cosine ranking even for a model section with normalize: false.
    queries, docs = unit_rows(query_vecs), unit_rows(corpus_vecs)
    ranked = top_k_indices(queries, docs, top_k)
    skip = None
    if max_positive_ratio is not None or margin is not None:
        where = {text: j for j, text in enumerate(corpus)}
        candidate_scores = np.einsum("qd,qkd->qk", queries, docs[ranked])
        positive_scores = np.einsum("qd,qd->q", queries, docs[[where[rows["positive"][i]] for i in need]])
        skip = likely_false_negatives(candidate_scores, positive_scores, max_positive_ratio, margin)
    picked = select_negatives(ranked, corpus, [positives_of[rows["query"][i]] for i in need], num_negatives, seed,
                              skip)
    for i, chosen in zip(need, picked, strict=True):
        negs[i] = chosen
    rows["negatives"] = negs
    return rows
