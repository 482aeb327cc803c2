"""Hard-negative mining: for each row without negatives, take negatives from the top-k documents a
given embedding model retrieves for its query, excluding the query's positives (the paper mined the
top-100 with mE5-base).

The corpus is every distinct positive and negative of the rows. Embedding is a Ray Data step
(``map_batches`` with an actor per model replica); the top-k search is a chunked matrix product.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pandas as pd

from embedforge.prompts import format_query


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


def select_negatives(
    ranked: np.ndarray, corpus: Sequence[str], exclude: Sequence[set[str]], num_negatives: int, seed: int
) -> list[list[str]]:
    """For each query, ``num_negatives`` documents sampled from its ranked top-k minus ``exclude``."""
    rng = random.Random(seed)
    picked = []
    for row, banned in zip(ranked, exclude, strict=True):
        candidates = [corpus[i] for i in row if corpus[i] not in banned]
        picked.append(rng.sample(candidates, min(num_negatives, len(candidates))))
    return picked


class EmbedTexts:
    """A Ray Data actor: one model replica that embeds the ``text`` column (queries carry ``task``).

    A sentence-transformers directory (a BERT-style miner like mE5 or MiniLM: its own pooling, no EOS)
    encodes through sentence-transformers; a decoder backbone through embedforge's Encoder.
    """

    def __init__(self, model_spec: str, max_length: int):
        from embedforge.models import is_sentence_transformers_dir, resolve_backbone

        path = resolve_backbone(model_spec)
        if is_sentence_transformers_dir(path):
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(path, device="cpu")
            st.max_seq_length = min(max_length, st.max_seq_length or max_length)
            self.encode = lambda texts: st.encode(texts, normalize_embeddings=True)
        else:
            from embedforge.encoder import Encoder
            from embedforge.models import load_backbone

            model, tokenizer = load_backbone(path)
            self.encode = Encoder(model, tokenizer, max_length=max_length).encode

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        texts = [format_query(t, task or None) for t, task in zip(batch["text"], batch["task"], strict=True)]
        vecs = self.encode(texts)
        return pd.DataFrame({"pos": batch["pos"], "embedding": list(vecs)})


def _embed(texts: list[str], tasks: list[str], model_spec: str, max_length: int, replicas: int) -> np.ndarray:
    import ray.data

    items = [{"pos": i, "text": t, "task": task} for i, (t, task) in enumerate(zip(texts, tasks, strict=True))]
    ds = ray.data.from_items(items).map_batches(
        EmbedTexts, batch_format="pandas", batch_size=64, concurrency=replicas,
        fn_constructor_kwargs={"model_spec": model_spec, "max_length": max_length},
    )
    out = ds.to_pandas().sort_values("pos")
    return np.stack(out["embedding"].to_list()).astype(np.float32)


def mine_hard_negatives(
    rows: pd.DataFrame, model_spec: str, top_k: int = 100, num_negatives: int = 1, seed: int = 0,
    max_length: int = 512, replicas: int = 1, instructions: bool = True,
) -> pd.DataFrame:
    """``rows`` with ``negatives`` filled for the rows that had none; other rows are untouched.

    Queries are embedded with their row's task instruction, as training will see them; with
    ``instructions=False`` (``model.instructions: false``) without, exactly like documents.
    """
    rows = rows.reset_index(drop=True).copy()
    negs = [list(n) if n is not None else [] for n in rows["negatives"]]
    need = [i for i, n in enumerate(negs) if not n]
    if not need:
        return rows
    corpus = sorted({*rows["positive"].tolist(), *(d for n in negs for d in n)})
    corpus_vecs = _embed(corpus, [""] * len(corpus), model_spec, max_length, replicas)
    query_tasks = [(rows["task"][i] or "") if instructions else "" for i in need]
    query_vecs = _embed([rows["query"][i] for i in need], query_tasks,
                        model_spec, max_length, replicas)
    # A query's positives: every positive paired with the same query text anywhere in the data.
    positives_of: dict[str, set[str]] = {}
    for q, p in zip(rows["query"], rows["positive"], strict=True):
        positives_of.setdefault(q, set()).add(p)
    ranked = top_k_indices(query_vecs, corpus_vecs, top_k)
    picked = select_negatives(ranked, corpus, [positives_of[rows["query"][i]] for i in need], num_negatives, seed)
    for i, chosen in zip(need, picked, strict=True):
        negs[i] = chosen
    rows["negatives"] = negs
    return rows
