"""Parsing and validation of teacher outputs, dedupe and contamination filtering (all pure).

A teacher's raw text becomes either a training row or a reject with one reason from REJECT_REASONS.
"""

from __future__ import annotations

import json
import re
import unicodedata

from embedforge.generate.taxonomy import CorpusStyle, Template, load_corpus_styles, word_range
from embedforge.schema import CORPUS_GROUP, TrainingRow, chunk_id_of, corpus_source

REJECT_REASONS = (
    "request_error",  # the endpoint failed even after the client's retries
    "invalid_json",
    "missing_key",    # a key of the group is absent, or an unexpected key is present
    "not_string",
    "empty",
    "same_text",      # query == positive, positive == negative, label == misleading label
    "too_short",
    "no_words",       # a field without a single letter (numbers, punctuation)
    "truncated",      # the teacher hit max_tokens
    "duplicate",      # seen before in this run (exact, normalised)
    "contaminated",   # overlaps a configured evaluation set
    "surplus",        # valid, but its group already had every requested row
    # corpus-grounded queries (generate.corpus):
    "too_long",       # more words than the style allows
    "copied_chunk",   # the query is its chunk, or shares a run of generate.corpus.copy_ngram words with it
    "refers_to_chunk",  # the query points at the material it was written from ("this passage", "<title>")
    "consistency",    # its chunk did not rank in the filter model's top k for it (generate.consistency)
)


class Rejected(ValueError):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REJECT_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def _load_json(text: str):
    text = (text or "").strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # Teachers without structured output sometimes wrap the object in prose: take the outermost {...}.
        start, end = text.find("{"), text.rfind("}")
        if 0 <= start < end:
            try:
                return json.loads(text[start : end + 1])
            except json.JSONDecodeError:
                pass
    raise Rejected("invalid_json", text[:80])


def parse_brainstorm(text: str) -> list[str]:
    """A brainstorm's output: a JSON list of strings, or an object holding one (``{"tasks": [...]}``)."""
    data = _load_json(text) if not (text or "").strip().startswith("[") else None
    if data is None:
        try:
            data = json.loads(text.strip())
        except json.JSONDecodeError as exc:
            raise Rejected("invalid_json", str(exc)) from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise Rejected("missing_key", "expected one list of task definitions")
        data = lists[0]
    if not isinstance(data, list):
        raise Rejected("invalid_json", "a brainstorm must be a list of strings")
    tasks, seen = [], set()
    for item in data:
        if not isinstance(item, str):
            raise Rejected("not_string", f"task definition {item!r}")
        item = " ".join(item.split())
        if len(item.split()) >= 3 and normalize(item) not in seen:
            seen.add(normalize(item))
            tasks.append(item)
    if not tasks:
        raise Rejected("empty", "no task definition of at least three words")
    return tasks


def normalize(text: str) -> str:
    """Case-, accent-width-, punctuation- and whitespace-insensitive form used for dedupe and contamination."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


_UNSPACED = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def word_count(text: str) -> int:
    # Scripts written without spaces (Chinese, Japanese, Thai, ...) count each character as a word.
    unspaced = len(_UNSPACED.findall(text))
    return len(_UNSPACED.sub(" ", text).split()) + unspaced


def min_words(key: str, template: Template, min_words_short: int, min_words_long: int,
              values: dict | None = None) -> int:
    """The fewest words ``key`` needs: ``min_words_long`` for the template's long keys, else
    ``min_words_short`` — but never more than the prompt allowed: when the row's sampled length for the
    key ("less than 10") tops out below that minimum, the minimum is the short one."""
    least = min_words_long if key in template.long_keys else min_words_short
    placeholder = template.length_of.get(key)
    if values and placeholder in values:
        _, most = word_range(values[placeholder])
        if most is not None and most < least:
            least = min(min_words_short, most)
    return least


def validate_example(text: str, template: Template, min_words_short: int = 1, min_words_long: int = 5,
                     values: dict | None = None) -> dict[str, str]:
    """The group's fields of a teacher's output, or Rejected naming why not. ``values``: the row's
    sampled placeholders (its request's ``values``), which set how long a field may be."""
    data = _load_json(text)
    if not isinstance(data, dict):
        raise Rejected("invalid_json", "expected a JSON object")
    missing = [k for k in template.keys if k not in data]
    extra = [k for k in data if k not in template.keys]
    if missing or extra:
        raise Rejected("missing_key", f"missing {missing}, unexpected {extra}")
    fields = {}
    for key in template.keys:
        value = data[key]
        if not isinstance(value, str):
            raise Rejected("not_string", f"{key}={value!r:.60}")
        value = value.strip()
        if not value:
            raise Rejected("empty", key)
        if not any(ch.isalpha() for ch in value):
            raise Rejected("no_words", f"{key}={value!r:.60}")
        fields[key] = value
    for key, value in fields.items():
        least = min_words(key, template, min_words_short, min_words_long, values)
        if word_count(value) < least:
            raise Rejected("too_short", f"{key} has {word_count(value)} words, needs {least}")
    ordered = [template.query, template.positive, *template.negatives]
    normal = [normalize(fields[k]) for k in ordered]
    if len(set(normal)) < len(normal):
        raise Rejected("same_text", " / ".join(ordered))
    return fields


def to_row(fields: dict[str, str], template: Template, request: dict, teacher: str, usage: tuple[int, int]) -> TrainingRow:
    return TrainingRow(
        id=request["id"],
        group=template.group,
        task=request["task"],
        query=fields[template.query],
        positive=fields[template.positive],
        negatives=[fields[k] for k in template.negatives],
        language=request["language"],
        teacher=teacher,
        source="synthetic",
        prompt_tokens=int(usage[0]),
        completion_tokens=int(usage[1]),
    )


def copies(query: str, passage: str, ngram: int) -> bool:
    """Whether ``query`` is ``passage`` or shares a run of ``ngram`` normalised words with it."""
    q, p = normalize(query), normalize(passage)
    if q == p:
        return True
    words = q.split()
    if len(words) < ngram:
        return False
    padded = f" {p} "
    return any(f" {' '.join(words[i:i + ngram])} " in padded for i in range(len(words) - ngram + 1))


def validate_corpus_query(text: str, style: CorpusStyle, passage: str, copy_ngram: int) -> str:
    """The query of a corpus-grounded answer (a JSON object with the style's one key), or Rejected."""
    data = _load_json(text)
    if not isinstance(data, dict):
        raise Rejected("invalid_json", "expected a JSON object")
    if list(data) != [style.key]:
        raise Rejected("missing_key", f"expected only {style.key!r}, got {sorted(data)}")
    value = data[style.key]
    if not isinstance(value, str):
        raise Rejected("not_string", f"{style.key}={value!r:.60}")
    value = strip_leading_pointer(" ".join(value.split()))
    if not value:
        raise Rejected("empty", style.key)
    if not any(ch.isalpha() for ch in value):
        raise Rejected("no_words", f"{style.key}={value!r:.60}")
    n = word_count(value)
    if n < style.min_words:
        raise Rejected("too_short", f"{style.key} has {n} words, the {style.name} style needs {style.min_words}")
    if n > style.max_words:
        raise Rejected("too_long", f"{style.key} has {n} words, the {style.name} style allows {style.max_words}")
    if copies(value, passage, copy_ngram):
        raise Rejected("copied_chunk", f"shares {copy_ngram}+ words in a row with its chunk: {value[:80]!r}")
    pointer = REFERS_TO_CHUNK.search(value)
    if pointer:
        raise Rejected("refers_to_chunk", f"{pointer.group(0)!r} in {value[:80]!r}")
    return value


# A search query stands alone: one that points at the text it was written from ("This passage provides
# evidence …", "the above abstract", a "<Title of the passage>" placeholder) was common among
# SmolLM2-135M's SciFact queries and matches no real user's query.
_CHUNK_NOUNS = r"(?:passage|text|excerpt|paragraph|abstract|article|document|chunk)"
REFERS_TO_CHUNK = re.compile(
    r"\b(?:this|the|given|above|following|provided)\s+" + _CHUNK_NOUNS + r"\b|<[^<>]{1,60}>", re.IGNORECASE)
# ... but a statement wrapped in such a lead-in ("This passage supports the claim that X", "The passage
# suggests that X": a quarter of SmolLM2-135M's SciFact claims) is X: the lead-in, up to its "that" or
# colon after at most six reporting words ("supports", "evidence", "the claim", ...), is cut and what
# follows is checked like any answer. (Any word would also cut "The passage supports signalling that
# is achieved ..." at its relative "that".)
LEADING_POINTER = re.compile(
    r"^(?:this|the|given|above)\s+" + _CHUNK_NOUNS +
    r"(?:\s+(?:supports?|provides?|evidence|to|for|of|the|a|an|claim|finding|suggests?|shows?|indicates?|"
    r"reveals?|states?|says|mentions?|mentioned|describes?|demonstrates?|argues?|notes?|reports?|highlights?|"
    r"concludes?|found)){0,6}?(?:\s+that\s+|\s*:\s*)", re.IGNORECASE)


def strip_leading_pointer(value: str) -> str:
    """``value`` without a leading "this passage ... that" / "the abstract ...:" clause (first letter
    capitalised); unchanged when it has none."""
    m = LEADING_POINTER.match(value)
    if not m or m.end() == len(value):
        return value
    rest = value[m.end():]
    return rest[0].upper() + rest[1:]


def parse_corpus_answer(request: dict, text: str, teacher: str, usage: tuple[int, int]) -> dict:
    """A corpus-grounded request's answer -> its training row (query -> positive = the chunk, the style's
    instruction, the chunk id in ``source``), or Rejected."""
    values = json.loads(request["values"])
    style = load_corpus_styles()[values["style"]]
    query = validate_corpus_query(text, style, values["passage"], int(values["copy_ngram"]))
    return TrainingRow(
        id=request["id"], group=CORPUS_GROUP, task=request["task"], query=query, positive=values["passage"],
        negatives=[], language=request["language"], teacher=teacher, source=corpus_source(values["chunk_id"]),
        prompt_tokens=int(usage[0]), completion_tokens=int(usage[1]),
    ).to_dict()


def is_corpus_request(request: dict) -> bool:
    return request.get("kind") == "example" and request.get("group") == CORPUS_GROUP


def dedupe_keys(row: dict) -> list[str]:
    """What must be new for a row to count: its query, and its positive unless that is a label or a
    corpus chunk (a chunk may be asked about again in another style once every chunk had its turn)."""
    keys = ["q:" + normalize(row["query"])]
    if row["group"] != "long_short" and chunk_id_of(row) is None:
        keys.append("d:" + normalize(row["positive"]))
    return keys


class Deduper:
    """Exact dedupe on normalised text over the whole run (seeded with the rows already committed)."""

    def __init__(self):
        self.seen: set[str] = set()

    def add(self, row: dict) -> bool:
        keys = dedupe_keys(row)
        if any(k in self.seen for k in keys):
            return False
        self.seen.update(keys)
        return True
