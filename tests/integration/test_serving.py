"""The endpoint on real Ray Serve (the session's token-auth cluster), driven by the official openai client."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from embedforge.ray_utils import free_port
from embedforge.serving.protocol import decode_base64_vector

APP = "ef-serve-test"
MODEL = "minilm"
KEY = "sk-ef-integration-" + os.urandom(8).hex()
KEY_ENV = "EF_SERVE_TEST_KEYS"
TEXTS = ["A girl is styling her hair.", "A group of men play soccer on the beach.",
         "Stock markets fell sharply today.", "short", "The quick brown fox jumps over the lazy dog " * 3]
INSTRUCTION = "Retrieve semantically similar text"


def _http(method: str, url: str, body: dict | None = None, key: str | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def endpoint(ray_cluster, minilm_dir):
    from ray import serve

    from embedforge.config import config_from_args
    from embedforge.serving.app import build_app

    port = free_port()
    os.environ[KEY_ENV] = KEY
    cfg = config_from_args({
        "model": {"backbone": minilm_dir, "max_length": 512},
        "serve": {"model_name": MODEL, "port": port, "api_key_env": KEY_ENV, "max_batch_tokens": 2048,
                  "batch_wait_timeout_s": 0.02, "health_check_period_s": 2, "torch_threads": 1,
                  "autoscaling": {"min_replicas": 2, "max_replicas": 2}, "ray_actor_options": {"num_cpus": 0.5}},
    })
    app = build_app(cfg)  # the builder reads the keys (as digests) where it runs
    os.environ.pop(KEY_ENV)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app, name=APP, route_prefix="/")
        yield {"base": f"http://127.0.0.1:{port}", "cfg": cfg}
    finally:
        t0 = time.time()
        serve.delete(APP)
        t1 = time.time()
        serve.shutdown()
        print(f"teardown: delete {t1 - t0:.1f} s, shutdown {time.time() - t1:.1f} s")


@pytest.fixture(scope="module")
def offline(endpoint):
    from embedforge.embedders import load_embedder

    return load_embedder(endpoint["cfg"].model)


@pytest.fixture(scope="module")
def client(endpoint):
    from openai import OpenAI

    return OpenAI(base_url=endpoint["base"] + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
def test_openai_client_matches_offline_encoder(client, offline, encoding_format, instruction):
    from openai import NOT_GIVEN

    extra = {"instruction": instruction} if instruction else None
    # Not given: the client asks for base64 itself and decodes it; asked explicitly, base64 comes back raw.
    resp = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format=encoding_format or NOT_GIVEN,
                                    extra_body=extra)
    if encoding_format == "base64":
        assert all(isinstance(d.embedding, str) for d in resp.data)
        served = np.stack([decode_base64_vector(d.embedding) for d in resp.data])
    else:
        served = np.array([d.embedding for d in resp.data], dtype=np.float32)
    reference = offline.encode(TEXTS, instruction)
    assert served.shape == reference.shape == (len(TEXTS), 384)
    assert _cosines(served, reference).min() >= 0.99999
    assert [d.index for d in resp.data] == list(range(len(TEXTS)))
    assert resp.model == MODEL
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == sum(offline.count_tokens(TEXTS, instruction))


def test_openai_client_defaults_get_renormalised_truncated_dimensions_and_the_model_list(client, offline):
    resp = client.embeddings.create(model=MODEL, input="A girl is styling her hair.", dimensions=64)
    v = np.array(resp.data[0].embedding)
    ref = offline.encode(["A girl is styling her hair."])[0, :64]
    assert v.shape == (64,) and abs(np.linalg.norm(v) - 1) < 1e-5
    assert _cosines(v[None], ref[None])[0] >= 0.99999
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_a_wrong_or_missing_key_is_401_and_bad_requests_get_openai_errors(endpoint, client):
    import openai

    bad = openai.OpenAI(base_url=endpoint["base"] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model=MODEL, input="x")
    url = endpoint["base"] + "/v1/embeddings"
    status, body = _http("POST", url, {"model": MODEL, "input": "x"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    cases = [({"model": MODEL, "input": []}, 400, "input"),
             ({"model": MODEL, "input": ["x"] * 2049}, 400, "input"),
             ({"model": MODEL, "input": "word " * 600}, 400, "input"),
             ({"model": MODEL, "input": [1.5]}, 400, "input"),
             ({"model": MODEL, "input": "x", "dimensions": 385}, 400, "dimensions"),
             ({"model": "gpt-x", "input": "x"}, 404, "model")]
    for req, want, param in cases:
        status, body = _http("POST", url, req, KEY)
        assert status == want, (req, body)
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["param"] == param
    status, body = _http("POST", url, {"model": MODEL, "input": "word " * 600}, KEY)
    assert "at most 256 tokens" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model=MODEL, input=[])
    assert exc.value.status_code == 400


def test_health_answers_ok_without_a_key(endpoint):
    status, body = _http("GET", endpoint["base"] + "/health")
    assert status == 200 and body["status"] == "ok"


def _replica_stats() -> list[dict]:
    from ray import serve

    handle = serve.get_app_handle(APP)
    # Several calls: the router spreads them over the replicas; dedupe by pid.
    seen = {}
    for _ in range(12):
        s = handle.stats.remote().result(timeout_s=30)
        seen[s["pid"]] = s
    return list(seen.values())


def test_concurrent_requests_share_token_budget_batches(endpoint):
    from embedforge.testing.loadgen import run_load

    payloads = [{"model": MODEL, "input": [f"{t} {i}" for t in TEXTS]} for i in range(8)]
    report = asyncio.run(run_load(endpoint["base"] + "/v1/embeddings", payloads, concurrency=8, max_requests=48,
                                  max_seconds=60, api_key=KEY))
    assert report.ok == 48 and report.errors == 0
    stats = _replica_stats()
    assert sum(s["batches"] for s in stats) > 0
    # Batched across requests: some batch held more inputs than one request carries...
    assert max(s["max_batch_inputs"] for s in stats) > len(TEXTS)
    # ...and none went over the token budget.
    assert all(0 < s["max_batch_padded_tokens"] <= s["max_batch_tokens"] == 2048 for s in stats if s["batches"])
    # Replicas report the intra-op threads they run with (serve.torch_threads, set to 1 above).
    assert {s["torch_threads"] for s in stats} == {1}


def test_fuzzed_bodies_never_5xx(endpoint):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    url = endpoint["base"] + "/v1/embeddings"
    leaf = st.none() | st.booleans() | st.integers(-(2 ** 40), 2 ** 40) | st.text(max_size=20)
    value = st.recursive(leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                         max_leaves=10)
    body = st.fixed_dictionaries({"model": st.sampled_from([MODEL, "x"])}, optional={
        "input": value | st.lists(st.integers(-3, 40000), max_size=20), "dimensions": value,
        "encoding_format": value | st.sampled_from(["float", "base64"]), "task": value, "instruction": value})

    @settings(max_examples=100, deadline=None, database=None)
    @given(body)
    def check(b):
        status, resp = _http("POST", url, b, KEY)
        assert status < 500, (b, resp)

    check()


def test_killed_replica_is_replaced_under_load(endpoint):
    """Kill one of two replicas mid-load: Serve replaces it; the errors during recovery are reported."""
    import ray
    from ray import serve

    from embedforge.testing.loadgen import run_load

    def replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::") and APP in a["name"]}

    before = replicas()
    assert len(before) == 2
    payloads = [{"model": MODEL, "input": TEXTS}]
    result = {}

    def load():
        result["report"] = asyncio.run(run_load(endpoint["base"] + "/v1/embeddings", payloads, concurrency=4,
                                                max_requests=100_000, max_seconds=25, api_key=KEY))

    t = threading.Thread(target=load)
    t.start()
    time.sleep(4)
    victim = sorted(before)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    killed_at = time.time()
    deadline = killed_at + 90
    while time.time() < deadline:
        now = replicas()
        status = serve.status().applications[APP].status
        if victim not in now and len(now) == 2 and status == "RUNNING":
            break
        time.sleep(1)
    recovered_s = time.time() - killed_at
    t.join()
    report = result["report"]
    print(f"\nreplica kill: replaced in {recovered_s:.1f} s; {report.ok} ok / {report.errors} errors during "
          f"{report.seconds:.1f} s of load ({report.errors_by_kind}); error times {report.error_times[:10]}")
    after = replicas()
    assert victim not in after and len(after) == 2, after
    assert report.ok > 0
    # After recovery every request succeeds.
    status, body = _http("POST", endpoint["base"] + "/v1/embeddings", {"model": MODEL, "input": TEXTS}, KEY)
    assert status == 200 and len(body["data"]) == len(TEXTS)
