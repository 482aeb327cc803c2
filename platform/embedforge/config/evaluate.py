"""MTEB evaluation with the paper's instructions, encoded by a pool of Ray actors, cached on disk."""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from embedforge.config.base import Section

LOCAL_TASK_KINDS = ("beir", "sts", "classification")


class LocalTaskConfig(Section):
    """A task read from a local folder (offline) instead of the Hugging Face hub.

    ``beir``: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.
    ``sts``: ``<split>.tsv`` with ``sentence1 sentence2 score``.
    ``classification``: ``train.tsv`` and ``<split>.tsv`` with ``text label``.
    A ``name`` that is an MTEB task of the same type (e.g. STSBenchmark, Banking77Classification,
    SciFact) keeps that task's metadata and evaluation settings, so scores compare with MTEB's.
    """

    kind: Literal["beir", "sts", "classification"]
    path: str
    name: str
    split: str = "test"
    # STS only: the score range in the file (STSB: 0..5).
    min_score: float = 0.0
    max_score: float = 5.0

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str) -> str:
        if not os.path.isdir(os.path.expanduser(v)):
            raise ValueError(f"task folder {v!r} does not exist")
        return v

    @field_validator("name")
    @classmethod
    def _name_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("task name must not be empty")
        return v


class CorpusLabelsConfig(Section):
    """Score on the corpus's own labeled queries when ``generate.corpus`` has them: a BEIR folder (or its
    corpus.jsonl) beside ``queries.jsonl`` and ``qrels/<split>.tsv``, as BEIR data sets ship. The same
    config then measures itself on a benchmark corpus (SciFact) and runs unchanged on a folder of notes,
    which has none (the run says so and scores the held-out generated queries only)."""

    split: str = "test"
    # The task's name; None: the folder's name, spelled as the paper's instruction table spells it when
    # it names that task (scifact -> SciFact: MTEB's metadata and the paper's instruction follow the name).
    name: str | None = None

    @field_validator("split")
    @classmethod
    def _split_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("give the split whose qrels score the corpus (qrels/<split>.tsv), e.g. test")
        return v


class BaselineConfig(Section):
    """A model to compare against: encoded through the same harness, and/or published scores."""

    # A backbone spec (alias, directory, hub id); None = published scores only.
    model: str | None = None
    # Whether its queries get task instructions (the meaning model.instructions has for the model);
    # sentence-transformers baselines are evaluated as published: without.
    instructions: bool = False
    published: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something(self) -> BaselineConfig:
        if self.model is None and not self.published:
            raise ValueError("a baseline needs a model, published scores, or both")
        return self


class EvaluateConfig(Section):
    # MTEB task names (loaded from the hub) ...
    tasks: list[str] = Field(default_factory=list)
    # ... and local folder tasks (offline).
    local_tasks: list[LocalTaskConfig] = Field(default_factory=list)
    # ... and the corpus's own labeled queries, when generate.corpus has them (null: never).
    corpus_labels: CorpusLabelsConfig | None = None
    # {task name: instruction text}; wins over the paper's table (resources/instructions.yaml). Whether
    # the model takes instructions at all is model.instructions (a baseline's: its own `instructions`).
    task_instructions: dict[str, str] = Field(default_factory=dict)
    baselines: dict[str, BaselineConfig] = Field(default_factory=dict)
    # Encoding precision of every model evaluated (the tuned one and the baselines); null: model.dtype.
    # bfloat16 encodes ~3.4x faster than float32 on CPUs with AVX512-BF16 or AMX, but ~7x *slower* on
    # an AVX2-only CPU (both measured on 2-core VMs); auto: bfloat16 on a GPU or such a CPU, float32
    # elsewhere (the driver's CPU decides). A published-score check of a sentence-transformers
    # baseline wants float32.
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = None
    # The encoding pool: Ray actors, one model replica each, started once per model and reused by every
    # task (the driver loads no weights); cpus_per_actor None = the cluster's CPUs / num_actors.
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float | None = Field(None, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    # Rows per batch sent to an actor (length-sorted, then token-budgeted by the encoder).
    ray_batch_size: int = Field(256, ge=1)
    # None: <run.output_dir>/<run.name>/embedding_cache; "" turns the cache off.
    cache_dir: str | None = None
    # None: <run.output_dir>/<run.name>/evaluate
    output_dir: str | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> EvaluateConfig:
        names = list(self.tasks) + [t.name for t in self.local_tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique; repeated: {', '.join(dupes)}")
        if any(not n.strip() for n in self.tasks):
            raise ValueError("tasks: a task name must not be empty")
        return self
