"""Config of the generate stage: teachers, the task-group mix, languages, filters, labeled data."""

from __future__ import annotations

import os
from typing import Literal

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


class LabeledDatasetConfig(Section):
    """A labeled data set turned into training rows (the paper mixes these with synthetic data)."""

    kind: Literal["beir", "sts_pairs", "pair_classification", "classification"]
    name: str
    path: str  # BEIR folder, or a TSV file
    task: str  # the task instruction queries of this set are formatted with
    split: str = "train"  # BEIR qrels split
    sample_ratio: float = Field(1.0, gt=0, le=1)
    score_threshold: float = 4.0  # sts_pairs: keep pairs scoring at least this
    max_rows: int | None = Field(None, ge=1)


class ContaminationConfig(Section):
    """Evaluation sets synthetic rows must not overlap (the paper filtered against MTEB test sets)."""

    # Files of evaluation text: .tsv (every text column), .jsonl (text/title fields), .txt (one a line).
    eval_files: list[str] = Field(default_factory=list)
    ngram: int = Field(13, ge=3)  # a shared run of this many normalised words counts as overlap


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


__all__ = ["GenerateConfig", "TeacherConfig", "LocalTeacherConfig", "LabeledDatasetConfig",
           "ContaminationConfig", "PAPER_GROUP_MIX", "LABELED_GROUPS"]
