"""serving/service.py: the FastAPI app over a tiny in-process encoder (no Ray), and encode_chunks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedforge.config.serve import ServeConfig
from embedforge.encoder import Encoder
from embedforge.serving.auth import digest
from embedforge.serving.protocol import decode_base64_vector
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


def test_encode_chunks_keeps_rows_with_their_requests(encoder):
    chunks = [[[5, 6, 7, 2], [9, 2]], [[11, 12, 13, 14, 15, 16, 2]], [[3, 2], [4, 4, 4, 2], [8, 8, 2]]]
    flat = [seq for c in chunks for seq in c]
    expected = np.stack([encoder.encode_ids([seq])[0] for seq in flat])
    for overhead in (0, 16, 10_000):
        got = encode_chunks(encoder, chunks, 64, overhead)
        assert [len(g) for g in got] == [2, 1, 3]
        np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)


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


def test_instruction_or_task_embeds_like_offline_encode_and_bad_combinations_are_400(client, encoder):
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


def test_dimensions_truncate_and_renormalise_and_out_of_range_is_400(client, encoder):
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


def test_non_json_bodies_are_400_and_unknown_routes_or_methods_404_or_405(client):
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


def test_embeddings_and_models_need_a_valid_key_but_health_does_not(encoder):
    client, _ = make_client(encoder, keys=[KEY, "other"])
    err = assert_openai_error(embed(client, input="x"), 401)
    assert err["code"] == "invalid_api_key" and KEY not in err["message"]
    assert_openai_error(client.post("/v1/embeddings", json={"model": MODEL, "input": "x"},
                                    headers={"Authorization": "Bearer wrong"}), 401)
    assert_openai_error(client.get("/v1/models"), 401)
    ok = client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200  # health stays open for load balancers


def test_models_lists_the_served_model_and_health_is_ok(client, encoder):
    m = client.get("/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["id"] == MODEL and m["data"][0]["object"] == "model"
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok"


def test_health_reports_the_last_periodic_check_and_readiness_encodes(encoder):
    import asyncio

    client, service = make_client(encoder)
    assert client.get("/v1/ready").json()["status"] == "ok"

    def broken(*args, **kwargs):
        raise RuntimeError("weights gone")

    service.encoder.encode = broken
    assert_openai_error(client.get("/v1/ready"), 503)  # readiness runs a real encode
    with pytest.raises(RuntimeError, match="weights gone"):
        asyncio.run(service.check_health())  # what Ray Serve calls every health_check_period_s
    err = assert_openai_error(client.get("/health"), 503)
    assert "weights gone" in err["message"]


def test_health_does_no_model_work_however_often_it_is_called(encoder):
    client, service = make_client(encoder, keys=[KEY])
    calls = []
    real = service.encoder.encode
    service.encoder.encode = lambda *a, **k: calls.append(1) or real(*a, **k)
    for _ in range(50):
        assert client.get("/health").status_code == 200
    assert calls == []


def _post_raw(client, text: str, key: str | None = None):
    """A JSON body with \\u escapes, as any client may send: lone surrogates included."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return client.post("/v1/embeddings", content=text.encode("ascii"), headers=headers)


@pytest.mark.parametrize("body", [
    '{"model": "tiny", "input": "a\\ud800b"}',
    '{"model": "tiny", "input": ["fine", "\\udfff"]}',
    '{"model": "tiny", "input": "fine", "instruction": "x\\ud83d"}',
    '{"model": "\\ud800", "input": "fine"}',
])
def test_a_lone_surrogate_anywhere_is_400_naming_the_field(client, body):
    err = assert_openai_error(_post_raw(client, body), 400)
    assert err["code"] == "invalid_text" and "surrogate" in err["message"]


@pytest.mark.parametrize("text", ["", " ", "\t\n  ", "\x00", " \x00 \x00"])
def test_whitespace_or_nul_only_input_is_as_empty_as_the_empty_string(client, text):
    err = assert_openai_error(embed(client, input=["fine", text]), 400, "input")
    assert err["code"] == "empty_input" and "input[1]" in err["message"]


def test_inputs_over_the_character_limit_are_refused_before_tokenising(encoder):
    client, service = make_client(encoder, max_input_chars=200)
    tokenized = []
    real = service.tokenizer.__call__
    service.tokenizer = type("Spy", (), {"__call__": lambda self, texts, **k: tokenized.append(texts) or real(texts, **k),
                                         "__getattr__": lambda self, name: getattr(encoder.tokenizer, name)})()
    err = assert_openai_error(embed(client, input=["short", "word " * 100]), 400, "input")
    assert err["code"] == "context_length_exceeded" and "serve.max_input_chars" in err["message"]
    assert tokenized == []
    cut, _ = make_client(encoder, max_input_chars=200, truncate=True)
    ok = embed(cut, input=["word " * 100])
    assert ok.status_code == 200
    np.testing.assert_allclose(vectors(ok), encoder.encode(["word " * 100]), atol=1e-5)


def test_metrics_count_requests_by_status_and_inputs_and_tokens_of_successes(encoder):
    client, service = make_client(encoder)
    embed(client, input=TEXTS)
    embed(client, input="")
    snap = service.metrics.snapshot()
    assert snap["requests"] == {"200": 1, "400": 1}
    assert snap["inputs"] == 4 and snap["tokens"] == sum(encoder.count_tokens(TEXTS))


def test_openapi_schema_lists_the_routes(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/v1/models", "/health"} <= set(paths)


# Any string JSON can carry: surrogates (Cs), controls, whitespace, letters.
ANY_TEXT = st.text(st.characters(categories=("Cs", "Cc", "Zs", "L", "N", "P")), max_size=30)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30) | ANY_TEXT,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
BODY = st.fixed_dictionaries(
    {},
    optional={
        "input": JSON | st.text(max_size=80) | ANY_TEXT | st.lists(st.text(max_size=40) | ANY_TEXT, max_size=20)
        | st.lists(st.integers(-5, 200), max_size=40) | st.lists(st.lists(st.integers(-5, 200), max_size=40), max_size=5),
        "model": st.sampled_from([MODEL, "other"]) | JSON,
        "encoding_format": st.sampled_from(["float", "base64"]) | JSON,
        "dimensions": st.integers(-3, 100) | JSON,
        "user": st.text(max_size=10) | JSON,
        "instruction": st.text(max_size=20) | ANY_TEXT | JSON,
        "task": st.sampled_from(["SciFact", "STSBenchmark", "Banking77Classification", "nope"]) | JSON,
    },
) | JSON


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=BODY)
def test_fuzzed_bodies_never_get_a_5xx_and_errors_keep_the_openai_shape(client, body):
    # json.dumps escapes non-ASCII as \\uXXXX, so lone surrogates travel as any client could send them.
    r = client.post("/v1/embeddings", content=json.dumps(body).encode("ascii"),
                    headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (body, r.text)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_every_forward_pass_runs_on_the_one_model_thread(encoder):
    """Batches and health checks alike run on ``model_thread``'s single thread (torch's thread count is
    per calling thread: a forward pass on any other thread would run at the environment's count)."""
    import asyncio
    import threading

    client, service = make_client(encoder)
    seen = []
    encode_ids, encode = service.encoder.encode_ids, service.encoder.encode
    service.encoder.encode_ids = lambda *a, **k: seen.append(threading.current_thread().name) or encode_ids(*a, **k)
    service.encoder.encode = lambda *a, **k: seen.append(threading.current_thread().name) or encode(*a, **k)
    for n in (1, 3, 16):
        assert embed(client, input=[f"text {i}" for i in range(n)]).status_code == 200
    asyncio.run(service.check_health())
    assert client.get("/v1/ready").status_code == 200
    assert len(seen) >= 5 and set(seen) == {"embedforge-model_0"}, seen


def test_the_model_thread_sets_its_own_torch_thread_count():
    import torch

    from embedforge.serving.service import model_thread

    before = torch.get_num_threads()
    pool = model_thread(3)
    try:
        assert pool.submit(torch.get_num_threads).result() == 3
        assert pool._max_workers == 1
    finally:
        pool.shutdown()
        torch.set_num_threads(before)
