"""The ray_llm engine's processor graph on a local Ray, without vLLM (not installed here, no GPU):
one processor per teacher built by Ray's own ``build_processor`` from that teacher's config, each fed
exactly its teacher's rows, unioned before parse_outcomes. Nothing in it starts an engine until the
dataset runs; the CPU half of a processor (Ray's chat template and tokenizer stages on the real
SmolLM2 folder) runs here on what our preprocess hands it. What needs a GPU: docs/generate.md."""

from __future__ import annotations

import json

import pytest

from embedforge.config.generate import GenerateConfig, TeacherConfig
from embedforge.generate.ray_llm import Postprocess, Preprocess, structured_schema, teacher_branches
from embedforge.generate.taxonomy import example_request, load_template

GROUPS = ["sts", "short_long", "bitext", "sts", "long_short", "short_long", "bitext", "sts"]


def _requests() -> list[dict]:
    """Eight requests of four groups; every third one (ids 0, 3, 6) sampled teacher b, the rest a."""
    rows = []
    for i, group in enumerate(GROUPS):
        req = example_request(load_template(group), f"{group}-{i:07d}", i, ["Retrieve documents that answer a question."],
                              0, {"English": 1.0}, 1)
        rows.append({**req, "teacher": "b" if i % 3 == 0 else "a", "max_tokens": 64})
    return rows


@pytest.fixture(scope="module")
def teachers(smollm2_dir, tmp_path_factory):
    a = TeacherConfig(name="a", model=smollm2_dir, max_concurrency=3, temperature=0.2, top_p=0.9)
    b = TeacherConfig(name="b", model=str(tmp_path_factory.mktemp("model-b")), max_concurrency=1, temperature=0.9,
                      top_p=0.5, engine_kwargs={"tensor_parallel_size": 2, "max_model_len": 2048})
    c = TeacherConfig(name="c", model="org/unused", max_concurrency=2)
    return a, b, c


def _chain(op) -> list:
    """The operators from ``op`` down to the source (each branch below the union is a single chain)."""
    ops = [op]
    while ops[-1].input_dependencies:
        assert len(ops[-1].input_dependencies) == 1
        ops.append(ops[-1].input_dependencies[0])
    return ops


def test_each_teacher_gets_its_own_processor_and_exactly_its_rows(ray_cluster, teachers):
    import ray.data

    a, b, _ = teachers
    requests = _requests()
    branches = teacher_branches(ray.data.from_items(requests), [a, b])
    assert [br.teacher.name for br in branches] == ["a", "b"]
    for br, gpus in zip(branches, (1, 0), strict=True):
        t, processor = br.teacher, br.processor
        assert (processor.config.model_source, processor.config.concurrency) == (t.model, t.max_concurrency)
        assert processor.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
        assert processor.get_stage_by_name("ChatTemplateStage").fn_constructor_kwargs["model"] == t.model
        engine = processor.get_stage_by_name("vLLMEngineStage")
        assert engine.fn_constructor_kwargs["model"] == t.model
        assert engine.fn_constructor_kwargs["should_continue_on_error"] is True
        assert engine.fn_constructor_kwargs["engine_kwargs"].get("tensor_parallel_size", 1) == (2 if t is b else 1)
        compute = engine.map_batches_kwargs["compute"]
        assert (compute.min_size, compute.max_size) == (1, t.max_concurrency)
        # tp=1: one GPU per replica; tp=2: Ray's executor places the GPUs (a placement group of 2)
        assert engine.map_batches_kwargs["num_gpus"] == gpus
        if t is b:
            assert engine.map_batches_kwargs["ray_remote_args_fn"].args[0] == 2
        # the rows routed to this processor are exactly the rows that sampled its teacher
        routed = sorted(r["id"] for r in br.rows.take_all())
        assert routed == sorted(r["id"] for r in requests if r["teacher"] == t.name)
        assert routed  # both teachers have rows
        # what this processor's engine would be asked: its teacher's sampling settings, per row
        params = [Preprocess(t)(dict(r))["sampling_params"] for r in br.rows.take_all()]
        assert {(p["temperature"], p["top_p"]) for p in params} == {(t.temperature, t.top_p)}


def test_the_pipeline_unions_one_branch_per_teacher_with_rows_before_parsing(ray_cluster, teachers):
    from embedforge.generate.pipeline import build_dataset

    a, b, c = teachers
    gen = GenerateConfig(engine="ray_llm", teachers=[a, b, c])
    # c has no row in these requests: it gets no processor (no vLLM replicas started for nothing)
    ds = build_dataset(_requests(), [a, b, c], "rk", 1, gen)
    top = ds._logical_plan.dag
    assert top.name == "MapBatches(parse_outcomes)"
    (union,) = top.input_dependencies
    assert type(union).__name__ == "Union" and len(union.input_dependencies) == 2
    seen = {}
    for branch in union.input_dependencies:
        ops = _chain(branch)
        names = [op.name for op in ops]
        assert names[:-1] == ["Map(Postprocess)", "Map(_postprocess)", "MapBatches(DetokenizeUDF)",
                              "MapBatches(vLLMEngineStageUDF)", "MapBatches(TokenizeUDF)", "MapBatches(ChatTemplateUDF)",
                              "Map(_preprocess)", names[-2]]
        teacher = ops[0].fn.teacher  # the Postprocess labelling this branch's rows
        assert names[-2] == f"Filter(col('teacher') == '{teacher}')"
        seen[teacher] = ops[3].fn_constructor_kwargs["model"]
    assert seen == {"a": a.model, "b": b.model}

    with pytest.raises(ValueError, match="requests name teachers not in generate.teachers: b"):
        build_dataset(_requests(), [a], "rk", 1, GenerateConfig(engine="ray_llm", teachers=[a]))


def test_rays_own_cpu_stages_take_what_preprocess_hands_them(ray_cluster, teachers):
    """Teacher a's processor up to the engine (chat template, tokenizer: CPU) on its rows of four groups:
    the prompt is the chat-templated request and the sampling params reach the engine stage intact,
    each row with its own group's schema."""
    import ray.data
    from ray.llm._internal.batch.processor.base import Processor

    a, _, _ = teachers
    requests = _requests()
    (branch,) = teacher_branches(ray.data.from_items(requests), [a])
    stages = [branch.processor.get_stage_by_name(n) for n in ("ChatTemplateStage", "TokenizeStage")]
    for stage in stages:  # two actor stages and the tasks fit the test's 2 CPUs
        stage.map_batches_kwargs["num_cpus"] = 0.25
    rows = Processor(branch.processor.config, stages, preprocess=Preprocess(a))(branch.rows).take_all()
    by_id = {r["id"]: r for r in requests}
    assert sorted(r["id"] for r in rows) == sorted(i for i, r in by_id.items() if r["teacher"] == "a")
    assert {r["group"] for r in rows} == {"sts", "short_long", "bitext", "long_short"}
    for row in rows:
        request = by_id[row["id"]]
        user = json.loads(request["messages"])[0]["content"]
        assert user.strip()[-40:] in row["prompt"] and row["prompt"].rstrip().endswith("assistant")
        assert len(row["tokenized_prompt"]) > 50
        params = row["sampling_params"]
        assert (params["temperature"], params["top_p"], params["max_tokens"], params["seed"]) == (0.2, 0.9, 64, request["seed"])
        assert json.loads(params["structured_outputs"]["json"]) == structured_schema("json_schema", json.loads(request["schema"]))
        # and Postprocess maps such a row (plus an engine answer) back to what parse_outcomes reads
        done = Postprocess(a)({**row, "generated_text": "{}", "num_input_tokens": len(row["tokenized_prompt"]),
                               "num_generated_tokens": 64, "time_taken_llm": 0.5})
        assert (done["teacher"], done["finish_reason"], done["prompt_tokens"]) == ("a", "length", len(row["tokenized_prompt"]))
