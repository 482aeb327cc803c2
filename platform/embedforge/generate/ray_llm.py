"""Optional GPU engine: Ray's own batch LLM engine (``ray.data.llm`` with vLLM) in place of endpoints.

Thin on purpose: it cannot run without GPUs and vLLM, so it only maps our request rows to the
processor's inputs and its outputs back to the columns ``parse_outcomes`` reads. Config:
``generate.engine: ray_llm``; the first teacher's ``model`` is the vLLM model source, its
``max_concurrency`` the number of vLLM replicas.
"""

from __future__ import annotations

import json

from embedforge.config.generate import TeacherConfig


def apply_ray_llm(ds, teacher: TeacherConfig, batch_size: int = 32):
    try:
        import vllm  # noqa: F401
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as exc:
        raise ImportError(f"generate.engine=ray_llm needs vLLM and GPUs ({exc}); use engine=openai here") from None

    config = vLLMEngineProcessorConfig(
        model_source=teacher.model, concurrency=teacher.max_concurrency, batch_size=batch_size,
        engine_kwargs={"guided_decoding_backend": "xgrammar"},
    )

    def pre(row: dict) -> dict:
        return {
            **row,
            "messages": json.loads(row["messages"]),
            "sampling_params": {
                "temperature": teacher.temperature, "top_p": teacher.top_p, "max_tokens": int(row["max_tokens"]),
                "seed": int(row["seed"]), "guided_decoding": {"json": json.loads(row["schema"])},
            },
        }

    def post(row: dict) -> dict:
        return {
            **{k: row[k] for k in ("id", "group", "kind", "task", "language", "values", "teacher", "max_tokens", "seed")},
            "messages": "", "schema": "", "text": row.get("generated_text") or "", "finish_reason": "",
            "prompt_tokens": int(row.get("num_input_tokens") or 0),
            "completion_tokens": int(row.get("num_generated_tokens") or 0), "error": "", "latency_s": 0.0,
        }

    return build_processor(config, preprocess=pre, postprocess=post)(ds)
