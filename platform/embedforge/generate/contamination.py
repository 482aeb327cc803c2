"""Contamination filter: generated rows must not overlap the evaluation sets (the paper filtered its
synthetic data against the MTEB test sets).

The index holds two sorted ``uint64`` arrays: stable 64-bit hashes of every evaluation text's
normalised form (exact matches) and of every word n-gram in it (13 words by default, as in GPT-3's
contamination study). Arrays, not Python sets: the English MTEB test splits hold millions of
n-grams (ArxivClusteringP2P alone ~0.7 M abstracts), ~8 bytes each here against ~70 in a set, and
the generation actors share one read-only copy per node through Ray's object store. Hashes are
blake2b per word combined by a polynomial over the n-gram's words, so they are the same in every
process (Python's ``hash`` is salted per process).

What an evaluation task contributes (``evaluation_texts``): every text of its evaluated splits and
subsets as mteb loads them — queries and the *relevant* documents of retrieval tasks (a corpus is the
collection searched, not the test's answers; MS MARCO's alone is 8.8 M passages), both sides of STS
and pair-classification pairs, classification and clustering texts, reranking and summarisation
texts. Label and id columns are not text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from embedforge.generate.validation import normalize
from embedforge.schema import chunk_id_of

_MULTIPLIER = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime: mixes word hashes position by position
# Columns of mteb data sets that hold labels or ids, not text a model is shown.
NON_TEXT_COLUMNS = frozenset({"id", "_id", "label", "labels", "score", "scores", "lang", "language", "relevance"})


def _text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class _WordHashes:
    """Stable word hashes, memoised (the vocabulary of the evaluation sets is small beside their n-grams)."""

    def __init__(self):
        self.cache: dict[str, int] = {}

    def __call__(self, words: list[str]) -> np.ndarray:
        cache = self.cache
        out = np.empty(len(words), dtype=np.uint64)
        for i, w in enumerate(words):
            h = cache.get(w)
            if h is None:
                h = cache[w] = _text_hash(w)
            out[i] = h
        return out


def ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every run of ``n`` consecutive word hashes (empty when the text is shorter)."""
    count = len(words) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    for j in range(n):  # uint64 arithmetic wraps, which is what a hash wants
        h = h * _MULTIPLIER + words[j : j + count]
    return h


class ContaminationIndex:
    """Exact and n-gram hashes of evaluation texts; ``match`` says why a text overlaps them."""

    def __init__(self, exact: np.ndarray, grams: np.ndarray, ngram: int, texts: int):
        self.exact, self.grams, self.ngram, self.texts = exact, grams, ngram, texts
        self._words = _WordHashes()

    @classmethod
    def build(cls, texts: Iterable[str], ngram: int = 13) -> ContaminationIndex:
        words_of = _WordHashes()
        exact: list[int] = []
        grams: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        pending_size = 0
        for text in texts:
            norm = normalize(text)
            if not norm:
                continue
            exact.append(_text_hash(norm))
            g = ngram_hashes(words_of(norm.split()), ngram)
            if len(g):
                pending.append(g)
                pending_size += len(g)
            if pending_size > 4_000_000:  # fold into sorted unique blocks: memory follows distinct n-grams
                grams.append(np.unique(np.concatenate(pending)))
                pending, pending_size = [], 0
        grams.extend(pending)
        all_grams = np.unique(np.concatenate(grams)) if grams else np.empty(0, dtype=np.uint64)
        return cls(np.unique(np.array(exact, dtype=np.uint64)), all_grams, ngram, len(exact))

    def __len__(self) -> int:
        return self.texts

    @staticmethod
    def _contains(sorted_arr: np.ndarray, values: np.ndarray) -> bool:
        if not len(sorted_arr) or not len(values):
            return False
        pos = np.searchsorted(sorted_arr, values)
        pos[pos == len(sorted_arr)] = 0
        return bool((sorted_arr[pos] == values).any())

    def match(self, text: str) -> str | None:
        """Why ``text`` is contaminated ("exact" or "ngram"), or None."""
        norm = normalize(text)
        if not norm:
            return None
        if self._contains(self.exact, np.array([_text_hash(norm)], dtype=np.uint64)):
            return "exact"
        if self._contains(self.grams, ngram_hashes(self._words(norm.split()), self.ngram)):
            return "ngram"
        return None

    def check_row(self, row: dict) -> str | None:
        """Why a training row overlaps the index (``query exact``, ``positive ngram``, ...), or None.

        A corpus-grounded row is checked on its query only: its positive is a chunk of the user's own
        documents, which an evaluation on that corpus holds too (adapting to the corpus is the point);
        what must not leak is the evaluation's queries."""
        if chunk_id_of(row) is not None:
            why = self.match(row["query"])
            return f"query {why}" if why else None
        for name in ("query", "positive"):
            why = self.match(row[name])
            if why:
                return f"{name} {why}"
        for neg in row.get("negatives") or []:
            why = self.match(neg)
            if why:
                return f"negative {why}"
        return None

    # The arrays travel through Ray's object store (one shared read-only copy per node) and to disk.
    def to_state(self) -> dict:
        return {"exact": self.exact, "grams": self.grams, "ngram": self.ngram, "texts": self.texts}

    @classmethod
    def from_state(cls, state: dict) -> ContaminationIndex:
        return cls(state["exact"], state["grams"], int(state["ngram"]), int(state["texts"]))

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **{k: np.asarray(v) for k, v in self.to_state().items()})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ContaminationIndex:
        with np.load(path) as data:
            return cls.from_state({k: data[k] for k in data.files})


# ------------------------------------------------------------------------- what a task contributes


def _dataset_texts(data) -> Iterator[str]:
    """Non-blank string cells (and lists of strings) of a ``datasets.Dataset``'s text columns."""
    yield from (t for t in _cells(data) if t.strip())


def _cells(data) -> Iterator[str]:
    for column in data.column_names:
        if column.lower() in NON_TEXT_COLUMNS:
            continue
        for value in data[column]:
            if isinstance(value, str):
                yield value
            elif isinstance(value, list | tuple):
                for item in value:
                    if isinstance(item, str):
                        yield item
                    elif isinstance(item, list | tuple):  # clustering: a list of sentence lists
                        yield from (s for s in item if isinstance(s, str))


def _retrieval_texts(split: dict) -> Iterator[str]:
    """Queries and the documents judged relevant to them (not the whole corpus: see the module doc)."""
    queries = split["queries"]
    yield from _dataset_texts(queries) if hasattr(queries, "column_names") else ()
    relevant = {str(doc) for docs in (split.get("relevant_docs") or {}).values()
                for doc, score in docs.items() if score > 0}
    corpus = split["corpus"]
    # A filter over the id column (Arrow-backed, batched) rather than a Python walk of every document.
    hits = corpus.filter(lambda ids: [str(i) in relevant for i in ids], batched=True, input_columns=["id"])
    yield from _dataset_texts(hits)


def _split_texts(split) -> Iterator[str]:
    if isinstance(split, dict) and "queries" in split and "corpus" in split:
        yield from _retrieval_texts(split)
    elif hasattr(split, "column_names"):
        yield from _dataset_texts(split)
    elif isinstance(split, dict):
        for value in split.values():
            yield from _split_texts(value)


def evaluation_texts(task) -> Iterator[str]:
    """Every text of ``task``'s evaluated splits and subsets, as mteb loads them (loads the task; an
    aggregate such as CQADupstackRetrieval contributes its subtasks')."""
    if getattr(task, "tasks", None) and getattr(task.metadata, "tasks", None):
        for sub in task.tasks:
            yield from evaluation_texts(sub)
        return
    task.load_data()
    data = task.dataset
    subsets = task.hf_subsets or ["default"]
    for subset in subsets:
        for split_name in task.metadata.eval_splits:
            if subset == "default" and subset not in data:
                split = data.get(split_name) if hasattr(data, "get") else None
            else:
                split = (data.get(subset) or {}).get(split_name)
            if split is not None:
                yield from _split_texts(split)


# ---------------------------------------------------------------------------- the run's index


def index_fingerprint(eval_files: list[str], task_keys: list[str], ngram: int) -> str:
    """Changes when a file's size or mtime, the task list or the n-gram length changes."""
    stamps = []
    for path in eval_files:
        st = Path(path).stat()
        stamps.append([str(path), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"files": stamps, "tasks": task_keys, "ngram": ngram}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_run_index(eval_files: list[str], tasks: list, ngram: int, cache_dir: Path,
                    task_keys: list[str]) -> tuple[ContaminationIndex, dict]:
    """The run's index, built once and kept at ``cache_dir/contamination-<fingerprint>.npz``; also
    what went into it (texts per source) for the generation summary."""
    from embedforge.formats import read_texts

    cache_dir.mkdir(parents=True, exist_ok=True)
    for path in eval_files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"generate.contamination.eval_files: {str(path)!r} does not exist")
    fingerprint = index_fingerprint(eval_files, task_keys, ngram)
    cached = cache_dir / f"contamination-{fingerprint}.npz"
    sources_file = cache_dir / f"contamination-{fingerprint}.json"
    if cached.is_file() and sources_file.is_file():
        return ContaminationIndex.load(cached), json.loads(sources_file.read_text())
    sources: dict[str, int] = {}

    def texts() -> Iterator[str]:
        for path in eval_files:
            file_texts = read_texts(path)
            sources[str(path)] = len(file_texts)
            yield from file_texts
        for key, task in zip(task_keys, tasks, strict=True):
            n = 0
            for text in evaluation_texts(task):
                n += 1
                yield text
            sources[key] = n

    index = ContaminationIndex.build(texts(), ngram=ngram)
    index.save(cached)
    summary = {"texts": len(index), "ngrams": int(len(index.grams)), "sources": sources}
    sources_file.write_text(json.dumps(summary, indent=2))
    return index, summary
