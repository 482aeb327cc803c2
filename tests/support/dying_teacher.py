"""A stand-in for a broken local teacher: an OpenAI-compatible server that lists its model, then dies
with SIGSEGV on its first completion — what a llama.cpp built natively on an AMX CPU did.

    python tests/support/dying_teacher.py --port PORT [--alias NAME]

Used as ``generate.local_teacher.command`` by the tests of the teacher check and ``embedforge doctor``.
Listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", default="smollm2-135m")
    args = parser.parse_args()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") != "/v1/models":
                self.send_error(404)
                return
            body = json.dumps({"object": "list", "data": [{"id": args.alias, "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802
            print(f"completion requested at {self.path}: crashing like llama_decode did", flush=True)
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGSEGV)

        def log_message(self, fmt, *a):
            print(fmt % a, flush=True)

    print(f"dying teacher listening on 127.0.0.1:{args.port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
