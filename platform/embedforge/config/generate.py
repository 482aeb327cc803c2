"""Config of the generate stage: teachers, the task-group mix, languages, filters, labeled data."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from embedforge.config.base import Section
from embedforge.schema import LABELED_GROUPS, SYNTHETIC_GROUPS

SyntheticGroup = Literal["short_long", "long_short", "short_short", "long_long", "sts", "bitext"]
assert set(SyntheticGroup.__args__) == set(SYNTHETIC_GROUPS)

# The paper's mix (§3.1): 500k examples over the six groups.
PAPER_GROUP_MIX = {
    "short_long": 167_000,
    "long_short": 122_000,
    "sts": 99_000,
    "bitext": 89_000,
    "long_long": 17_000,
    "short_short": 13_000,
}


class TeacherConfig(Section):
    """One OpenAI-compatible endpoint. Limits hold for the whole run, across every Ray actor."""

    name: str
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str
    # The NAME of the environment variable holding the key (never the key itself); None: no key.
    api_key_env: str | None = None
    weight: float = Field(1.0, gt=0)
    max_concurrency: int = Field(8, ge=1)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    price_prompt_per_1k: float = Field(0.0, ge=0)
    price_completion_per_1k: float = Field(0.0, ge=0)
    # How the endpoint takes the group's JSON schema: OpenAI/vLLM "json_schema"; llama-cpp-python's
    # server {"type": "json_object", "schema": ...} = "json_object_schema"; "none": prompt only.
    response_format: Literal["json_schema", "json_object_schema", "none"] = "json_schema"
    # The openai client's own retry/backoff (429, 5xx, timeouts) and per-request timeout.
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    # generate.engine=ray_llm only (there `model` is the vLLM model source and `max_concurrency` the
    # most vLLM replicas): vLLM engine arguments for this teacher, e.g. tensor_parallel_size (GPUs
    # per replica), max_model_len, gpu_memory_utilization. The openai engine ignores them.
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("engine_kwargs")
    @classmethod
    def _engine_kwargs_valid(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = {"model": "the teacher's `model` is the model source", "task_type": "the engine generates"}
        for key, why in taken.items():
            if key in v:
                raise ValueError(f"engine_kwargs may not set {key!r} ({why})")
        for key in ("tensor_parallel_size", "pipeline_parallel_size", "max_model_len"):
            if key in v and (isinstance(v[key], bool) or not isinstance(v[key], int) or v[key] < 1):
                raise ValueError(f"engine_kwargs.{key} must be a positive integer (got {v[key]!r})")
        util = v.get("gpu_memory_utilization")
        if util is not None and (isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1):
            raise ValueError(f"engine_kwargs.gpu_memory_utilization must be in (0, 1] (got {util!r})")
        return v

    def api_key(self) -> str:
        if self.api_key_env is None:
            return "none"
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ValueError(
                f"teacher {self.name!r}: environment variable {self.api_key_env} (generate.teachers[].api_key_env) is not set"
            )
        return key


class LocalTeacherConfig(Section):
    """llama-cpp-python's OpenAI-compatible server, started and stopped by the job."""

    enabled: bool = False
    # A .gguf path or a packaged alias (smollm2-135m).
    model: str = "smollm2-135m"
    name: str = "local"
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0: a free port
    n_ctx: int = Field(2048, ge=256)
    n_threads: int | None = Field(None, ge=1)
    startup_timeout_s: float = Field(120.0, gt=0)
    weight: float = Field(1.0, gt=0)
    max_concurrency: int = Field(2, ge=1)
    # Another OpenAI-compatible server to start instead of llama-cpp-python's (e.g. llama.cpp's own
    # `llama-server` binary): argv with {python} {model} {alias} {host} {port} {n_ctx} {n_threads}
    # filled in. It must serve /v1/models and /v1/chat/completions under the alias.
    command: list[str] | None = None

    @field_validator("command")
    @classmethod
    def _command_has_port(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not any("{port}" in part for part in v)):
            raise ValueError("give the server's argv with a {port} placeholder (the job picks the port), or null")
        return v


# Layouts of labeled data (generate/labeled.py and docs/generate.md say what each reads). Files in a
# set's own layout: a folder (beir, msmarco_passage, msmarco_document, t2ranking) or a TSV.
FILE_KINDS = ("beir", "sts_pairs", "pair_classification", "classification", "msmarco_passage",
              "msmarco_document", "t2ranking")
# Records of a set as the Hugging Face hub serves it: read from the hub (`hub`) or from local exports of
# the same records (`path`: .jsonl/.json/.parquet, gzipped JSON, or a folder of them).
RECORD_KINDS = ("ms_marco", "tevatron", "hotpot_qa", "nli", "quora_duplicates", "eli5", "dureader")
LabeledKind = Literal["beir", "sts_pairs", "pair_classification", "classification", "msmarco_passage",
                      "msmarco_document", "t2ranking", "ms_marco", "tevatron", "hotpot_qa", "nli",
                      "quora_duplicates", "eli5", "dureader"]
assert LabeledKind.__args__ == FILE_KINDS + RECORD_KINDS


class LabeledDatasetConfig(Section):
    """A labeled data set turned into training rows (the paper mixes these with synthetic data)."""

    kind: LabeledKind
    name: str
    # The task instruction queries of this set are formatted with; a list: rows take them in turn (the
    # paper gives NLI and Quora two each).
    task: str | list[str]
    # Where the data is: `path` (a local folder or file in the kind's layout) or, for the record kinds,
    # `hub` (a Hugging Face dataset id, read with datasets.load_dataset(hub, hub_config, split=split)).
    path: str | None = None
    hub: str | None = None
    hub_config: str | None = None
    split: str = "train"  # BEIR qrels split; the hub split
    sample_ratio: float = Field(1.0, gt=0, le=1)
    score_threshold: float = 4.0  # sts_pairs: keep pairs scoring at least this
    max_rows: int | None = Field(None, ge=1)
    negatives: int = Field(1, ge=0)  # hard negatives kept per row, of those the source gives (the paper: one)
    # classification only: a row's positive is its label's name ("label": "card arrival") or another text
    # of the same label ("example"; its negative is then a text of another label, not another label's name).
    positive: Literal["label", "example"] = "label"
    language: str = "English"  # the rows' language column

    @field_validator("task")
    @classmethod
    def _task_given(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or not all(t.strip() for t in v)):
            raise ValueError("give one instruction, or a non-empty list of non-empty instructions")
        return v

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.hub is None):
            raise ValueError(f"labeled set {self.name!r}: give exactly one of `path` (local files) and `hub` "
                             "(a Hugging Face dataset id)")
        if self.hub is not None and self.kind not in RECORD_KINDS:
            raise ValueError(f"labeled set {self.name!r}: kind {self.kind!r} reads local files (`path`); `hub` "
                             f"serves the kinds {', '.join(RECORD_KINDS)}")
        if self.hub_config is not None and self.hub is None:
            raise ValueError(f"labeled set {self.name!r}: `hub_config` needs `hub`")
        if self.positive != "label" and self.kind != "classification":
            raise ValueError(f"labeled set {self.name!r}: `positive: {self.positive}` is for kind classification; "
                             f"kind {self.kind!r} takes its positives from the source (leave `positive` as 'label')")
        return self


class ContaminationConfig(Section):
    """Evaluation sets synthetic rows must not overlap (the paper filtered against MTEB test sets)."""

    # Files of evaluation text: .tsv (every text column), .jsonl (text/title fields), .txt (one a line).
    eval_files: list[str] = Field(default_factory=list)
    ngram: int = Field(13, ge=3)  # a shared run of this many normalised words counts as overlap
    # Also the evaluated splits of every task `evaluate.tasks` and `evaluate.local_tasks` name, as mteb
    # loads them (downloads hub tasks on first use; the index is built once per run and cached).
    against_evaluation: bool = False


# Query styles of corpus-grounded generation (templates/corpus_styles.yaml holds one prompt each).
CORPUS_STYLES = ("question", "claim", "keyword", "title", "paraphrase")
CORPUS_FORMATS = ("auto", "beir", "parquet", "text")


def _check_styles(v: dict, key: str) -> None:
    unknown = [s for s in v if s not in CORPUS_STYLES]
    if unknown:
        raise ValueError(f"unknown style {unknown[0]!r} in generate.corpus.{key}; styles: {', '.join(CORPUS_STYLES)}")


class CorpusConfig(Section):
    """Corpus-grounded generation: teachers write queries for sampled chunks of the user's documents
    (``generate/corpus.py``). Rows: query -> positive = the chunk, group ``retrieval``."""

    # A BEIR corpus.jsonl (or a BEIR folder holding one), a Parquet file (or a folder of them), or a
    # folder of .txt/.md files (searched recursively; id = the path relative to the folder).
    path: str
    # auto: .jsonl or a folder with corpus.jsonl -> beir; .parquet or a folder of them -> parquet;
    # any other folder -> text.
    format: Literal["auto", "beir", "parquet", "text"] = "auto"
    # Parquet only: the id and text columns, and an optional title column (put before the text, as a
    # BEIR title is).
    id_column: str = "id"
    text_column: str = "text"
    title_column: str | None = None
    # Queries to keep (rows of group `retrieval`), on top of generate.num_rows.
    num_queries: int = Field(100, ge=0)
    # Relative weight of each query style; requests take the styles in this proportion, interleaved.
    styles: dict[str, float] = Field(default_factory=lambda: {s: 1.0 for s in CORPUS_STYLES})
    # Retrieval instruction per style, replacing the style's generic one (e.g. a domain's wording).
    instructions: dict[str, str] = Field(default_factory=dict)
    language: str = "English"  # the corpus's language: queries are asked for in it; the rows' language
    # Chunks of at most chunk_tokens tokens, consecutive chunks sharing overlap_tokens. tokenizer:
    # backbone = counted with model.backbone's tokenizer; words = whitespace-separated words.
    chunk_tokens: int = Field(256, ge=8)
    overlap_tokens: int = Field(32, ge=0)
    tokenizer: Literal["backbone", "words"] = "backbone"
    max_chars: int = Field(3000, ge=100)  # the chunk shown in the prompt is cut at this many characters
    max_tokens: int = Field(128, ge=16)  # the teacher's completion limit for one query
    # A query sharing a run of this many normalised words with its chunk is a copy (rejected `copied_chunk`).
    copy_ngram: int = Field(10, ge=3)
    # Consecutive requests asking about the same chunk (each in the next style of the mix), as GPL asks
    # three per passage. A local llama.cpp teacher then reuses the chunk's part of the prompt from its
    # previous call (prefix cache): on a 2-core Xeon, prompt evaluation 0.55 s instead of 1.4 s a call.
    # Fewer distinct chunks per query: 1 spreads the queries widest. Keep it fixed for a run (it maps
    # request numbers to chunks; a resume with another value asks about other chunks).
    queries_per_chunk: int = Field(1, ge=1)

    @field_validator("path")
    @classmethod
    def _path_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give the corpus: a BEIR corpus.jsonl, a Parquet file or a folder of .txt/.md files")
        return v

    @field_validator("styles")
    @classmethod
    def _styles_valid(cls, v: dict) -> dict:
        _check_styles(v, "styles")
        if not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"give a non-negative weight per style with a positive total; styles: {', '.join(CORPUS_STYLES)}")
        return v

    @field_validator("instructions")
    @classmethod
    def _instructions_valid(cls, v: dict) -> dict:
        _check_styles(v, "instructions")
        empty = [s for s, text in v.items() if not text.strip()]
        if empty:
            raise ValueError(f"generate.corpus.instructions.{empty[0]} is empty")
        return v

    @model_validator(mode="after")
    def _overlap_below_chunk(self):
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"generate.corpus.overlap_tokens ({self.overlap_tokens}) must be smaller than "
                             f"generate.corpus.chunk_tokens ({self.chunk_tokens})")
        return self


class ConsistencyConfig(Section):
    """Consistency filtering of corpus-grounded rows (``generate/consistency.py``): a (query, chunk) pair
    is kept only when its chunk ranks in the top ``top_k`` of every chunk of the corpus for the query."""

    enabled: bool = True
    # A model spec (an alias such as all-minilm-l6-v2, a folder, a hub id), or "backbone" (model.backbone
    # without model.adapter) or "student" (model.backbone with model.adapter: the model being trained,
    # the same as the backbone before any training).
    model: str = "all-minilm-l6-v2"
    top_k: int = Field(3, ge=1)
    # Queries encoded with their style's instruction; None: yes for backbone/student when
    # model.instructions is on, no for a named model (sentence-transformers models take none).
    instructions: bool | None = None
    # The encoding pool's actors (embedforge.encode_pool) for the checks, which run beside the teacher
    # actors: a fixed share of CPUs rather than the whole cluster. The corpus itself is encoded before the
    # first teacher call, with num_actors actors sharing the cluster's free CPUs (at least cpus_per_actor each).
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    batch_size: int = Field(64, ge=1)
    check_rows: int = Field(32, ge=1)  # valid rows buffered before they are checked (and at each commit)

    @field_validator("model")
    @classmethod
    def _model_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give a model (e.g. all-minilm-l6-v2), or backbone, or student")
        return v


class GenerateConfig(Section):
    """Synthetic data from LLM teachers (the paper's taxonomy) plus labeled data, on Ray Data."""

    num_rows: int = Field(48, ge=0)
    # Relative weight of each group; rows are split in proportion (largest remainder).
    groups: dict[SyntheticGroup, float] = Field(default_factory=lambda: {g: 1.0 for g in SYNTHETIC_GROUPS})
    teachers: list[TeacherConfig] = Field(default_factory=list)
    local_teacher: LocalTeacherConfig = Field(default_factory=LocalTeacherConfig)
    engine: Literal["openai", "ray_llm"] = "openai"
    # Languages: sampled per row from XLM-R's list (templates/languages.yaml, weighted towards
    # high-resource languages, ~43% English); entries here replace those weights, 0 drops a language.
    language_weights: dict[str, float] = Field(default_factory=dict)
    # Brainstorm: task definitions per call and rows generated per definition.
    tasks_per_brainstorm: int = Field(20, ge=1)
    rows_per_task: int = Field(1, ge=1)
    brainstorm_attempts: int = Field(3, ge=1)
    max_tokens: int = Field(1024, ge=16)
    brainstorm_max_tokens: int = Field(1024, ge=16)
    # Validation: the shortest acceptable text, in words, for short and for long fields.
    min_words_short: int = Field(1, ge=1)
    min_words_long: int = Field(5, ge=1)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    labeled: list[LabeledDatasetConfig] = Field(default_factory=list)
    # Corpus-grounded queries (None: none) and their consistency filter.
    corpus: CorpusConfig | None = None
    consistency: ConsistencyConfig = Field(default_factory=ConsistencyConfig)
    # Stop when a teacher rejects more than this share after `reject_min_attempts` attempts.
    max_reject_rate: float = Field(0.95, gt=0, le=1)
    reject_min_attempts: int = Field(20, ge=1)
    # Attempts planned per missing row (covers expected rejects); at most `max_rounds` rounds.
    oversample: float = Field(1.5, ge=1)
    max_rounds: int = Field(50, ge=1)
    actors: int = Field(1, ge=1)  # teacher-call actors (each keeps many requests in flight)
    # A shard (the unit of resume) is committed every `shard_rows` attempts or `flush_seconds`.
    shard_rows: int = Field(1000, ge=1)
    flush_seconds: float = Field(60.0, gt=0)
    progress: bool = True

    @property
    def uses_teachers(self) -> bool:
        """Whether the stage calls teachers: taxonomy rows (num_rows) or corpus-grounded queries."""
        return self.num_rows > 0 or (self.corpus is not None and self.corpus.num_queries > 0)

    @field_validator("groups")
    @classmethod
    def _groups_positive(cls, v: dict) -> dict:
        if not v or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"give a non-negative weight per group with a positive total; groups: {', '.join(SYNTHETIC_GROUPS)}")
        return v

    @model_validator(mode="after")
    def _teacher_names_unique(self):
        names = [t.name for t in self.teachers] + ([self.local_teacher.name] if self.local_teacher.enabled else [])
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"teacher names must be unique (generate.teachers[].name): {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _engine_teachers(self):
        if self.engine == "ray_llm" and self.local_teacher.enabled:
            raise ValueError(
                "generate.local_teacher (a llama.cpp server) needs generate.engine=openai; with engine=ray_llm "
                "give generate.teachers[] whose model is a vLLM model source (a Hugging Face id or folder)"
            )
        return self


__all__ = ["GenerateConfig", "TeacherConfig", "LocalTeacherConfig", "LabeledDatasetConfig",
           "CorpusConfig", "ConsistencyConfig", "CORPUS_STYLES", "CORPUS_FORMATS",
           "ContaminationConfig", "PAPER_GROUP_MIX", "LABELED_GROUPS"]
