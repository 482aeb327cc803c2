"""generate/teachers.py: the per-teacher rate limit and the structured-output request modes."""

from __future__ import annotations

import pytest

from embedforge.generate.taxonomy import BRAINSTORM_SCHEMA, load_template
from embedforge.generate.teachers import TokenBucket, response_format


def test_token_bucket_spaces_requests():
    b = TokenBucket(60, now=0.0)  # one a second, a minute's burst
    assert all(b.reserve(1, now=0.0) == 0 for _ in range(60))
    assert b.reserve(1, now=0.0) == pytest.approx(1.0)
    assert b.reserve(1, now=0.0) == pytest.approx(2.0)
    assert b.reserve(1, now=10.0) == 0  # refilled
    assert TokenBucket(None).reserve(10**9) == 0


def test_response_format_carries_the_schema_per_mode_or_nothing():
    schema = load_template("sts").json_schema()
    assert response_format("json_schema", schema)["json_schema"]["schema"] == schema
    llama = response_format("json_object_schema", schema)
    assert llama["type"] == "json_object" and llama["schema"]["properties"]["S1"]["minLength"] == 1
    assert response_format("none", schema) is None
    assert response_format("json_schema", BRAINSTORM_SCHEMA)["json_schema"]["schema"]["required"] == ["tasks"]
