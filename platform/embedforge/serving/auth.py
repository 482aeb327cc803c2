"""Optional Bearer API keys, read from an environment variable and/or a file, kept only as digests.

Keys never enter the YAML config, the Ray deployment arguments or any log line: the app builder reads
them where it runs and hands the replicas SHA-256 digests, which are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _split_keys(text: str) -> list[str]:
    keys = []
    for line in text.replace(",", "\n").splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            keys.append(key)
    return keys


def load_keys(env_var: str | None, key_file: str | None, environ=None) -> list[str]:
    """Every key in ``$env_var`` (comma/newline separated) and ``key_file`` (one per line), in order.

    Only the app builder reads plaintext keys; replicas get ``load_key_digests``. A named key file that is missing is an error (a typo there must
    not silently open the endpoint).
    """
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if env_var:
        keys += _split_keys(environ.get(env_var, ""))
    if key_file:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"serve.api_key_file {key_file!r} does not exist")
        keys += _split_keys(path.read_text())
    return keys


def load_key_digests(env_var: str | None, key_file: str | None, environ=None) -> list[str]:
    """SHA-256 digests of ``load_keys``; an empty result means the endpoint runs without auth."""
    return sorted({digest(k) for k in load_keys(env_var, key_file, environ)})


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_is_valid(token: str | None, digests: list[str]) -> bool:
    if token is None:
        return False
    presented = digest(token)
    ok = False
    for d in digests:  # no early exit: time does not depend on which key matched
        ok |= hmac.compare_digest(presented, d)
    return ok
