"""Probe `embedforge serve` as an attacker would, on loopback only, bounded in count and time.

    python benchmarks/attack_serve.py                 # MiniLM, one replica, HAProxy ingress
    python benchmarks/attack_serve.py --ingress proxy

Starts `embedforge serve` exactly as a user does (a subprocess with its own Ray instance, the key in
`EMBEDFORGE_API_KEYS`), then runs each probe of issue 17 and prints one PASS/FAIL line per probe with
its measurement, and a JSON summary line. Every connection goes to 127.0.0.1; every probe has a fixed
number of connections and a deadline.

Probes:
  no_keys_refused       `embedforge serve` without any key (and no serve.allow_anonymous) exits non-zero
  slow_bodies           64 unauthenticated connections send headers and a partial body, then stall:
                        an authenticated request still answers (p99 of 20 under 2 s)
  health_spam           16 loops of GET /health without a key for 10 s: authenticated throughput
                        stays >= 0.8 of that under the same flood of the ingress's own /-/healthz
  oversized_body        a 5 MB string with the key: 413 in under 1 s; normal requests' p99 meanwhile
  long_input            a 1 MB string (under the body limit) with the key: 400 in under 1 s
  lone_surrogate        "a\\ud800b" as input, in a list, as instruction: 400, never 5xx
  whitespace_input      whitespace- and NUL-only inputs: 400 like ""
  key_not_in_processes  the key's plaintext appears in no other process's environment (Ray's raylet,
                        workers, replicas, HAProxy) and no Ray log file
  admin_ports           every port the server's processes listen on is on loopback (HAProxy stats and
                        Prometheus, Ray's metrics), but Ray's token-authenticated replica gRPC server
  big_headers           12 KB of headers: a JSON 431 from the ingress (HAProxy mode)
  drain                 Ctrl-C with a request in flight: it gets 200, new requests a JSON 503 with
                        Retry-After, and the process exits within 40 s
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

from embedforge.ray_utils import free_port  # noqa: E402
from embedforge.testing.loadgen import run_load  # noqa: E402

HOST = "127.0.0.1"
MODEL = "minilm"
TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "Stock markets fell sharply today.",
         "The cat sleeps on the sofa.", "Two dogs run across a field.", "Someone is cooking dinner.",
         "A plane takes off from the runway.", "Children play soccer in the park."]


def post(base: str, body: bytes, key: str | None, timeout: float = 30.0) -> tuple[int, dict, float]:
    """(status, JSON body, seconds). A server may answer before the whole body is sent (401, 413) and
    close: the answer is read even when sending the rest fails."""
    import http.client
    from urllib.parse import urlparse

    url = urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)),
               **({"Authorization": f"Bearer {key}"} if key else {})}
    t0 = time.perf_counter()
    try:
        conn.putrequest("POST", f"{url.path}/v1/embeddings")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        try:
            conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early; the response is waiting
        resp = conn.getresponse()
        raw = resp.read()
        seconds = time.perf_counter() - t0
        try:
            return resp.status, json.loads(raw), seconds
        except json.JSONDecodeError:
            return resp.status, {"raw": raw[:200].decode(errors="replace")}, seconds
    finally:
        conn.close()


def embed_body(inputs, **extra) -> bytes:
    return json.dumps({"model": MODEL, "input": inputs, **extra}).encode("ascii")


def wait_ready(base: str, key: str, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"embedforge serve exited with {proc.returncode}")
        try:
            status, _, _ = post(base, embed_body(["ready?"]), key, timeout=5)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError("the endpoint did not answer within the start-up deadline")


def start_serve(port: int, key: str | None, ingress: str, extra: list[str] = ()) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("EMBEDFORGE_API_KEYS", "RAY_ADDRESS")}
    env["RAY_ADDRESS"] = "local"
    if key:
        env["EMBEDFORGE_API_KEYS"] = key
    cmd = [str(Path(sys.executable).with_name("embedforge")), "serve", "--config", str(REPO / "configs" / "tiny.yaml"),
           "model.backbone=all-minilm-l6-v2", "model.max_length=257", f"serve.model_name={MODEL}",
           f"serve.port={port}", f"serve.ingress={ingress}", "serve.access_log=false", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def load_report(base: str, key: str, seconds: float, concurrency: int = 4) -> dict:
    payloads = [{"model": MODEL, "input": TEXTS}]
    r = asyncio.run(run_load(f"{base}/v1/embeddings", payloads, concurrency=concurrency, max_requests=10_000,
                             max_seconds=seconds, api_key=key))
    return {"requests_per_s": round(r.requests_per_s, 2), "p50_s": round(r.p50_s, 3), "p99_s": round(r.p99_s, 3),
            "errors": r.errors}


# ------------------------------------------------------------------------------------------- probes

def probe_no_keys_refused(ingress: str) -> tuple[bool, str]:
    proc = start_serve(free_port(), None, ingress)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        stop(proc)
        return False, "still running after 120 s without keys"
    return proc.returncode != 0 and "allow_anonymous" in out, f"exit {proc.returncode}: {out.strip()[-160:]!r}"


def probe_slow_bodies(base: str, port: int, key: str) -> tuple[bool, str]:
    socks = []
    try:
        for _ in range(64):
            s = socket.create_connection((HOST, port), timeout=5)
            s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"model\":\"")
            socks.append(s)
        time.sleep(1.0)
        lat = [post(base, embed_body(TEXTS[:2]), key, timeout=30)[2] for _ in range(20)]
        p99 = sorted(lat)[-1]
        return p99 < 2.0, f"authenticated p99 {p99:.3f} s with 64 stalled unauthenticated bodies"
    finally:
        for s in socks:
            s.close()


def _flood_during_load(base: str, key: str, path: str) -> dict:
    """Authenticated load (10 s) while 16 unauthenticated loops GET ``path`` as fast as they can."""
    stop_at = time.time() + 12

    async def spam():
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async def loop():
                while time.time() < stop_at:
                    async with session.get(f"{base}{path}") as r:
                        await r.read()
            await asyncio.gather(*(loop() for _ in range(16)))

    import threading

    t = threading.Thread(target=lambda: asyncio.run(spam()))
    t.start()
    time.sleep(1)
    during = load_report(base, key, 10)
    t.join()
    return during


def probe_health_spam(base: str, key: str) -> tuple[bool, str]:
    """The flooding client shares this machine's cores with the server, so an unbounded flood of *any*
    request costs the endpoint throughput. The measure: a /health flood against the same flood of the
    ingress's own health check (``/-/healthz``, answered by HAProxy or Ray's proxy without a replica),
    run back to back: /health must cost the endpoint no more than that (>= 0.8 of it)."""
    before = load_report(base, key, 10)
    reference = _flood_during_load(base, key, "/-/healthz")
    during = _flood_during_load(base, key, "/health")
    ratio = during["requests_per_s"] / max(reference["requests_per_s"], 1e-9)
    return ratio >= 0.8, (f"throughput {before['requests_per_s']} req/s idle; under 16 loops of /-/healthz "
                          f"{reference['requests_per_s']}, of /health {during['requests_per_s']} (x{ratio:.2f})")


def probe_admin_ports(server_pid: int, port: int) -> tuple[bool, str]:
    """Every port `embedforge serve`'s processes listen on is on loopback (HAProxy's stats and Prometheus
    listeners, Ray's metrics port...), except Ray's replica gRPC server (bound to [::] in Ray's code,
    token-authenticated)."""
    import psutil

    tree = {server_pid, *(c.pid for c in psutil.Process(server_pid).children(recursive=True))}
    listening = [(c.laddr.ip, c.laddr.port, psutil.Process(c.pid).name()) for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in tree]
    exposed = [x for x in listening if x[0] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
               and not x[2].startswith("ray::ServeReplica")]
    return not exposed, f"{len(listening)} listening sockets, beyond loopback: {exposed}"


def probe_big_headers(port: int) -> tuple[bool, str]:
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 12_000 + b"\r\n\r\n")
        raw = s.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError):
        code = None
    return head.startswith(b"HTTP/1.1 431") and code == "headers_too_large", f"12 KB header: {head[:40]!r} {code}"


def probe_drain(proc: subprocess.Popen, base: str, key: str) -> tuple[bool, str]:
    """Ctrl-C with a request in flight: it finishes; new requests get a JSON 503 with Retry-After; the
    process exits within serve.graceful_shutdown_timeout_s (20 s) plus shutdown."""
    import threading

    result = {}
    inflight = threading.Thread(target=lambda: result.update(r=post(base, embed_body(["word " * 250] * 24), key, 60)))
    inflight.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    answers = []
    while proc.poll() is None and time.monotonic() - t0 < 90:
        try:
            answers.append(post(base, embed_body(["during the drain"]), key, timeout=5)[:2])
        except OSError:
            pass
        time.sleep(0.3)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    took = time.monotonic() - t0
    inflight.join(timeout=60)
    refused = [a for a in answers if a[0] != 200]
    json_503 = bool(refused) and all(a[0] == 503 and a[1].get("error", {}).get("code") == "unavailable"
                                     for a in refused)
    ok = result.get("r", (None,))[0] == 200 and json_503 and took < 40
    return ok, (f"in-flight request: {result.get('r', (None,))[0]}; during the drain {len(refused)} x 503 JSON "
                f"({json_503}); exit {took:.1f} s after Ctrl-C")


def probe_big(base: str, key: str, size: int, want: int) -> tuple[bool, str]:
    import threading

    result = {}

    def attack():
        result["status"], result["body"], result["seconds"] = post(base, embed_body("a" * size), key, timeout=60)

    normal = []

    def background():
        deadline = time.time() + 4
        while time.time() < deadline:
            normal.append(post(base, embed_body(TEXTS[:2]), key, timeout=30)[2])

    b = threading.Thread(target=background)
    b.start()
    time.sleep(0.5)
    a = threading.Thread(target=attack)
    a.start()
    a.join()
    b.join()
    p99 = sorted(normal)[max(0, int(len(normal) * 0.99) - 1)] if normal else float("nan")
    ok = result["status"] == want and result["seconds"] < 1.0 and p99 < 1.0
    return ok, (f"{size / 1e6:.0f} MB string: {result['status']} in {result['seconds']:.3f} s; "
                f"normal requests meanwhile: {len(normal)}, p99 {p99:.3f} s")


def probe_surrogates(base: str, key: str) -> tuple[bool, str]:
    model = json.dumps(MODEL)
    bodies = ['{"model":' + model + ',"input":"a\\ud800b"}', '{"model":' + model + ',"input":["ok","\\udfff"]}',
              '{"model":' + model + ',"input":"ok","instruction":"x\\ud83d"}']
    statuses = [post(base, b.encode("ascii"), key)[0] for b in bodies]
    return statuses == [400, 400, 400], f"statuses {statuses}"


def probe_whitespace(base: str, key: str) -> tuple[bool, str]:
    statuses = [post(base, embed_body(text), key)[0] for text in ("", "   ", "\t\n", "\x00", " \x00 ")]
    return statuses == [400] * 5, f"statuses {statuses}"


def probe_key_not_in_processes(key: str, server_pid: int) -> tuple[bool, str]:
    """Every process but the one the user gave the key to (`embedforge serve` itself: its exec-time
    environment keeps what it was started with) and this script."""
    found = []
    needle = key.encode()
    for env_file in glob.glob("/proc/[0-9]*/environ"):
        if env_file in (f"/proc/{os.getpid()}/environ", f"/proc/{server_pid}/environ"):
            continue
        try:
            if needle in Path(env_file).read_bytes():
                found.append(env_file)
        except OSError:
            continue
    logs = [p for p in glob.glob("/tmp/ray/session_latest/logs/**/*", recursive=True) if os.path.isfile(p)]
    for log in logs:
        try:
            if needle in Path(log).read_bytes():
                found.append(log)
        except OSError:
            continue
    return not found, f"{len(found)} hits in process environments and {len(logs)} Ray log files: {found[:4]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy")
    args = p.parse_args(argv)
    results = {}

    def record(name, outcome):
        ok, detail = outcome
        results[name] = {"pass": ok, "detail": detail}
        print(f"{'PASS' if ok else 'FAIL'}  {name:22s} {detail}", flush=True)

    record("no_keys_refused", probe_no_keys_refused(args.ingress))
    key = "ef-" + secrets.token_hex(16)
    port = free_port()
    base = f"http://{HOST}:{port}"
    proc = start_serve(port, key, args.ingress)
    try:
        wait_ready(base, key, proc)
        record("slow_bodies", probe_slow_bodies(base, port, key))
        record("health_spam", probe_health_spam(base, key))
        record("oversized_body", probe_big(base, key, 5_000_000, 413))
        record("long_input", probe_big(base, key, 1_000_000, 400))
        record("lone_surrogate", probe_surrogates(base, key))
        record("whitespace_input", probe_whitespace(base, key))
        record("key_not_in_processes", probe_key_not_in_processes(key, proc.pid))
        record("admin_ports", probe_admin_ports(proc.pid, port))
        if args.ingress == "haproxy":
            record("big_headers", probe_big_headers(port))
        record("drain", probe_drain(proc, base, key))
    finally:
        stop(proc)
    print(json.dumps({"ingress": args.ingress, "passed": sum(r["pass"] for r in results.values()),
                      "probes": len(results), "results": results}))
    return 0 if all(r["pass"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
