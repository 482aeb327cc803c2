"""GPU engine: Ray's own batch LLM engine (``ray.data.llm`` with vLLM) in place of endpoints.

``generate.engine: ray_llm``. The request rows are split by the teacher each row sampled
(``generate.teachers[].weight``); each teacher's rows go through a processor of its own, built from
that teacher's config, and the outcomes are unioned, so every row is answered by the teacher it
names and the mix holds as on the openai engine:

- ``model``: the vLLM model source (a Hugging Face id, a local folder or an s3:// / gs:// path);
- ``max_concurrency``: the most vLLM replicas (Ray scales the pool from 1 to it); each replica takes
  ``tensor_parallel_size × pipeline_parallel_size`` GPUs;
- ``engine_kwargs``: vLLM's engine arguments for this teacher (``tensor_parallel_size``,
  ``max_model_len``, ``gpu_memory_utilization``, ...);
- ``temperature``, ``top_p``, ``response_format`` (the group's JSON schema as vLLM structured output
  unless "none"), with the row's ``max_tokens`` and ``seed``.

What comes back has the columns ``parse_outcomes`` reads, ``finish_reason`` included, so a truncated
answer is rejected as ``truncated`` exactly as on the openai engine, and the token counts reach the
ledger. A row vLLM fails on comes back as a ``request_error`` reject instead of stopping the run.

Nothing here imports vLLM: Ray builds the processors' stages lazily (the engines start when the
dataset executes, on the GPU nodes). ``require_vllm`` is the check, run with the teacher checks
before any Ray work (``runner.ready_teachers``).
"""

from __future__ import annotations

import importlib.util
import json
import typing
from typing import Any, NamedTuple

from embedforge.config.base import ConfigError
from embedforge.config.generate import GenerateConfig, TeacherConfig
from embedforge.generate.pipeline import REQUEST_COLUMNS
from embedforge.generate.teachers import response_format

# Rows per engine batch (Ray's default; its engine stage is tuned for batches of 32 or more).
BATCH_SIZE = 32

# The request columns an outcome keeps: all but the heavy messages and schema (and the teacher,
# which Postprocess sets to the one that answered).
KEPT_COLUMNS = tuple(c for c in REQUEST_COLUMNS if c not in ("messages", "schema", "teacher"))

# vLLM's finish reasons (CompletionOutput.finish_reason) in the openai path's words. vLLM already
# says "stop" (EOS or a stop string) and "length" (max_tokens or max_model_len reached), as OpenAI does.
VLLM_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}


def require_vllm() -> None:
    """Raise a ConfigError naming ``generate.engine`` when vLLM cannot be imported here."""
    if importlib.util.find_spec("vllm") is None:
        engines = ", ".join(typing.get_args(GenerateConfig.model_fields["engine"].annotation))
        raise ConfigError(
            "generate.engine=ray_llm runs every teacher in vLLM on the cluster's GPUs, but vllm is not "
            "installed here (install ray[llm] in the cluster's image). generate.engine is one of: "
            f"{engines}; engine=openai calls OpenAI-compatible endpoints (generate.teachers[].base_url) "
            "or the local teacher instead."
        )


def structured_schema(mode: str, schema: dict) -> dict | None:
    """The JSON schema vLLM's structured output enforces for ``response_format`` ``mode`` (None: "none"),
    the same schema the openai engine sends the endpoint."""
    fmt = response_format(mode, schema)
    if fmt is None:
        return None
    return fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else fmt["schema"]


def finish_reason(row: dict, max_tokens: int, max_model_len: int | None = None) -> str:
    """Why vLLM ended the answer, in the openai path's words ("length": cut off).

    Ray's vLLM stage (Ray 2.60) returns the text and token counts but not vLLM's own finish_reason;
    when a row carries one it is used. Otherwise the counts say it: vLLM stops a sequence for length
    exactly when it has ``max_tokens`` generated tokens, or prompt and answer fill ``max_model_len``.
    (An answer ending with EOS on its very last allowed token reads as "length" too; parse_outcome
    only uses "length" to name an unparseable answer ``truncated``.)
    """
    given = row.get("finish_reason")
    if given:
        return VLLM_FINISH_REASONS.get(str(given), str(given))
    generated = int(row.get("num_generated_tokens") or 0)
    prompt = int(row.get("num_input_tokens") or 0)
    if generated >= max_tokens or (max_model_len and prompt + generated >= max_model_len):
        return "length"
    return "stop"


class Preprocess:
    """A request row → one teacher's processor inputs: the chat ``messages`` and vLLM
    ``sampling_params`` (the teacher's temperature and top_p, the row's max_tokens and seed, the
    group's schema as structured output). Ray merges these into the row."""

    def __init__(self, teacher: TeacherConfig):
        self.teacher = teacher

    def __call__(self, row: dict) -> dict:
        params: dict[str, Any] = {
            "temperature": float(self.teacher.temperature), "top_p": float(self.teacher.top_p),
            "max_tokens": int(row["max_tokens"]), "seed": int(row["seed"]),
        }
        schema = structured_schema(self.teacher.response_format, json.loads(row["schema"]))
        if schema is not None:
            # A JSON string, not a dict: rows of different groups share a block, and Arrow would
            # merge their schemas' properties into one struct (null-filled) on the way to the engine.
            params["structured_outputs"] = {"json": json.dumps(schema)}
        return {"messages": json.loads(row["messages"]), "sampling_params": params}


class Postprocess:
    """One teacher's engine output row → the columns ``parse_outcomes`` reads (the teacher that
    answered, text, finish_reason, token counts, error, latency)."""

    def __init__(self, teacher: TeacherConfig):
        self.teacher = teacher.name
        self.max_model_len = teacher.engine_kwargs.get("max_model_len")

    def __call__(self, row: dict) -> dict:
        error = str(row.get("__inference_error__") or "")
        max_tokens = int(row["max_tokens"])
        out = {k: row[k] for k in KEPT_COLUMNS}
        out.update({
            "teacher": self.teacher, "max_tokens": max_tokens,
            "text": "" if error else str(row.get("generated_text") or ""),
            "finish_reason": "" if error else finish_reason(row, max_tokens, self.max_model_len),
            "prompt_tokens": int(row.get("num_input_tokens") or 0),
            "completion_tokens": int(row.get("num_generated_tokens") or 0),
            "error": f"vLLM: {error[:300]}" if error else "",
            "latency_s": max(0.0, float(row.get("time_taken_llm") or 0.0)),
        })
        return out


def processor_config(teacher: TeacherConfig, batch_size: int = BATCH_SIZE):
    """The ``vLLMEngineProcessorConfig`` of one teacher (building it imports no vLLM)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=teacher.model, concurrency=teacher.max_concurrency, batch_size=batch_size,
        engine_kwargs=dict(teacher.engine_kwargs),
        # A row vLLM fails on comes back with __inference_error__ (→ a request_error reject) instead
        # of failing the whole dataset; Postprocess turns it into the error column.
        should_continue_on_error=True,
    )


class TeacherBranch(NamedTuple):
    """One teacher's part of the graph (all lazy Datasets)."""

    teacher: TeacherConfig
    rows: Any  # the rows whose sampled teacher this is
    processor: Any  # the ray.data.llm Processor built from this teacher's config
    outcomes: Any  # rows → processor → Postprocess


def teacher_branches(ds, teachers: list[TeacherConfig], batch_size: int = BATCH_SIZE) -> list[TeacherBranch]:
    """One branch per teacher: its rows (filtered on the ``teacher`` column), its processor, its outcomes."""
    from ray.data.expressions import col
    from ray.data.llm import build_processor

    branches = []
    for teacher in teachers:
        rows = ds.filter(expr=col("teacher") == teacher.name)
        # No postprocess inside the processor: Ray's own skips rows vLLM failed on, and Postprocess
        # must see those too.
        processor = build_processor(processor_config(teacher, batch_size), preprocess=Preprocess(teacher))
        branches.append(TeacherBranch(teacher, rows, processor, processor(rows).map(Postprocess(teacher))))
    return branches


def apply_ray_llm(ds, teachers: list[TeacherConfig], batch_size: int = BATCH_SIZE):
    """The request rows of ``ds`` answered by their own teachers: the union of the teachers' branches.

    Pass only the teachers that have rows (each branch starts its own vLLM replicas when it runs)."""
    if not teachers:
        raise ValueError("apply_ray_llm: no teacher")
    outcomes = [b.outcomes for b in teacher_branches(ds, teachers, batch_size)]
    return outcomes[0].union(*outcomes[1:]) if len(outcomes) > 1 else outcomes[0]
