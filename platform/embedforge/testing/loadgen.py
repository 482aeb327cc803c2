"""A bounded, loopback-only async load generator for OpenAI-style ``/v1/embeddings`` endpoints.

Closed loop: ``concurrency`` workers each send a request, wait for it, send the next, until
``max_requests`` have been sent or ``max_seconds`` have passed. Only loopback hosts are accepted, so
the tool cannot be pointed at someone else's server. Used by ``benchmarks/loadgen.py``,
``benchmarks/bench_serve.py`` and the replica-recovery test.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

import numpy as np

from embedforge.formats import read_sts_file

MAX_REQUESTS = 100_000
MAX_SECONDS = 3600.0
MAX_CONCURRENCY = 256


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"load generation is limited to loopback hosts (127.0.0.1, ::1, localhost); got {host!r}")


@dataclass
class LoadReport:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    errors_by_kind: dict = field(default_factory=dict)
    inputs: int = 0
    tokens: int = 0
    seconds: float = 0.0
    requests_per_s: float = 0.0
    inputs_per_s: float = 0.0
    tokens_per_s: float = 0.0
    p50_s: float = 0.0
    p95_s: float = 0.0
    p99_s: float = 0.0
    # (seconds since start, kind) per failed request: shows when errors happened (e.g. during recovery).
    error_times: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(latencies: list[float], seconds: float, report: LoadReport) -> LoadReport:
    report.seconds = seconds
    if seconds > 0:
        report.requests_per_s = report.ok / seconds
        report.inputs_per_s = report.inputs / seconds
        report.tokens_per_s = report.tokens / seconds
    if latencies:
        report.p50_s, report.p95_s, report.p99_s = (float(x) for x in np.percentile(latencies, [50, 95, 99]))
    return report


async def run_load(url: str, payloads: list[dict], concurrency: int = 8, max_requests: int = 300,
                   max_seconds: float = 120.0, api_key: str | None = None, timeout_s: float = 60.0) -> LoadReport:
    """Send ``payloads`` round-robin to ``url`` (the full ``.../v1/embeddings`` URL) and measure."""
    import aiohttp

    check_loopback(url)
    if not payloads:
        raise ValueError("payloads must not be empty")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency}")
    max_requests = min(int(max_requests), MAX_REQUESTS)
    max_seconds = min(float(max_seconds), MAX_SECONDS)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    bodies = [json.dumps(p).encode() for p in payloads]
    report = LoadReport()
    latencies: list[float] = []
    sent = 0
    start = time.perf_counter()
    deadline = start + max_seconds

    def fail(kind: str) -> None:
        report.errors += 1
        report.errors_by_kind[kind] = report.errors_by_kind.get(kind, 0) + 1
        report.error_times.append((round(time.perf_counter() - start, 3), kind))

    async def worker(session):
        nonlocal sent
        while sent < max_requests and time.perf_counter() < deadline:
            i = sent
            sent += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        fail(f"http_{resp.status}")
                        continue
                    body = json.loads(raw)
            except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
                fail(type(exc).__name__)
                await asyncio.sleep(0.05)  # a refused connection returns at once: do not spin
                continue
            finally:
                report.requests += 1
            latencies.append(time.perf_counter() - t0)
            report.ok += 1
            report.inputs += len(body.get("data", []))
            report.tokens += int(body.get("usage", {}).get("prompt_tokens", 0))

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return summarise(latencies, time.perf_counter() - start, report)


def stsb_batches(path: str, per_request: int, count: int) -> list[list[str]]:
    """``count`` lists of ``per_request`` sentences from an STSB TSV (both columns), in file order."""
    sentences = [s for r in read_sts_file(path) for s in (r["sentence1"], r["sentence2"]) if s.strip()]
    if len(sentences) < per_request:
        raise ValueError(f"{path} holds only {len(sentences)} sentences")
    out = []
    for i in range(count):
        j = (i * per_request) % (len(sentences) - per_request)
        out.append(sentences[j:j + per_request])
    return out
