"""The ASGI layer in front of the FastAPI app: what a stranger can make a replica do is decided here,
before the app reads a byte of the body.

1. The API key, from the headers alone: a request without a valid key is answered 401 at once, its
   body never read (a slow or endless unauthenticated body costs nothing).
2. The body's size: a ``Content-Length`` above ``serve.max_body_bytes`` is 413 at once; a body without
   one is counted as it arrives and cut off at the limit.
3. The body's time: it must arrive within ``serve.request_timeout_s`` (408 otherwise), so a client that
   trickles its body cannot hold one of the replica's ``max_ongoing_requests`` slots for long.

The body is then handed to the app from memory. ``/health`` is open (orchestrators poll it without a
key) and does no model work. Errors are JSON in OpenAI's shape, counted like the app's own.
"""

from __future__ import annotations

import asyncio
import time

from starlette.responses import JSONResponse

from embedforge.serving.auth import bearer_token, key_is_valid
from embedforge.serving.protocol import APIError

OPEN_PATHS = ("/health",)
BODY_METHODS = ("POST", "PUT", "PATCH")


class _BodyTooLarge(Exception):
    pass


async def read_body(receive, max_bytes: int, timeout_s: float) -> bytes:
    """The whole request body, or ``_BodyTooLarge`` / ``asyncio.TimeoutError`` (a deadline for all of it)."""
    deadline = time.monotonic() + timeout_s
    chunks, size = [], 0
    while True:
        message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the disconnect, as the server reports it

    return replayed


class RequestGuard:
    def __init__(self, app, service):
        self.app = app
        self.service = service

    async def _refuse(self, scope, receive, send, err: APIError) -> None:
        if scope.get("path", "").endswith("/v1/embeddings"):
            self.service.metrics.record_request(err.status)
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
        if err.status in (408, 413):
            headers["Connection"] = "close"  # the rest of the body is not read: the connection cannot be reused
        await JSONResponse(err.body(), status_code=err.status, headers=headers)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").endswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        service, cfg = self.service, self.service.cfg
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if service.auth_required:
            token = bearer_token(headers.get("authorization"))
            if not key_is_valid(token, service.key_digests):
                msg = "missing API key: send 'Authorization: Bearer <key>'" if token is None else "invalid API key"
                return await self._refuse(scope, receive, send, APIError(401, msg, None, "invalid_api_key"))
        if scope.get("method") in BODY_METHODS:
            too_large = APIError(413, f"the request body exceeds {cfg.max_body_bytes} bytes (serve.max_body_bytes); "
                                      "send fewer or shorter inputs per request", None, "request_too_large")
            length = headers.get("content-length")
            if length is not None:
                if not length.strip().isdigit():
                    return await self._refuse(scope, receive, send, APIError(
                        400, "the Content-Length header is not a number", None, "invalid_content_length"))
                if int(length) > cfg.max_body_bytes:
                    return await self._refuse(scope, receive, send, too_large)
            try:
                body = await read_body(receive, cfg.max_body_bytes, cfg.request_timeout_s)
            except _BodyTooLarge:
                return await self._refuse(scope, receive, send, too_large)
            except (asyncio.TimeoutError, TimeoutError):
                return await self._refuse(scope, receive, send, APIError(
                    408, f"the request body did not arrive within {cfg.request_timeout_s} s "
                         "(serve.request_timeout_s)", None, "request_timeout"))
            except ConnectionError:
                return None  # the client left; nothing to answer
            receive = _replay(body, receive)
        await self.app(scope, receive, send)
