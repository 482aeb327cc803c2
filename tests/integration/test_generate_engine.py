"""The openai engine against the real llama.cpp server (SmolLM2-135M), preflight, injected faults."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml

from embedforge.config.generate import LocalTeacherConfig, TeacherConfig
from embedforge.generate.taxonomy import example_request, language_weights, load_template, split_counts
from embedforge.generate.teachers import (
    LocalTeacherServer,
    TeacherError,
    call_teacher,
    make_client,
    preflight,
)
from embedforge.generate.validation import validate_example
from embedforge.testing.fault_proxy import FaultProxy


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    server = LocalTeacherServer(LocalTeacherConfig(enabled=True, n_threads=2, n_ctx=1024),
                                log_dir=tmp_path_factory.mktemp("llama"))
    with server:
        yield server


def _sts_request(i: int, seed_override: int | None = None) -> dict:
    req = example_request(load_template("sts"), f"sts-{i:07d}", i, [], 0, {"English": 1.0}, 1)
    if seed_override is not None:
        req["seed"] = seed_override
    return req


def test_openai_engine_keeps_the_schema_and_the_same_seed_gives_the_same_text(llama):
    teacher = llama.teacher()
    preflight(teacher)

    # llama.cpp reuses the longest cached prompt prefix and evaluates only the rest, and its arithmetic
    # depends on how many tokens one pass evaluates (the portable AVX2 build: a prompt re-sent at once
    # re-evaluates a single token and can sample differently). So the same request is reproducible from
    # the same server state: each one below follows the same unrelated request x.
    async def calls():
        client = make_client(teacher)
        x = _sts_request(3)
        reqs = [x, _sts_request(1), x, _sts_request(1), x, _sts_request(2, seed_override=_sts_request(1)["seed"] + 1)]
        return [await call_teacher(client, teacher, r, 32) for r in reqs][1::2]

    a, b, c = asyncio.run(calls())
    for out in (a, b, c):
        assert out["error"] == "" and out["completion_tokens"] > 0 and out["prompt_tokens"] > 100
    # the schema is enforced by the server's grammar: the exact keys come back
    assert re.match(r'\s*\{\s*"S1"\s*:\s*"', a["text"]), a["text"]
    assert a["text"] == b["text"]  # same row id → same seed → same text (reproducible reruns)
    assert c["text"] != a["text"]  # another seed samples differently despite the server's default seed


def test_preflight_names_endpoint_and_error(llama, monkeypatch):
    with pytest.raises(TeacherError, match=r"teacher 'x' at .*unknown model 'gpt-9'.*smollm2-135m"):
        preflight(TeacherConfig(name="x", base_url=llama.base_url, model="gpt-9"))
    with pytest.raises(TeacherError, match=r"teacher 'down' at http://127.0.0.1:9/v1: endpoint unreachable"):
        preflight(TeacherConfig(name="down", base_url="http://127.0.0.1:9/v1", model="m"), timeout_s=2)
    monkeypatch.setenv("EF_TEST_KEY", "wrong")
    with FaultProxy(llama.base_url.removesuffix("/v1"), fault_rate=0, api_key="right") as proxy:
        with pytest.raises(TeacherError, match=r"teacher 'k' at .*the API key in \$EF_TEST_KEY was refused \(401"):
            preflight(TeacherConfig(name="k", base_url=proxy.base_url, model="smollm2-135m", api_key_env="EF_TEST_KEY"))
        monkeypatch.setenv("EF_TEST_KEY", "right")
        preflight(TeacherConfig(name="k", base_url=proxy.base_url, model="smollm2-135m", api_key_env="EF_TEST_KEY"))


def test_bad_teacher_fails_before_any_ray_work(tmp_path, repo_root):
    cfg = {"run": {"name": "bad", "output_dir": str(tmp_path)},
           "generate": {"num_rows": 2, "teachers": [{"name": "remote", "base_url": "http://127.0.0.1:9/v1", "model": "m"}]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, str(repo_root / "jobs" / "generate.py"), "--config", str(tmp_path / "c.yaml")],
                          capture_output=True, text=True, timeout=120, env={"RAY_ADDRESS": "", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "teacher 'remote' at http://127.0.0.1:9/v1: endpoint unreachable" in proc.stderr
    assert "ray" not in proc.stderr.lower()  # no cluster was started
    assert not list((tmp_path / "bad" / "data").glob("*.parquet"))


def test_injected_faults_still_give_every_row_once(llama, ray_cluster, tmp_path):
    from embedforge.config import load_config
    from embedforge.generate.runner import generate_data

    with FaultProxy(llama.base_url.removesuffix("/v1"), fault_rate=0.4, seed=1, hang_s=21, max_hangs=1) as proxy:
        cfg = {
            "run": {"name": "faults", "output_dir": str(tmp_path), "seed": 0},
            "generate": {
                "num_rows": 3, "groups": {"sts": 1, "bitext": 1},
                "teachers": [{"name": "flaky", "base_url": proxy.base_url, "model": "smollm2-135m",
                              "response_format": "json_object_schema", "max_concurrency": 2, "max_retries": 8,
                              "timeout_s": 20}],
                "language_weights": {"English": 100}, "max_tokens": 48, "min_words_long": 1,
                "shard_rows": 2, "progress": False, "reject_min_attempts": 100,
                "contamination": {"against_evaluation": True},
            },
            "evaluate": {"local_tasks": [{"kind": "sts", "name": "STSBenchmark", "path": str(_sts_task(tmp_path))}]},
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        result = generate_data(load_config(str(tmp_path / "c.yaml"))).synthetic
        faults = dict(proxy.counts)
    assert faults.get("429", 0) + faults.get("500", 0) >= 2, faults
    assert result.complete and result.per_group == split_counts(3, {"sts": 1, "bitext": 1})
    table = pq.read_table(tmp_path / "faults" / "data")
    assert table.num_rows == 3 and len(set(table.column("id").to_pylist())) == 3
    assert len(set(table.column("query").to_pylist())) == 3
    for row in table.to_pylist():
        t = load_template(row["group"])
        assert row["query"] and row["positive"] and row["negatives"] and row["teacher"] == "flaky"
        validate_example(json.dumps({t.query: row["query"], t.positive: row["positive"], t.negatives[0]: row["negatives"][0]}), t)
    # the client's own retries absorbed the faults: no attempt ended as a request error
    assert "request_error" not in result.rejects
    assert language_weights({"English": 100})  # (config language override used above is valid)
    # the evaluation task went into the run's contamination index (its rows were checked against it)
    assert list(result.contamination["sources"].values()) == [4] and result.contamination["texts"] == 4


def _sts_task(tmp_path):
    folder = tmp_path / "sts-task"
    if not folder.exists():
        folder.mkdir()
        (folder / "test.tsv").write_text("sentence1\tsentence2\tscore\n"
                                         "A woman slices a tomato.\tA woman is cutting a tomato.\t4.8\n"
                                         "Two dogs play in the snow.\tA man reads a newspaper on a bench.\t0.2\n")
    return folder


def test_the_contamination_stage_rejects_kept_rows_that_overlap_an_evaluation_task(ray_cluster, tmp_path):
    """The driver builds the index from what mteb loads for the run's evaluation tasks, puts it in the
    object store once, and the Ray Data filter actor rejects overlapping rows by name."""
    import ray

    from embedforge.config import load_config
    from embedforge.generate.pipeline import _contamination
    from embedforge.generate.runner import _contamination_index

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "run": {"name": "contam", "output_dir": str(tmp_path), "seed": 0},
        "generate": {"contamination": {"against_evaluation": True, "ngram": 5}},
        "evaluate": {"local_tasks": [{"kind": "sts", "name": "STSBenchmark", "path": str(_sts_task(tmp_path))}]},
    }))
    ref, summary = _contamination_index(load_config(str(tmp_path / "c.yaml")), tmp_path / "cache")
    assert summary["texts"] == 4 and isinstance(ref, ray.ObjectRef)

    def outcome(i, query, positive, status="kept", kind="example"):
        return {"id": f"r{i}", "kind": kind, "status": status, "reason": "", "detail": "",
                "payload": json.dumps({"query": query, "positive": positive, "negatives": []})}

    rows = [outcome(0, "a woman slices a TOMATO", "unrelated"),
            outcome(1, "what is it", "yesterday two dogs play in the snow for hours"),
            outcome(2, "a clean query", "a clean passage"),
            outcome(3, "A woman slices a tomato.", "x", status="rejected")]
    out = {r["id"]: r for r in _contamination(ray.data.from_items(rows), 2, ref).take_all()}
    assert (out["r0"]["status"], out["r0"]["reason"], out["r0"]["detail"]) == ("rejected", "contaminated", "query exact")
    assert (out["r1"]["status"], out["r1"]["detail"]) == ("rejected", "positive ngram")
    assert out["r2"]["status"] == "kept" and out["r3"]["reason"] == ""  # already rejected rows are left alone


def test_a_full_group_costs_no_more_teacher_calls(llama, ray_cluster):
    """Once the driver marks a group full, the teacher callers skip its remaining requests: no call,
    no tokens (the oversampled surplus a paid teacher was billed for)."""
    import ray

    from embedforge.generate.pipeline import TeacherCaller, _columns
    from embedforge.generate.teachers import quotas_actor

    teacher = TeacherConfig(name="local", base_url=llama.base_url, model="smollm2-135m",
                            response_format="json_object_schema", max_concurrency=2)
    run_key = "quota-test"
    quotas = quotas_actor(run_key)
    ray.get(quotas.reset.remote(["sts"]))
    bitext = example_request(load_template("bitext"), "bitext-0000000", 0, [], 0, {"English": 1.0}, 1)
    rows = [{**_sts_request(i), "teacher": "local", "max_tokens": 48} for i in range(3)]
    rows.append({**bitext, "teacher": "local", "max_tokens": 48})
    caller = TeacherCaller([teacher.model_dump()], run_key, {"local": 2}, min_words_long=1)
    out = asyncio.run(caller(_columns(rows)))
    status = dict(zip(out["id"], out["status"], strict=True))
    assert [status[r["id"]] for r in rows[:3]] == ["skipped"] * 3
    assert status["bitext-0000000"] in ("kept", "rejected")  # sent: the model answered
    tokens = dict(zip(out["id"], out["completion_tokens"], strict=True))
    assert all(tokens[r["id"]] == 0 for r in rows[:3]) and tokens["bitext-0000000"] > 0
    ray.kill(quotas)
