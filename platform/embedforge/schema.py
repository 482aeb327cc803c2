"""The training-row schema shared by synthetic generation, the labeled loaders and the trainer.

One row is one (query, positive, hard negatives) example with the task instruction its query is
formatted with. Parquet files under a run directory hold these columns, in this order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Task groups of the paper's taxonomy (§3.1) plus one per labeled-data kind.
SYNTHETIC_GROUPS = ("short_long", "long_short", "short_short", "long_long", "sts", "bitext")
LABELED_GROUPS = ("retrieval", "sts_pairs", "pair_classification", "classification")
GROUPS = SYNTHETIC_GROUPS + LABELED_GROUPS
# Corpus-grounded rows (a teacher's query for a chunk of the user's documents) are retrieval rows whose
# source names the chunk: "corpus:<doc_id>#<n>".
CORPUS_GROUP = "retrieval"
CORPUS_SOURCE_PREFIX = "corpus:"

COLUMNS = (
    "id",                 # stable unique id (str); reruns produce the same ids
    "group",              # one of GROUPS; batches are drawn from a single group
    "task",               # the task instruction queries are formatted with (may be "" for none)
    "query",              # str
    "positive",           # str
    "negatives",          # list[str], possibly empty (hard negatives)
    "language",           # e.g. "English"
    "teacher",            # teacher name, or the loader/source name for labeled data
    "source",             # "synthetic", the labeled data set name, or "corpus:<doc_id>#<n>" (the chunk)
    "prompt_tokens",      # int, teacher tokens spent on this row (0 for labeled data)
    "completion_tokens",  # int
)


@dataclass
class TrainingRow:
    id: str
    group: str
    task: str
    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    language: str = "English"
    teacher: str = ""
    source: str = "synthetic"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"group {self.group!r} is not one of: {', '.join(GROUPS)}")
        for name in ("id", "query", "positive"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.negatives, list) or not all(isinstance(n, str) for n in self.negatives):
            raise ValueError(f"negatives must be a list of strings, got {self.negatives!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def corpus_source(chunk_id: str) -> str:
    return CORPUS_SOURCE_PREFIX + chunk_id


def chunk_id_of(row: dict) -> str | None:
    """The chunk a corpus-grounded row's query was written for (``<doc_id>#<n>``), else None."""
    source = row.get("source") or ""
    return source[len(CORPUS_SOURCE_PREFIX):] if source.startswith(CORPUS_SOURCE_PREFIX) else None


def doc_id_of_chunk(chunk_id: str) -> str:
    """``<doc_id>#<n>`` -> ``<doc_id>`` (a document id may itself hold '#')."""
    return chunk_id.rsplit("#", 1)[0]


def arrow_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("group", pa.string()),
            ("task", pa.string()),
            ("query", pa.string()),
            ("positive", pa.string()),
            ("negatives", pa.list_(pa.string())),
            ("language", pa.string()),
            ("teacher", pa.string()),
            ("source", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
        ]
    )
