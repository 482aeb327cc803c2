"""serving/guard.py: the key is checked from the headers before the body is read; bodies have a size and
a time limit. Driven as raw ASGI calls, so a body that never arrives can be simulated exactly."""

from __future__ import annotations

import asyncio
import json

import pytest

from embedforge.config.serve import ServeConfig
from embedforge.serving.auth import digest
from embedforge.serving.guard import RequestGuard
from embedforge.serving.metrics import CountingMetrics

KEY = "sk-guard"


class FakeService:
    def __init__(self, keys=(), **cfg):
        self.cfg = ServeConfig(**cfg)
        self.key_digests = [digest(k) for k in keys]
        self.metrics = CountingMetrics()

    @property
    def auth_required(self):
        return bool(self.key_digests)


async def echo_app(scope, receive, send):
    """Stands in for the FastAPI app: reads the whole body and answers its length."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps({"received": len(body)}).encode()})


def call(service, *, path="/v1/embeddings", method="POST", headers=(), chunks=(), stall=False, timeout=5.0):
    """Run one request through the guard; ``stall``: after ``chunks`` the body never continues."""
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    pending = list(chunks)
    reads = []

    async def receive():
        if pending:
            chunk = pending.pop(0)
            reads.append(len(chunk))
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or stall}
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    async def run():
        await asyncio.wait_for(RequestGuard(echo_app, service)(scope, receive, send), timeout)

    asyncio.run(run())
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), reads


def test_a_request_without_a_valid_key_is_401_before_any_body_is_read():
    service = FakeService(keys=[KEY])
    # A body that never finishes (the slow-body attack): answered at once, nothing read.
    status, body, reads = call(service, headers=[("Content-Length", "1000")], chunks=[b'{"model":"'], stall=True)
    assert status == 401 and body["error"]["code"] == "invalid_api_key" and reads == []
    status, _, reads = call(service, headers=[("Authorization", "Bearer wrong")], chunks=[b"{}"], stall=True)
    assert status == 401 and reads == []
    assert service.metrics.snapshot()["requests"] == {"401": 2}
    status, body, _ = call(service, headers=[("Authorization", f"Bearer {KEY}")], chunks=[b"{}"])
    assert status == 200 and body == {"received": 2}


def test_health_is_open_and_other_routes_need_the_key():
    service = FakeService(keys=[KEY])
    assert call(service, path="/health", method="GET")[0] == 200
    assert call(service, path="/v1/models", method="GET")[0] == 401
    assert call(service, path="/prefix/health", method="GET")[0] == 200  # under a Serve route prefix


def test_a_declared_oversized_body_is_413_without_reading_it():
    service = FakeService(keys=[KEY], max_body_bytes=4096)
    status, body, reads = call(service, headers=[("Authorization", f"Bearer {KEY}"), ("Content-Length", "5000")],
                               chunks=[b"x" * 100], stall=True)
    assert status == 413 and body["error"]["code"] == "request_too_large" and reads == []
    assert "serve.max_body_bytes" in body["error"]["message"]


def test_an_undeclared_body_is_cut_off_at_the_limit():
    service = FakeService(max_body_bytes=4096, allow_anonymous=True)
    status, body, reads = call(service, chunks=[b"x" * 3000, b"x" * 3000, b"x" * 3000])
    assert status == 413 and reads == [3000, 3000]  # stopped reading once over the limit
    status, body, _ = call(service, chunks=[b"x" * 2000, b"x" * 2000])
    assert status == 200 and body == {"received": 4000}


def test_a_body_that_does_not_arrive_in_time_is_408():
    service = FakeService(keys=[KEY], request_timeout_s=0.3)
    status, body, _ = call(service, headers=[("Authorization", f"Bearer {KEY}")], chunks=[b'{"mo'], stall=True)
    assert status == 408 and body["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("length", ["abc", "-1", "1e3"])
def test_a_content_length_that_is_not_a_count_is_400(length):
    service = FakeService(allow_anonymous=True)
    assert call(service, headers=[("Content-Length", length)], chunks=[b"{}"])[0] == 400
