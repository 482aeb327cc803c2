"""generate/pipeline.py: a teacher call's result parsed into a kept row or a rejection with its reason."""

from __future__ import annotations

import json

from embedforge.generate.pipeline import parse_outcome
from tests.unit.generate_samples import GOOD


def _teacher_result(text, group="sts", kind="example", error="", finish="stop"):
    return {"id": f"{group}-0000001", "group": group, "kind": kind, "teacher": "t", "language": "English",
            "task": "Retrieve semantically similar text.", "text": text, "prompt_tokens": 5, "completion_tokens": 7,
            "latency_s": 0.1, "error": error, "finish_reason": finish, "max_tokens": 64}


def test_parse_outcome_keeps_good_text_and_rejects_truncated_or_failed_calls():
    ok = parse_outcome(_teacher_result(json.dumps(GOOD["sts"])), 1, 3)
    assert ok["status"] == "kept" and json.loads(ok["payload"])["positive"] == GOOD["sts"]["S2"]
    cut = parse_outcome(_teacher_result('{"S1": "a man', finish="length"), 1, 3)
    assert (cut["status"], cut["reason"]) == ("rejected", "truncated")
    err = parse_outcome(_teacher_result("", error="APITimeoutError: timed out"), 1, 3)
    assert err["reason"] == "request_error" and "timed out" in err["detail"]
    bs = parse_outcome(_teacher_result('{"tasks": ["Retrieve news articles."]}', "short_long", "brainstorm"), 1, 3)
    assert bs["status"] == "kept" and json.loads(bs["payload"]) == ["Retrieve news articles."]
