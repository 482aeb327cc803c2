"""Corpus-grounded generation's input: the user's documents, cut into chunks, and which chunk each
request asks a teacher about (``generate.corpus``).

- Documents: a BEIR ``corpus.jsonl`` (or a BEIR folder holding one), Parquet (named id / text / title
  columns), or a folder of ``.txt``/``.md`` files (id = the path relative to the folder); the readers
  live in ``embedforge.formats``. A document's text is its title, a space, its text (as mteb and the
  labeled BEIR loader join them), so a chunk is what the model is shown at evaluation.
- Chunks: windows of at most ``chunk_tokens`` tokens, neighbours sharing ``overlap_tokens``: a
  longer document is cut into the fewest such windows, all of one size (``window_bounds`` has the
  exact rule), so no document ends in a sliver; a window's edges move inward to whole words. The rule for counting is one config
  key, ``generate.corpus.tokenizer``: ``backbone`` counts model.backbone's tokens (the student's, whose
  passage length the chunks must fit), ``words`` counts whitespace-separated words. No silent
  fallback: a backbone whose tokenizer cannot be loaded is an error that names the ``words`` rule,
  because a different count would give different chunks and chunk ids to a resumed run. A chunk's
  text is the exact span of the document from its first token to its last (whitespace stripped), its
  id ``<doc_id>#<n>`` with n counting the document's chunks from 0.
- Sampling: request ``i`` asks about chunk ``perm_e[i mod N]`` where ``e = i div N`` and ``perm_e`` is a
  permutation of the N chunks seeded by (run seed, e): every chunk is asked about once before any is
  asked twice, and a rerun asks the same chunks in the same order.

Everything is read and chunked on the driver (one pass; a fast tokenizer does ~10k documents a
second here), before any teacher or Ray work, so a bad path, format or column fails at once.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from embedforge.config.base import ConfigError
from embedforge.config.generate import CorpusConfig
from embedforge.formats import (
    FormatError,
    document_text,
    read_jsonl_texts,
    read_parquet_documents,
    read_text_folder,
)
from embedforge.generate.taxonomy import row_seed
from embedforge.schema import CORPUS_GROUP

Span = tuple[int, int]  # character offsets [start, end) of one token in its text


@dataclass(frozen=True)
class Chunk:
    id: str  # <doc_id>#<n>
    doc_id: str
    text: str


# ------------------------------------------------------------------------------------ reading


def detect_format(path: Path) -> str:
    """beir (a .jsonl file, or a folder holding corpus.jsonl), parquet (a .parquet file, or a folder of
    them), text (any other folder); anything else is an error naming generate.corpus.format."""
    if path.is_file():
        if path.suffix == ".jsonl":
            return "beir"
        if path.suffix == ".parquet":
            return "parquet"
        raise ConfigError(f"generate.corpus.path {str(path)!r}: cannot tell the format of a {path.suffix or 'suffixless'} "
                          "file; give generate.corpus.format: beir (corpus.jsonl), parquet or text (a folder of .txt/.md files)")
    if (path / "corpus.jsonl").is_file():
        return "beir"
    if any(path.rglob("*.parquet")):
        return "parquet"
    return "text"


def read_documents(cfg: CorpusConfig) -> dict[str, dict[str, str]]:
    """``{doc_id: {"title", "text"}}`` of the configured corpus; errors name the config key at fault."""
    from embedforge.storage import is_uri

    if is_uri(cfg.path):
        raise ConfigError(f"generate.corpus.path {cfg.path!r}: give a local file or folder (a corpus in object "
                          "storage is not read directly; copy it to the driver's node or a shared mount)")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise ConfigError(f"generate.corpus.path {cfg.path!r} does not exist (give a BEIR corpus.jsonl, a Parquet "
                          "file or folder, or a folder of .txt/.md files)")
    fmt = detect_format(path) if cfg.format == "auto" else cfg.format
    try:
        if fmt == "beir":
            file = path / "corpus.jsonl" if path.is_dir() else path
            return read_jsonl_texts(file, "document")
        if fmt == "parquet":
            return read_parquet_documents(path, cfg.id_column, cfg.text_column, cfg.title_column)
        if not path.is_dir():
            raise ConfigError(f"generate.corpus.path {cfg.path!r}: format text reads a folder of .txt/.md files, "
                              "not a file")
        return read_text_folder(path)
    except FormatError as exc:
        hint = ""
        if fmt == "parquet" and "no column" in str(exc):
            hint = (f" (generate.corpus.id_column={cfg.id_column!r}, text_column={cfg.text_column!r}, "
                    f"title_column={cfg.title_column!r})")
        raise FormatError(f"generate.corpus (format {fmt}): {exc}{hint}") from None


# ----------------------------------------------------------------------------------- chunking


def word_spans(text: str) -> list[Span]:
    """Each whitespace-separated word's span (the ``words`` counting rule)."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def window_bounds(n_tokens: int, chunk_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """Token windows [start, end) of a text of ``n_tokens`` tokens.

    A text of at most ``chunk_tokens`` tokens is one window. A longer one gets the fewest windows that
    hold it with at most ``chunk_tokens`` tokens each and ``overlap_tokens`` shared by neighbours,
    k = ceil((n - overlap) / (chunk - overlap)), all of one size s = ceil((n + (k - 1) * overlap) / k)
    <= chunk_tokens, starting every s - overlap tokens; the last one ends at the text's end (sharing at
    least ``overlap_tokens`` with the one before). Evenly sized: no sliver of a last chunk."""
    if not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError(f"overlap ({overlap_tokens}) must be in [0, chunk_tokens={chunk_tokens})")
    if n_tokens <= 0:
        return []
    if n_tokens <= chunk_tokens:
        return [(0, n_tokens)]
    k = math.ceil((n_tokens - overlap_tokens) / (chunk_tokens - overlap_tokens))
    size = math.ceil((n_tokens + (k - 1) * overlap_tokens) / k)
    step = size - overlap_tokens
    return [(i * step, i * step + size) for i in range(k - 1)] + [(n_tokens - size, n_tokens)]


def whole_words(text: str, spans: Sequence[Span], start: int, end: int) -> tuple[int, int]:
    """The token window [start, end) shrunk to whole words: it starts at its first token that begins
    a word and ends after its last token that ends one (a subword tokenizer's window edge can fall
    inside a word); unchanged when one word fills it."""

    def begins_word(i: int) -> bool:
        s = spans[i][0]
        return i == 0 or s == 0 or text[s].isspace() or text[s - 1].isspace()

    a = next((i for i in range(start, end) if begins_word(i)), start)
    b = next((j for j in range(end, a, -1) if j == len(spans) or begins_word(j)), end)
    return a, b


def chunk_document(doc_id: str, text: str, spans: Sequence[Span], chunk_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """A document's chunks: the text of each window (``window_bounds``) shrunk to whole words
    (``whole_words``), stripped; windows holding only whitespace are dropped, the rest numbered from 0."""
    pieces = []
    for start, end in window_bounds(len(spans), chunk_tokens, overlap_tokens):
        a, b = whole_words(text, spans, start, end)
        pieces.append(text[spans[a][0]:spans[b - 1][1]].strip())
    return [Chunk(f"{doc_id}#{n}", doc_id, piece) for n, piece in enumerate(p for p in pieces if p)]


def counting_tokenizer(backbone: str):
    """model.backbone's tokenizer on the driver (a hub id: its tokenizer files only, never the weights)."""
    from embedforge.models import is_hub_id, load_tokenizer, resolve_backbone

    try:
        tok = load_tokenizer(backbone if is_hub_id(backbone) else resolve_backbone(backbone, weights=False))
    except Exception as exc:  # not installed, offline, no tokenizer files: say which rule to use instead
        raise ConfigError(f"generate.corpus.tokenizer=backbone: model.backbone {backbone!r}'s tokenizer could not be "
                          f"loaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); set "
                          "generate.corpus.tokenizer=words to count words instead") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"generate.corpus.tokenizer=backbone: model.backbone {backbone!r} has no fast tokenizer "
                          "(character offsets are needed to cut chunks); set generate.corpus.tokenizer=words")
    return tok


def tokenizer_spans(tokenizer, batch: int = 256) -> Callable[[list[str]], list[list[Span]]]:
    """Texts -> each token's character span under ``tokenizer`` (no special tokens)."""

    def spans(texts: list[str]) -> list[list[Span]]:
        out = []
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start:start + batch], add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)
            out += [[(int(a), int(b)) for a, b in offsets] for offsets in enc["offset_mapping"]]
        return out

    return spans


def chunk_documents(docs: dict[str, dict[str, str]], chunk_tokens: int, overlap_tokens: int,
                    spans_of: Callable[[list[str]], list[list[Span]]] | None = None) -> list[Chunk]:
    """Every document's chunks, in document order; ``spans_of``: token spans of texts (default: words)."""
    ids = list(docs)
    texts = [document_text(docs[d]) for d in ids]
    all_spans = spans_of(texts) if spans_of is not None else [word_spans(t) for t in texts]
    return [c for d, t, s in zip(ids, texts, all_spans, strict=True) for c in chunk_document(d, t, s, chunk_tokens, overlap_tokens)]


@dataclass
class CorpusChunks:
    """The run's chunks and how they were made."""

    chunks: list[Chunk]
    documents: int
    counted_with: str  # "words" or "tokenizer of <backbone>"
    position: dict[str, int] = field(default_factory=dict)  # chunk id -> index in chunks

    def __post_init__(self):
        self.position = {c.id: i for i, c in enumerate(self.chunks)}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for c in self.chunks:
            h.update(c.id.encode() + b"\0" + c.text.encode() + b"\0")
        return h.hexdigest()[:16]


def load_chunks(cfg) -> CorpusChunks:
    """The chunks of ``cfg.generate.corpus`` (``cfg``: the root config, for model.backbone and the
    passage length training uses)."""
    corpus: CorpusConfig = cfg.generate.corpus
    docs = read_documents(corpus)
    if corpus.tokenizer == "backbone":
        _, passage_len = cfg.training_lengths()
        if corpus.chunk_tokens >= passage_len:  # the encoder adds an EOS/SEP within the limit
            raise ConfigError(f"generate.corpus.chunk_tokens ({corpus.chunk_tokens}) must be below the passage length "
                              f"training tokenizes at ({passage_len}: train.passage_max_length or model.max_length), "
                              "or the chunks (the positives) would be cut")
        spans_of = tokenizer_spans(counting_tokenizer(cfg.model.backbone))
        counted = f"tokenizer of {cfg.model.backbone}"
    else:
        spans_of, counted = None, "words"
    chunks = chunk_documents(docs, corpus.chunk_tokens, corpus.overlap_tokens, spans_of)
    if not chunks:
        raise FormatError(f"generate.corpus.path {corpus.path!r}: every document is empty")
    return CorpusChunks(chunks, len(docs), counted)


# ----------------------------------------------------------------------------------- sampling


class ChunkSampler:
    """Request index -> chunk index: each pass over the chunks in its own seeded order."""

    def __init__(self, n_chunks: int, run_seed: int):
        if n_chunks < 1:
            raise ValueError("no chunks to sample")
        self.n, self.seed = n_chunks, run_seed
        self._perms: dict[int, list[int]] = {}

    def __call__(self, index: int) -> int:
        epoch, pos = divmod(index, self.n)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = list(range(self.n))
            random.Random(row_seed(self.seed, f"corpus-chunks:{epoch}")).shuffle(perm)
            self._perms = {epoch: perm}  # one pass at a time: requests are planned in index order
        return perm[pos]


def corpus_row_id(style: str, index: int) -> str:
    """Attempt ids ``corpus-<style>-<n>`` (n counts every corpus request of the run)."""
    return f"corpus-{style}-{index:07d}"


def style_of_id(row_id: str) -> str:
    return row_id.split("-")[1]


class CorpusPlanner:
    """Requests ``start .. start+count-1`` of corpus-grounded generation: request i's style from the
    mix (``style_sequence``), its chunk the seeded sampler's ``i // queries_per_chunk``-th, its teacher
    and seed from its id."""

    def __init__(self, cfg: CorpusConfig, chunks: CorpusChunks, run_seed: int):
        from embedforge.generate.taxonomy import load_corpus_styles

        self.cfg, self.chunks, self.run_seed = cfg, chunks, run_seed
        self.styles = load_corpus_styles()
        self.sampler = ChunkSampler(len(chunks.chunks), run_seed)

    def instruction(self, style: str) -> str:
        return self.cfg.instructions.get(style, self.styles[style].instruction)

    def request(self, index: int, style_name: str) -> dict:
        """Request ``index`` in style ``style_name``: the prompt for its chunk (the seeded sampler's
        ``index``-th), without teacher or token limit. Also rebuilds a past request from its id."""
        from embedforge.generate.taxonomy import corpus_request

        style = self.styles[style_name]
        chunk = self.chunks.chunks[self.sampler(index // self.cfg.queries_per_chunk)]
        return corpus_request(style, corpus_row_id(style.name, index), chunk.id, chunk.text, self.run_seed,
                              language=self.cfg.language, instruction=self.instruction(style.name),
                              max_chars=self.cfg.max_chars, copy_ngram=self.cfg.copy_ngram)

    def requests(self, start: int, count: int, teacher_weights: dict[str, float]) -> list[dict]:
        from embedforge.generate.taxonomy import choose_teacher, style_sequence

        sequence = style_sequence(self.cfg.styles, start + count)
        out = []
        for index in range(start, start + count):
            req = self.request(index, sequence[index])
            req["teacher"] = choose_teacher(self.run_seed, req["id"], teacher_weights)
            req["max_tokens"] = self.cfg.max_tokens
            out.append(req)
        return out


# ------------------------------------------------------------------------------------- funnel


class CorpusFunnel(BaseModel):
    """Corpus-grounded generation, from the corpus to the kept rows (``summary.json``'s ``corpus``).

    ``queries``: teacher requests sent; ``kept_after_validation``: answers that parsed and passed the
    checks (length, copy, contamination, dedupe); ``kept_after_consistency``: of those, the ones whose
    chunk ranked in the filter's top k (equal to the former when the filter is off); ``rows``: kept
    (the rest were surplus: the target was already met)."""

    documents: int
    chunks: int
    chunks_asked: int  # distinct chunks that at least one request asked about
    counted_with: str
    queries: int
    kept_after_validation: int
    kept_after_consistency: int
    rows: int
    target: int
    rejects: dict[str, int] = Field(default_factory=dict)
    per_style: dict[str, dict[str, int]] = Field(default_factory=dict)  # style -> queries / rows
    consistency: dict | None = None  # model, top_k, candidates (None: filter off)


def corpus_funnel(records: list[dict], chunks: CorpusChunks, target: int, consistency: dict | None,
                  queries_per_chunk: int = 1) -> CorpusFunnel:
    """The funnel from the run's ledger (every committed attempt), so a resumed run counts them all."""
    rec = [r for r in records if r["kind"] == "example" and r["group"] == CORPUS_GROUP]
    kept = [r for r in rec if r["status"] == "kept"]
    later = Counter(r["reason"] for r in rec if r["status"] != "kept")
    per_style: dict[str, dict[str, int]] = {}
    for r in rec:
        slot = per_style.setdefault(style_of_id(r["id"]), {"queries": 0, "rows": 0})
        slot["queries"] += 1
        slot["rows"] += r["status"] == "kept"
    used = [int(r["id"].rsplit("-", 1)[1]) for r in rec]
    return CorpusFunnel(
        documents=chunks.documents, chunks=len(chunks.chunks),
        chunks_asked=min(len(chunks.chunks), max(used) // queries_per_chunk + 1) if used else 0, counted_with=chunks.counted_with,
        queries=len(rec),
        kept_after_validation=len(kept) + later["consistency"] + later["surplus"],
        kept_after_consistency=len(kept) + later["surplus"],
        rows=len(kept), target=target, rejects=dict(later.most_common()),
        per_style=dict(sorted(per_style.items())), consistency=consistency)
