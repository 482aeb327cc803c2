"""serving/protocol.py: request input parsing and checks, dimension truncation, response and error bodies."""

from __future__ import annotations

import base64

import numpy as np
import pytest

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


def test_parse_input_takes_a_string_strings_token_ids_or_lists_of_them():
    assert parse_input("a b", 10).texts == ["a b"]
    assert parse_input(["a", "b"], 10).texts == ["a", "b"]
    assert parse_input([1, 2, 3], 10).token_arrays == [[1, 2, 3]]
    assert parse_input([[1, 2], [3]], 10).token_arrays == [[1, 2], [3]]


@pytest.mark.parametrize("value,code", [
    ("", "empty_input"), ([], "empty_input"), (["a", ""], "empty_input"), ([[1], []], "empty_input"),
    (["a", 1], "invalid_type"), ([[1], "a"], "invalid_type"), (["x"] * 4, "too_many_inputs"),
])
def test_parse_input_refuses_empty_mixed_or_too_many_inputs_as_400_on_input(value, code):
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


def test_response_and_error_bodies_have_the_openai_shape():
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
