"""generate/ray_llm.py without Ray or vLLM: a teacher's processor config, the rows its preprocess
hands the engine, and an engine output row mapped back to what parse_outcome reads (finish_reason
kept, so truncation is rejected as on the openai engine). The processor graph itself is built in
tests/integration/test_generate_ray_llm.py."""

from __future__ import annotations

import json

import pytest
from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData

from embedforge.config.base import ConfigError
from embedforge.config.generate import GenerateConfig, LocalTeacherConfig, TeacherConfig
from embedforge.generate import ray_llm
from embedforge.generate.pipeline import parse_outcome
from embedforge.generate.ray_llm import Postprocess, Preprocess, finish_reason, processor_config
from embedforge.generate.taxonomy import example_request, load_template
from tests.unit.generate_samples import GOOD

TEACHER_A = TeacherConfig(name="a", model="org/model-a", max_concurrency=3, temperature=0.2, top_p=0.9)
TEACHER_B = TeacherConfig(name="b", model="/models/b", max_concurrency=1, temperature=0.9, top_p=0.5,
                          engine_kwargs={"tensor_parallel_size": 2, "max_model_len": 300})


def _request(group="sts", i=1, teacher="a", max_tokens=64):
    tasks = ["Retrieve documents that answer a question."]
    req = example_request(load_template(group), f"{group}-{i:07d}", i, tasks, 0, {"English": 1.0}, 1)
    return {**req, "teacher": teacher, "max_tokens": max_tokens}


def _engine_row(request: dict, teacher: TeacherConfig, text: str, generated: int, prompt_tokens: int = 120,
                error: str = "") -> dict:
    """A row as it leaves Ray's vLLM stage (its own output model, so a renamed field fails here):
    the request's columns, what preprocess added, the engine's output and Ray's bookkeeping."""
    out = vLLMOutputData(prompt="<prompt>", prompt_token_ids=list(range(prompt_tokens)), num_input_tokens=prompt_tokens,
                         generated_tokens=list(range(generated)), generated_text=text, num_generated_tokens=generated)
    return {**request, **Preprocess(teacher)(dict(request)), **out.model_dump(), "request_id": 7, "batch_uuid": "u",
            "time_taken_llm": 1.5, "params": "SamplingParams(...)", "__inference_error__": error}


def test_each_teacher_gets_a_processor_config_of_its_own():
    a, b = processor_config(TEACHER_A), processor_config(TEACHER_B, batch_size=8)
    assert (a.model_source, a.concurrency, a.batch_size) == ("org/model-a", 3, 32)
    assert (b.model_source, b.concurrency, b.batch_size) == ("/models/b", 1, 8)
    assert b.engine_kwargs["tensor_parallel_size"] == 2 and b.engine_kwargs["max_model_len"] == 300
    assert "tensor_parallel_size" not in a.engine_kwargs
    # rows vLLM fails on come back marked instead of failing the whole dataset
    assert a.should_continue_on_error and b.should_continue_on_error
    # Ray's validator writes into engine_kwargs: the teacher's own dict stays as configured
    assert TEACHER_B.engine_kwargs == {"tensor_parallel_size": 2, "max_model_len": 300}


def test_preprocess_sends_the_teachers_sampling_and_the_groups_schema():
    req = _request("short_long")
    schema = json.loads(req["schema"])
    a, b = Preprocess(TEACHER_A)(dict(req)), Preprocess(TEACHER_B)(dict(req))
    assert a["messages"] == json.loads(req["messages"]) and a["messages"][0]["role"] == "user"
    assert a["sampling_params"] == {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "seed": req["seed"],
                                    "structured_outputs": {"json": json.dumps(schema)}}
    assert (b["sampling_params"]["temperature"], b["sampling_params"]["top_p"]) == (0.9, 0.5)
    # json_object_schema: the schema llama.cpp gets (non-empty strings); none: prompt only
    obj = Preprocess(TEACHER_A.model_copy(update={"response_format": "json_object_schema"}))(dict(req))
    props = json.loads(obj["sampling_params"]["structured_outputs"]["json"])["properties"]
    assert props and all(p["minLength"] == 1 for p in props.values())
    bare = Preprocess(TEACHER_A.model_copy(update={"response_format": "none"}))(dict(req))
    assert "structured_outputs" not in bare["sampling_params"]


def test_a_truncated_engine_answer_is_rejected_as_truncated_like_on_the_openai_engine():
    req = _request("sts", max_tokens=64)
    cut_text = json.dumps(GOOD["sts"])[:30]
    cut = Postprocess(TEACHER_A)(_engine_row(req, TEACHER_A, cut_text, generated=64))
    assert cut["finish_reason"] == "length"
    assert (cut["prompt_tokens"], cut["completion_tokens"], cut["latency_s"], cut["error"]) == (120, 64, 1.5, "")
    outcome = parse_outcome(cut, 1, 3)
    assert (outcome["status"], outcome["reason"], outcome["detail"]) == ("rejected", "truncated", "hit max_tokens=64")
    assert (outcome["teacher"], outcome["completion_tokens"]) == ("a", 64)
    # the same broken text that ended before max_tokens is bad JSON, not a truncation
    short = Postprocess(TEACHER_A)(_engine_row(req, TEACHER_A, cut_text, generated=20))
    assert short["finish_reason"] == "stop"
    assert parse_outcome(short, 1, 3)["reason"] == "invalid_json"


def test_a_good_engine_answer_is_kept_with_the_teacher_that_answered_and_its_tokens():
    req = _request("sts", teacher="b")
    row = Postprocess(TEACHER_B)(_engine_row(req, TEACHER_B, json.dumps(GOOD["sts"]), generated=25, prompt_tokens=90))
    assert set(row) >= {"id", "group", "kind", "task", "language", "values", "teacher", "text", "finish_reason",
                        "prompt_tokens", "completion_tokens", "error", "latency_s", "max_tokens"}
    assert "messages" not in row and "sampling_params" not in row
    outcome = parse_outcome(row, 1, 3)
    assert outcome["status"] == "kept" and outcome["teacher"] == "b"
    payload = json.loads(outcome["payload"])
    assert (payload["teacher"], payload["prompt_tokens"], payload["completion_tokens"]) == ("b", 90, 25)
    assert payload["positive"] == GOOD["sts"]["S2"]
    # the label is the processor's teacher, the one whose engine produced the text, not the column's
    mislabeled = _engine_row({**req, "teacher": "a"}, TEACHER_B, json.dumps(GOOD["sts"]), generated=25)
    assert Postprocess(TEACHER_B)(mislabeled)["teacher"] == "b"


def test_prompt_and_answer_filling_max_model_len_is_truncation():
    # TEACHER_B: max_model_len 300; 290 prompt + 10 generated fill it long before max_tokens=64
    req = _request("sts", teacher="b")
    row = Postprocess(TEACHER_B)(_engine_row(req, TEACHER_B, '{"S1": "a', generated=10, prompt_tokens=290))
    assert row["finish_reason"] == "length" and parse_outcome(row, 1, 3)["reason"] == "truncated"
    # without a max_model_len the same counts mean the answer stopped by itself
    assert Postprocess(TEACHER_A)(_engine_row(req, TEACHER_A, '{"S1": "a', 10, 290))["finish_reason"] == "stop"


def test_finish_reason_given_by_the_engine_wins_over_the_counts():
    assert finish_reason({"finish_reason": "length", "num_generated_tokens": 3}, max_tokens=64) == "length"
    assert finish_reason({"finish_reason": "stop", "num_generated_tokens": 64}, max_tokens=64) == "stop"
    assert finish_reason({"finish_reason": "abort"}, max_tokens=64) == "abort"
    assert finish_reason({"num_generated_tokens": 63}, max_tokens=64) == "stop"
    assert finish_reason({"num_generated_tokens": 64}, max_tokens=64) == "length"


def test_a_row_vllm_failed_on_is_a_request_error_reject():
    req = _request("sts")
    row = _engine_row(req, TEACHER_A, "", generated=0, prompt_tokens=0, error="ValueError: prompt too long")
    row["time_taken_llm"] = -1
    out = Postprocess(TEACHER_A)(row)
    assert (out["text"], out["finish_reason"], out["latency_s"]) == ("", "", 0.0)
    outcome = parse_outcome(out, 1, 3)
    assert outcome["reason"] == "request_error" and "prompt too long" in outcome["detail"]


def test_bad_engine_settings_fail_naming_the_field():
    for bad, words in [({"model": "x"}, "engine_kwargs may not set 'model'"),
                       ({"task_type": "embed"}, "engine_kwargs may not set 'task_type'"),
                       ({"tensor_parallel_size": 0}, "engine_kwargs.tensor_parallel_size must be a positive integer"),
                       ({"max_model_len": "4k"}, "engine_kwargs.max_model_len must be a positive integer"),
                       ({"gpu_memory_utilization": 1.5}, r"engine_kwargs.gpu_memory_utilization must be in \(0, 1\]")]:
        with pytest.raises(ValueError, match=words):
            TeacherConfig(name="a", model="m", engine_kwargs=bad)
    assert TeacherConfig(name="a", model="m", engine_kwargs={"gpu_memory_utilization": 0.8}).engine_kwargs
    with pytest.raises(ValueError, match="generate.local_teacher .*needs generate.engine=openai"):
        GenerateConfig(engine="ray_llm", local_teacher=LocalTeacherConfig(enabled=True))


def test_without_vllm_the_ray_llm_engine_fails_before_any_ray_work(monkeypatch, tmp_path):
    from embedforge.generate.runner import ready_teachers

    monkeypatch.setattr(ray_llm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"generate.engine=ray_llm .*vllm is not installed.*one of: openai, ray_llm"):
        ray_llm.require_vllm()
    gen = GenerateConfig(engine="ray_llm", teachers=[TEACHER_A, TEACHER_B])
    with pytest.raises(ConfigError, match="generate.engine=ray_llm"):
        with ready_teachers(gen, tmp_path):
            pass
