"""A local stand-in for the Hugging Face hub: serves model directories over the hub's HTTP protocol.

``huggingface_hub`` (and so ``transformers``) talks to ``HF_ENDPOINT``; pointed here, it downloads
from a local folder through the same code path it uses for huggingface.co: the repository's file
list (``GET /api/models/<repo>/revision/<rev>``), each file's metadata (``HEAD …/resolve/<rev>/<file>``
with ``X-Repo-Commit`` and ``ETag``) and body (``GET``). Every request is counted (``downloads``:
file bodies per path; ``authorizations``: the ``Authorization`` headers seen), so tests can check
how often a file was fetched and with which token. No xet, no LFS pointers: small files only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0" * 39 + "1"


class LocalHub:
    def __init__(self, repos: dict[str, Path], require_token: str | None = None):
        self.repos = {name: Path(path) for name, path in repos.items()}
        self.require_token = require_token
        self.downloads: Counter = Counter()
        self.authorizations: Counter = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _file(self, repo: str, name: str) -> Path | None:
        root = self.repos.get(repo)
        if root is None:
            return None
        path = (root / name).resolve()
        return path if path.is_file() and root.resolve() in path.parents else None

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head_only=False):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head_only:
                    self.wfile.write(body)

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization")
                hub.authorizations[auth] += 1
                return hub.require_token is None or auth == f"Bearer {hub.require_token}"

            def _route(self, head_only: bool):
                if not self._authorized():
                    return self._send(401, b'{"error":"Invalid credentials"}',
                                      {"Content-Type": "application/json", "X-Error-Code": "GatedRepo"})
                path = unquote(self.path.split("?")[0])
                if path.startswith("/api/models/"):
                    rest = path.removeprefix("/api/models/")
                    repo = rest.split("/revision/")[0].split("/tree/")[0]
                    root = hub.repos.get(repo)
                    if root is None:
                        return self._send(404, b'{"error":"Repository not found"}',
                                          {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"})
                    if "/tree/" in rest:  # the recursive file listing
                        entries = [{"type": "file", "path": str(p.relative_to(root)), "size": p.stat().st_size,
                                    "oid": hashlib.sha1(p.read_bytes()).hexdigest()}
                                   for p in sorted(root.rglob("*")) if p.is_file()]
                        return self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"},
                                          head_only)
                    siblings = [{"rfilename": str(p.relative_to(root))} for p in sorted(root.rglob("*")) if p.is_file()]
                    body = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings}).encode()
                    return self._send(200, body, {"Content-Type": "application/json"}, head_only)
                if "/resolve/" in path:
                    repo, _, rest = path.lstrip("/").partition("/resolve/")
                    name = rest.partition("/")[2]
                    file = hub._file(repo, name)
                    if file is None:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
                    data = file.read_bytes()
                    etag = '"' + hashlib.sha1(data).hexdigest() + '"'
                    if not head_only:
                        hub.downloads[f"{repo}/{name}"] += 1
                    return self._send(200, data, {"ETag": etag, "X-Repo-Commit": COMMIT,
                                                  "Content-Type": "application/octet-stream"}, head_only)
                return self._send(404, b"")

            def do_GET(self):
                self._route(head_only=False)

            def do_HEAD(self):
                self._route(head_only=True)

        return Handler
