"""The endpoint without Ray: protocol rules, batching maths, auth, and the FastAPI app over a tiny encoder."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedforge.config import ConfigError, load_config
from embedforge.encoder import Encoder
from embedforge.config import config_from_args
from embedforge.serving.app import deployment_options
from embedforge.serving.auth import bearer_token, digest, key_is_valid, load_key_digests
from embedforge.serving.batching import forward_groups, padded_tokens, split_for_budget
from embedforge.config.serve import ServeConfig
from embedforge.serving.protocol import (
    APIError,
    check_dimensions,
    decode_base64_vector,
    embeddings_response,
    embeddings_response_json,
    encode_vector,
    error_body,
    parse_input,
    truncate_dimensions,
)
from embedforge.serving.service import EmbeddingService, create_app, encode_chunks

MODEL = "tiny"
KEY = "sk-test-key"


def assert_openai_error(resp, status: int, param=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param
    return err


# -- protocol ---------------------------------------------------------------------------------------
def test_parse_input_kinds():
    assert parse_input("a b", 10).texts == ["a b"]
    assert parse_input(["a", "b"], 10).texts == ["a", "b"]
    assert parse_input([1, 2, 3], 10).token_arrays == [[1, 2, 3]]
    assert parse_input([[1, 2], [3]], 10).token_arrays == [[1, 2], [3]]


@pytest.mark.parametrize("value,code", [
    ("", "empty_input"), ([], "empty_input"), (["a", ""], "empty_input"), ([[1], []], "empty_input"),
    (["a", 1], "invalid_type"), ([[1], "a"], "invalid_type"), (["x"] * 4, "too_many_inputs"),
])
def test_parse_input_rejects(value, code):
    with pytest.raises(APIError) as exc:
        parse_input(value, 3)
    assert exc.value.status == 400 and exc.value.code == code and exc.value.param == "input"


def test_dimensions_truncate_then_renormalise():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 8)).astype(np.float32)
    cut = truncate_dimensions(v, 5)
    assert cut.shape == (3, 5)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cut, v[:, :5] / np.linalg.norm(v[:, :5], axis=1, keepdims=True), rtol=1e-6)
    assert truncate_dimensions(v, None) is v
    check_dimensions(8, 8)
    for bad in (0, 9, -1):
        with pytest.raises(APIError) as exc:
            check_dimensions(bad, 8)
        assert exc.value.param == "dimensions" and "between 1 and 8" in exc.value.message


def test_base64_is_what_the_openai_client_decodes():
    v = np.array([0.1, -2.5, 3e-8, 1.0], dtype=np.float32)
    b64 = encode_vector(v, "base64")
    # The official client decodes with np.frombuffer(base64.b64decode(x), dtype="float32").
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(b64), dtype="float32"), v)
    np.testing.assert_array_equal(decode_base64_vector(b64), v)
    assert encode_vector(v, "float") == pytest.approx(v.tolist())


def test_response_and_error_shapes():
    r = embeddings_response(np.eye(2, dtype=np.float32), "float", "m", 7)
    assert r["object"] == "list" and r["model"] == "m"
    assert r["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["index"] for d in r["data"]] == [0, 1] and r["data"][1]["embedding"] == [0.0, 1.0]
    assert error_body("m", param="input") == {"error": {"message": "m", "type": "invalid_request_error",
                                                        "param": "input", "code": None}}


@pytest.mark.parametrize("fast", [True, False])
def test_response_json_round_trips_float32_exactly(fast, monkeypatch):
    import json

    from embedforge.serving import protocol

    if not fast:
        monkeypatch.setattr(protocol, "_orjson", None)  # the stdlib fallback
    v = np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32)[:, ::2]  # not C-contiguous
    for fmt in ("float", "base64"):
        body = json.loads(embeddings_response_json(v, fmt, "m", 9))
        assert body == {**embeddings_response(v, fmt, "m", 9), "data": body["data"]}
        got = [decode_base64_vector(d["embedding"]) if fmt == "base64" else np.array(d["embedding"], dtype=np.float32)
               for d in body["data"]]
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        np.testing.assert_array_equal(np.stack(got), v)  # bit-exact float32 after parsing


# -- batching maths -----------------------------------------------------------------------------------
def test_padded_tokens_is_rows_times_longest():
    assert padded_tokens([[[1, 2, 3]], [[1], [1, 2]]]) == 3 * 3
    assert padded_tokens([]) == 0


@given(st.lists(st.integers(1, 50), min_size=1, max_size=60), st.integers(50, 400))
def test_split_for_budget_covers_everything_within_budget(lengths, budget):
    seqs = [[0] * n for n in lengths]
    groups = split_for_budget(seqs, budget)
    assert sorted(i for g in groups for i in g) == list(range(len(seqs)))
    for g in groups:
        assert padded_tokens([[seqs[i] for i in g]]) <= budget


def forward_cost(groups, lengths, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=80), st.integers(40, 600), st.integers(0, 300))
def test_forward_groups_partition_within_budget_and_beat_simple_cuts(lengths, budget, overhead):
    groups = forward_groups(lengths, budget, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(len(g) * max(lengths[i] for i in g) <= budget for g in groups)
    # No worse than one pass over everything, when the budget allows that (as in a replica, where
    # @serve.batch already keeps the whole batch within the budget) ...
    if len(lengths) * max(lengths) <= budget:
        assert forward_cost(groups, lengths, overhead) <= forward_cost([list(range(len(lengths)))], lengths, overhead)
    # ... nor than one pass per distinct length (cut to the budget).
    per_length = []
    for n in set(lengths):
        rows = [i for i in range(len(lengths)) if lengths[i] == n]
        per_length += [rows[s:s + budget // n] for s in range(0, len(rows), budget // n)]
    assert forward_cost(groups, lengths, overhead) <= forward_cost(per_length, lengths, overhead)


@given(st.lists(st.integers(1, 30), min_size=1, max_size=7), st.integers(0, 100))
def test_forward_groups_is_optimal_over_contiguous_cuts(lengths, overhead):
    """Exhaustive check: every way to cut the length-sorted rows into passes costs at least as much."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    best = min(
        forward_cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)), strict=True)], lengths, overhead)
        for mask in range(2 ** (len(order) - 1))
        for cuts in [tuple(k + 1 for k in range(len(order) - 1) if mask >> k & 1)]
    )
    assert forward_cost(forward_groups(lengths, 10_000, overhead), lengths, overhead) == best


def test_forward_groups_extremes():
    lengths = [9, 3, 9, 5, 3, 3]
    assert forward_groups(lengths, 1000, 0) == [[0, 2], [3], [1, 4, 5]]  # a pass per length: no padding
    assert forward_groups(lengths, 1000, 10_000) == [[0, 2, 3, 1, 4, 5]]  # one pass
    assert forward_groups(lengths, 18, 10_000) == [[0, 2], [3], [1, 4, 5]]  # the budget still holds
    assert forward_groups([], 10, 0) == []
    with pytest.raises(ValueError, match="over the batch budget of 4"):
        forward_groups([5], 4, 0)


def test_encode_chunks_keeps_rows_with_their_requests(encoder):
    chunks = [[[5, 6, 7, 2], [9, 2]], [[11, 12, 13, 14, 15, 16, 2]], [[3, 2], [4, 4, 4, 2], [8, 8, 2]]]
    flat = [seq for c in chunks for seq in c]
    expected = np.stack([encoder.encode_ids([seq])[0] for seq in flat])
    for overhead in (0, 16, 10_000):
        got = encode_chunks(encoder, chunks, 64, overhead)
        assert [len(g) for g in got] == [2, 1, 3]
        np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)


def test_split_for_budget_refuses_a_sequence_over_budget():
    with pytest.raises(ValueError, match="over the batch budget of 4"):
        split_for_budget([[0] * 5], 4)


# -- auth ---------------------------------------------------------------------------------------------
def test_keys_from_env_and_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# ops keys\nkey-b\n\nkey-c\n")
    digests = load_key_digests("MY_KEYS", str(f), environ={"MY_KEYS": "key-a, key-b"})
    assert digests == sorted({digest(k) for k in ("key-a", "key-b", "key-c")})
    assert all("key-" not in d for d in digests)
    assert key_is_valid("key-c", digests) and not key_is_valid("key-d", digests) and not key_is_valid(None, digests)
    assert load_key_digests("MY_KEYS", None, environ={}) == []
    with pytest.raises(FileNotFoundError, match="api_key_file"):
        load_key_digests(None, str(tmp_path / "missing"))
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Basic abc") is None and bearer_token(None) is None


# -- config -------------------------------------------------------------------------------------------
def test_serve_config_validation():
    with pytest.raises(ValueError, match="min_replicas"):
        ServeConfig(autoscaling={"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ValueError, match="route_prefix"):
        ServeConfig(route_prefix="v1")
    with pytest.raises(ConfigError, match="serve.max_batch_tokens"):
        config_from_args({"model": {"max_length": 512}, "serve": {"max_batch_tokens": 100}})
    with pytest.raises(ConfigError, match="unknown key 'serve.api_key'"):
        config_from_args({"serve": {"api_key": "secret"}})


def test_deployment_options_carry_replica_env():
    cfg = config_from_args({"overrides": ["serve.ray_actor_options.env={OMP_WAIT_POLICY: PASSIVE}",
                                           "serve.ray_actor_options.num_cpus=2"]})
    opts = deployment_options(cfg.serve)
    assert opts["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0,
                                         "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}}
    no_env = deployment_options(config_from_args({"overrides": ["serve.ray_actor_options.env={}"]}).serve)
    assert "runtime_env" not in no_env["ray_actor_options"]
    with pytest.raises(ConfigError, match="serve.ray_actor_options.env"):
        config_from_args({"overrides": ["serve.ray_actor_options.env=[1, 2]"]})


def test_shipped_configs_have_serve_sections(repo_root):
    for name in ("tiny.yaml", "paper.yaml"):
        cfg = config_from_args({"config": str(repo_root / "configs" / name)})
        assert cfg.serve.max_batch_tokens >= cfg.model.max_length


# -- the FastAPI app over a tiny in-process encoder ----------------------------------------------------
@pytest.fixture
def encoder(tiny_llama, tiny_tokenizer):
    return Encoder(tiny_llama, tiny_tokenizer, max_length=128, batch_tokens=256)


def make_client(encoder, keys=(), **serve_overrides):
    cfg = ServeConfig(max_inputs=16, max_batch_tokens=512, **serve_overrides)
    service = EmbeddingService(encoder, MODEL, cfg, key_digests=[digest(k) for k in keys])
    return TestClient(create_app(service), raise_server_exceptions=False), service


@pytest.fixture
def client(encoder):
    return make_client(encoder)[0]


def embed(client, **body):
    body.setdefault("model", MODEL)
    return client.post("/v1/embeddings", json=body)


def vectors(resp):
    out = []
    for d in resp.json()["data"]:
        e = d["embedding"]
        out.append(decode_base64_vector(e) if isinstance(e, str) else np.array(e, dtype=np.float32))
    return np.stack(out)


TEXTS = ["a cat sits on the mat", "stocks fell", "hi", "the quick brown fox jumps over the lazy dog"]


def test_embeddings_equal_offline_encode_float_and_base64(client, encoder):
    offline = encoder.encode(TEXTS)
    r = embed(client, input=TEXTS)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [d["object"] for d in body["data"]] == ["embedding"] * 4
    np.testing.assert_allclose(vectors(r), offline, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == sum(encoder.count_tokens(TEXTS)) == body["usage"]["total_tokens"]
    r64 = embed(client, input=TEXTS, encoding_format="base64")
    assert isinstance(r64.json()["data"][0]["embedding"], str)
    np.testing.assert_allclose(vectors(r64), offline, atol=1e-5)


def test_instruction_and_task(client, encoder):
    from embedforge.instructions import instruction_for

    r = embed(client, input=TEXTS[:2], instruction="Retrieve similar sentences")
    np.testing.assert_allclose(vectors(r), encoder.encode(TEXTS[:2], "Retrieve similar sentences"), atol=1e-5)
    assert r.json()["usage"]["prompt_tokens"] == sum(encoder.count_tokens(TEXTS[:2], "Retrieve similar sentences"))
    r = embed(client, input=TEXTS[:2], task="SciFact")
    np.testing.assert_allclose(vectors(r), encoder.encode(TEXTS[:2], instruction_for("SciFact")), atol=1e-5)
    assert not np.allclose(vectors(r), encoder.encode(TEXTS[:2]), atol=1e-3)
    assert_openai_error(embed(client, input="x", task="NoSuchTask"), 400, "task")
    assert_openai_error(embed(client, input="x", task="SciFact", instruction="y"), 400, "task")
    assert_openai_error(embed(client, input=[1, 2], instruction="y"), 400, "instruction")


def test_model_trained_without_instructions_refuses_them(encoder):
    cfg = ServeConfig(max_inputs=16, max_batch_tokens=512)
    client = TestClient(create_app(EmbeddingService(encoder, MODEL, cfg, instructions=False)),
                        raise_server_exceptions=False)
    err = assert_openai_error(embed(client, input="x", instruction="Retrieve similar sentences"), 400, "instruction")
    assert "model.instructions" in err["message"] and err["code"] == "instructions_disabled"
    assert_openai_error(embed(client, input="x", task="SciFact"), 400, "task")
    r = embed(client, input=TEXTS[:2])
    np.testing.assert_allclose(vectors(r), encoder.encode(TEXTS[:2]), atol=1e-5)


def test_token_arrays_equal_text(client, encoder):
    ids = [encoder.tokenizer(t)["input_ids"] for t in TEXTS[:2]]
    r = embed(client, input=ids)
    np.testing.assert_allclose(vectors(r), encoder.encode(TEXTS[:2]), atol=1e-5)
    single = embed(client, input=ids[0])
    np.testing.assert_allclose(vectors(single)[0], encoder.encode(TEXTS[:1])[0], atol=1e-5)
    assert_openai_error(embed(client, input=[5, 10 ** 6]), 400, "input")
    assert_openai_error(embed(client, input=[[-1]]), 400, "input")


def test_dimensions(client, encoder):
    r = embed(client, input=TEXTS[:2], dimensions=8)
    v = vectors(r)
    assert v.shape == (2, 8)
    full = encoder.encode(TEXTS[:2])
    np.testing.assert_allclose(v, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), atol=1e-5)
    err = assert_openai_error(embed(client, input="x", dimensions=encoder.dim + 1), 400, "dimensions")
    assert str(encoder.dim) in err["message"]
    assert_openai_error(embed(client, input="x", dimensions=0), 400, "dimensions")


@pytest.mark.parametrize("body,param", [
    ({"input": ""}, "input"), ({"input": []}, "input"), ({"input": ["x"] * 17}, "input"),
    ({"input": {"a": 1}}, "input"), ({"input": 3.5}, "input"), ({"input": [1.5]}, "input"),
    ({"input": [True]}, "input"), ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "dimensions": "8"}, "dimensions"), ({"input": "x", "model": 3}, "model"),
    ({"input": "x", "bogus": 1}, "bogus"), ({"model": MODEL}, "input"),
])
def test_bad_requests_are_400_in_openai_shape(client, body, param):
    body = {"model": MODEL, **body}
    assert_openai_error(client.post("/v1/embeddings", json=body), 400, param)


def test_non_json_and_unknown_routes(client):
    assert_openai_error(client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_openai_error(client.post("/v1/embeddings", json=[1, 2]), 400)
    nan_body = b'{"model": "tiny", "input": NaN, "dimensions": Infinity}'
    assert_openai_error(client.post("/v1/embeddings", content=nan_body, headers={"content-type": "application/json"}), 400)
    assert_openai_error(client.get("/v1/nothing"), 404)
    assert_openai_error(client.get("/v1/embeddings"), 405)


def test_wrong_model_is_404(client):
    err = assert_openai_error(embed(client, input="x", model="gpt-4"), 404, "model")
    assert err["code"] == "model_not_found"


def test_over_long_input_is_400_naming_the_limit_unless_truncating(encoder):
    client, _ = make_client(encoder)
    long_text = "word " * 40
    err = assert_openai_error(embed(client, input=["ok", long_text]), 400, "input")
    assert "input[1]" in err["message"] and "at most 127 tokens" in err["message"]
    assert err["code"] == "context_length_exceeded"
    assert_openai_error(embed(client, input=[[5] * 128]), 400, "input")
    tclient, _ = make_client(encoder, truncate=True)
    r = embed(tclient, input=["ok", long_text])
    assert r.status_code == 200
    np.testing.assert_allclose(vectors(r), encoder.encode(["ok", long_text]), atol=1e-5)
    assert r.json()["usage"]["prompt_tokens"] == sum(encoder.count_tokens(["ok", long_text]))
    r = embed(tclient, input=[[5] * 150])
    assert r.status_code == 200


def test_many_inputs_split_into_chunks_keep_order(encoder):
    client, _ = make_client(encoder)
    texts = [f"sentence number {i} " + "x" * (i % 13) for i in range(16)]
    r = embed(client, input=texts)
    np.testing.assert_allclose(vectors(r), encoder.encode(texts), atol=1e-5)


def test_auth(encoder):
    client, _ = make_client(encoder, keys=[KEY, "other"])
    err = assert_openai_error(embed(client, input="x"), 401)
    assert err["code"] == "invalid_api_key" and KEY not in err["message"]
    assert_openai_error(client.post("/v1/embeddings", json={"model": MODEL, "input": "x"},
                                    headers={"Authorization": "Bearer wrong"}), 401)
    assert_openai_error(client.get("/v1/models"), 401)
    ok = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200  # health stays open for load balancers


def test_models_and_health(client, encoder):
    m = client.get("/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["id"] == MODEL and m["data"][0]["object"] == "model"
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"


def test_health_is_503_when_the_model_cannot_encode(encoder):
    client, service = make_client(encoder)

    def broken(*args, **kwargs):
        raise RuntimeError("weights gone")

    service.encoder.encode = broken
    assert_openai_error(client.get("/health"), 503)


def test_counters(encoder):
    client, service = make_client(encoder)
    embed(client, input=TEXTS)
    embed(client, input="")
    snap = service.metrics.snapshot()
    assert snap["requests"] == {"200": 1, "400": 1}
    assert snap["inputs"] == 4 and snap["tokens"] == sum(encoder.count_tokens(TEXTS))


def test_openapi_schema_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/models", "/health"} <= set(paths)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "input": JSON | st.text(max_size=80) | st.lists(st.text(max_size=40), max_size=20)
        | st.lists(st.integers(-5, 200), max_size=40) | st.lists(st.lists(st.integers(-5, 200), max_size=40), max_size=5),
        "model": st.sampled_from([MODEL, "other"]) | JSON,
        "encoding_format": st.sampled_from(["float", "base64"]) | JSON,
        "dimensions": st.integers(-3, 100) | JSON,
        "user": st.text(max_size=10) | JSON,
        "instruction": st.text(max_size=20) | JSON,
        "task": st.sampled_from(["SciFact", "STSBenchmark", "Banking77Classification", "nope"]) | JSON,
    },
) | JSON


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_fuzz_never_5xx(client, body):
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code < 500, (body, r.text)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_sentence_transformers_dir_matches_sentence_transformers(minilm_dir):
    from sentence_transformers import SentenceTransformer

    from embedforge.config import ModelConfig
    from embedforge.embedders import load_embedder

    enc = load_embedder(ModelConfig(backbone=minilm_dir))
    assert enc.pooling == "mean" and enc.normalize
    ref = SentenceTransformer(minilm_dir, device="cpu").encode(TEXTS + ["word " * 400], normalize_embeddings=False)
    ours = enc.encode(TEXTS + ["word " * 400])
    cos = (ours * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999, cos


def test_tiny_config_loads_with_serve_section(repo_root):
    cfg = load_config(repo_root / "configs" / "tiny.yaml")
    assert cfg.serve.max_batch_tokens >= cfg.model.max_length
