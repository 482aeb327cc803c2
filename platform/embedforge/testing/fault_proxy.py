"""An HTTP proxy on 127.0.0.1 that injects 429 / 500 / hanging responses in front of a real endpoint.

For fault-injection tests and drills: point a teacher's base_url at the proxy and the run must still
end with every requested row. Chat completions fail with probability ``fault_rate`` (seeded); every
other request is forwarded unchanged. ``api_key`` makes the proxy demand that bearer key (401 else).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter


class FaultProxy:
    def __init__(self, upstream: str, fault_rate: float = 0.3, seed: int = 0, hang_s: float = 5.0,
                 max_hangs: int = 1, api_key: str | None = None, kinds=("429", "500", "hang")):
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:8000 (without /v1)
        self.fault_rate, self.hang_s, self.max_hangs, self.api_key = fault_rate, hang_s, max_hangs, api_key
        self.kinds = kinds
        self.rng = random.Random(seed)
        self.counts: Counter = Counter()
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _fault(self) -> str | None:
        if self.rng.random() >= self.fault_rate:
            return None
        kinds = [k for k in self.kinds if k != "hang" or self.counts["hang"] < self.max_hangs]
        return self.rng.choice(kinds) if kinds else None

    async def _handle(self, request):
        from aiohttp import ClientSession, ClientTimeout, web

        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            self.counts["401"] += 1
            return web.json_response({"error": {"message": "invalid api key", "type": "invalid_request_error"}}, status=401)
        body = await request.read()
        if request.path.endswith("/chat/completions"):
            fault = self._fault()
            if fault:
                self.counts[fault] += 1
            if fault == "429":
                return web.json_response({"error": {"message": "rate limited (injected)"}}, status=429,
                                         headers={"retry-after-ms": "100"})
            if fault == "500":
                return web.json_response({"error": {"message": "server error (injected)"}}, status=500)
            if fault == "hang":
                await asyncio.sleep(self.hang_s)  # longer than the client's timeout: it gives up and retries
                return web.json_response({"error": {"message": "gateway timeout (injected)"}}, status=504)
            self.counts["forwarded"] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
        async with ClientSession(timeout=ClientTimeout(total=900)) as session:
            async with session.request(request.method, self.upstream + request.path_qs, data=body, headers=headers) as resp:
                payload = await resp.read()
                return web.Response(body=payload, status=resp.status, content_type=resp.content_type)

    def start(self) -> FaultProxy:
        from aiohttp import web

        ready = threading.Event()

        def serve():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # A stop cancels the requests still in flight (an injected hang lasts longer than the run
            # that caused it needs it): aiohttp would otherwise wait up to 60 s for them.
            self._runner = web.AppRunner(app, shutdown_timeout=1.0)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True, name="fault-proxy")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
