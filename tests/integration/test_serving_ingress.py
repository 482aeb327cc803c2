"""The hardened HAProxy ingress (serving/ingress.py), two ways:

1. Ray Serve's own HAProxy manager (``HAProxyApi``: its template, its start-up and reload code) starts
   ``embedforge-haproxy`` in front of small local HTTP servers standing in for a replica and Ray's
   fallback proxy — no Ray cluster, a few seconds.
2. ``embedforge serve`` as a user runs it (its own Ray instance, MiniLM): every port its processes
   listen on is on loopback, and Ctrl-C drains: the request in flight finishes, new ones get a JSON 503
   with Retry-After, and the process exits within ``serve.graceful_shutdown_timeout_s`` plus shutdown.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from embedforge.ray_utils import free_port
from embedforge.serving.ingress import wrapper_path

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _get(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _openai_error(raw: bytes, code: str) -> dict:
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    return err


class _Stub(BaseHTTPRequestHandler):
    """A replica (``status`` 200 JSON) or Ray's fallback proxy (``status`` 404, plain text)."""

    status = 200
    paths: list[str]

    def _answer(self):
        self.paths.append(self.path)
        if self.path == "/-/healthz":
            body, ctype, status = b"success", "text/plain", 200
        elif self.status == 200:
            body, ctype, status = b'{"object":"list","data":[]}', "application/json", 200
        else:
            body, ctype, status = b"Path '/v1/embeddings' not found.", "text/plain", self.status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def _stub_server(status: int):
    handler = type("Stub", (_Stub,), {"status": status, "paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, handler.paths


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    import psutil

    return [(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


@pytest.fixture
def haproxy(tmp_path, monkeypatch):
    """Start Ray's HAProxy manager code on a private directory; yields (api, ports, start(backends))."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", wrapper_path())
    monkeypatch.setenv("EMBEDFORGE_HEADER_TIMEOUT_S", "1")
    ports = {"http": free_port(), "stats": free_port(), "metrics": free_port()}
    loop = asyncio.new_event_loop()
    state = {}

    def start(backends: dict):
        cfg = HAProxyConfig(http_options=HTTPOptions(host="127.0.0.1", port=ports["http"]),
                            stats_port=ports["stats"], metrics_port=ports["metrics"],
                            socket_path=f"{tmp_path}/admin.sock", server_state_base=str(tmp_path),
                            server_state_file=f"{tmp_path}/server-state", metrics_socket_path=f"{tmp_path}/m.sock",
                            has_received_routes=True, has_received_servers=True)
        state["api"] = HAProxyApi(cfg, backends, config_file_path=f"{tmp_path}/haproxy.cfg")
        loop.run_until_complete(state["api"].start())
        return state["api"]

    yield ports, start
    if "api" in state:
        loop.run_until_complete(state["api"].stop())
    loop.close()


def _backend(replica_port: int | None, fallback_port: int | None = None):
    from ray.serve._private.haproxy import BackendConfig, ServerConfig

    return BackendConfig(
        name="http-embedforge", path_prefix="/", app_name="embedforge", health_check_inter="200ms",
        health_check_fastinter="200ms", health_check_downinter="200ms", health_check_fall=1, health_check_rise=1,
        servers=[ServerConfig(name="SERVE_REPLICA_1", host="127.0.0.1", port=replica_port)] if replica_port else [],
        fallback_server=(ServerConfig(name="SERVE_PROXY_ACTOR-fallback-x", host="127.0.0.1", port=fallback_port)
                         if fallback_port else None))


def test_admin_ports_on_loopback_health_at_the_ingress_and_json_errors(haproxy):
    ports, start = haproxy
    replica, replica_paths = _stub_server(200)
    fallback, _ = _stub_server(404)
    api = start({"embedforge": _backend(replica.server_port, fallback.server_port)})
    base = f"http://127.0.0.1:{ports['http']}"

    pid = asyncio.new_event_loop().run_until_complete(api._get_running_pid())
    listening = {port: ip for _, ip, port in _listening({pid})}
    assert listening.keys() >= {ports["stats"], ports["metrics"], ports["http"]}, listening
    assert all(ip in LOOPBACK for ip in listening.values()), listening  # Ray's template: *:stats, :metrics

    # /health: answered by HAProxy from the replica's health checks; the replica never sees it.
    status, _, raw = _get(base + "/health")
    assert (status, json.loads(raw)) == (200, {"status": "ok"})
    assert "/health" not in replica_paths
    assert _get(base + "/v1/embeddings", "POST", b"{}")[0] == 200  # routed to the replica

    # Headers over 8 KiB: a JSON 431 from the ingress's rule (HAProxy's own answers are HTML).
    with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n")
        raw = s.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431") and b"application/json" in head, raw[:300]
    _openai_error(body, "headers_too_large")

    # Headers trickled past EMBEDFORGE_HEADER_TIMEOUT_S (1 s): 408 and the connection closed. (Its body
    # is HAProxy 2.8's built-in HTML: errors of its HTTP parser ignore errorfiles, haproxy/haproxy#3032.)
    with socket.create_connection(("127.0.0.1", ports["http"]), timeout=10) as s:
        t0 = time.monotonic()
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        raw = s.recv(65536)
        waited = time.monotonic() - t0
    assert raw.startswith(b"HTTP/1.1 408") and waited < 5, (raw[:200], waited)

    # The replica goes away: /health is 503; the API falls to Ray's fallback proxy, whose plain-text
    # 404 ("not deployed now") becomes a JSON 503 with Retry-After.
    replica.shutdown()
    replica.server_close()
    deadline = time.time() + 15
    while time.time() < deadline and _get(base + "/health")[0] == 200:
        time.sleep(0.2)
    status, headers, raw = _get(base + "/health")
    assert status == 503, raw
    _openai_error(raw, "unhealthy")
    status, headers, raw = _get(base + "/v1/embeddings", "POST", b"{}")
    assert status == 503 and headers.get("retry-after") == "5", (status, headers, raw)
    _openai_error(raw, "unavailable")
    fallback.shutdown()


def test_no_application_means_503_for_the_api_and_json_404_elsewhere(haproxy):
    ports, start = haproxy
    start({})
    base = f"http://127.0.0.1:{ports['http']}"
    status, headers, raw = _get(base + "/v1/embeddings", "POST", b"{}")
    assert status == 503 and headers.get("retry-after") == "5"
    _openai_error(raw, "unavailable")
    status, _, raw = _get(base + "/nothing-here")
    assert status == 404
    _openai_error(raw, "not_found")


def _post_embeddings(base: str, key: str, inputs, timeout: float = 60):
    body = json.dumps({"model": "minilm", "input": inputs}).encode()
    return _get(base + "/v1/embeddings", "POST", body,
                {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, timeout=timeout)


def test_embedforge_serve_listens_on_loopback_and_drains_on_ctrl_c(minilm_dir):
    import psutil

    port, key, grace = free_port(), "sk-ef-drain-" + os.urandom(6).hex(), 12
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "EMBEDFORGE_API_KEYS")}
    env.update(RAY_ADDRESS="local", EMBEDFORGE_API_KEYS=key)
    cmd = [str(Path(sys.executable).with_name("embedforge")), "serve", "--config", str(REPO / "configs" / "tiny.yaml"),
           f"model.backbone={minilm_dir}", "model.max_length=257", "serve.model_name=minilm", f"serve.port={port}",
           f"serve.graceful_shutdown_timeout_s={grace}", "serve.access_log=false"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            try:
                if _get(base + "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert _post_embeddings(base, key, ["warm up"])[0] == 200, "the endpoint did not come up"

        tree = {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
        haproxies = [p for p in map(psutil.Process, tree) if p.name() == "haproxy"]
        assert haproxies, "no HAProxy under embedforge serve"
        sockets = _listening(tree)
        assert len(sockets) > 5, sockets  # Ray's GCS, raylet, workers, HAProxy's three listeners...
        exposed = [(*s, psutil.Process(s[0]).name()) for s in sockets if s[1] not in LOOPBACK]
        # One exception, Ray's: each replica's inter-deployment gRPC server is bound to [::] in Ray's
        # code (serve/_private/replica.py, no setting) and takes only callers with the cluster's token.
        exposed = [s for s in exposed if not (s[3].startswith("ray::ServeReplica") and s[1] in ("::", "0.0.0.0"))]
        assert not exposed, f"listening beyond loopback: {exposed}"

        # One request big enough to be in flight for a few seconds, then Ctrl-C.
        result = {}
        inflight = threading.Thread(target=lambda: result.update(r=_post_embeddings(base, key, ["word " * 250] * 24)))
        inflight.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        answers = []
        while proc.poll() is None and time.monotonic() - t0 < grace + 60:
            try:
                status, headers, raw = _post_embeddings(base, key, ["during the drain"], timeout=5)
                answers.append((status, headers.get("retry-after"), raw))
            except OSError:
                pass  # HAProxy gone: the process is exiting
            time.sleep(0.3)
        proc.wait(timeout=grace + 60)
        took = time.monotonic() - t0
        inflight.join(timeout=60)
        assert result["r"][0] == 200, result["r"][:3]
        refused = [a for a in answers if a[0] != 200]
        assert refused and all(a[0] == 503 and a[1] == "5" for a in refused), answers
        _openai_error(refused[0][2], "unavailable")
        assert took < grace + 20, f"exit took {took:.1f} s (graceful_shutdown_timeout_s={grace})"
        # Nothing it started outlives it (HAProxy used to stay, orphaned, holding the ports).
        gone, alive = psutil.wait_procs(haproxies, timeout=10)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
