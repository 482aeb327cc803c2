"""A local stand-in for S3: moto's S3-compatible server on the loopback interface.

``with local_s3() as s3:`` starts the server, creates a bucket, and points this process at it through
the same environment variables a real deployment uses (``AWS_ENDPOINT_URL``, the keys, the region),
so ``embedforge.storage`` reaches it through its ordinary code path. ``s3.env`` holds those variables
for other processes (a subprocess, a Ray worker's runtime environment).

moto keeps its buckets in process-wide memory shared by every server in the process, so the state
is reset on entry and on exit: use one ``local_s3`` at a time per process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # No instance-metadata lookups (169.254.169.254) when the SDK searches for credentials or region.
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class LocalS3:
    endpoint: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts…>``."""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts if p.strip("/"))])


def _reset(endpoint: str) -> None:
    # moto's own API: forget every bucket and object held by this process.
    import requests

    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()


@contextlib.contextmanager
def local_s3(bucket: str = "embedforge-test") -> Iterator[LocalS3]:
    """A moto S3 server on 127.0.0.1 with ``bucket`` created, reachable through ``os.environ`` meanwhile."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    # Port 0: the kernel picks a free port at bind time, so no other process can take it in between
    # (ThreadedMotoServer.start() waits forever if its bind fails).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # werkzeug logs every request to stderr; keep test output readable.
    werkzeug_log = logging.getLogger("werkzeug")
    saved_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = LocalS3(endpoint=endpoint, bucket=bucket, env={
        # Both names: pyarrow (and botocore) prefer the S3-specific one when a shell has it set.
        "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint, **CREDENTIALS})
    saved_env = {k: os.environ.get(k) for k in s3.env}
    try:
        _reset(endpoint)
        os.environ.update(s3.env)
        # A bare S3FileSystem ignores AWS_ENDPOINT_URL, hence the explicit endpoint here.
        pafs.S3FileSystem(
            endpoint_override=endpoint,
            access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region=CREDENTIALS["AWS_REGION"],
            allow_bucket_creation=True,
        ).create_dir(bucket)
        yield s3
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with contextlib.suppress(Exception):
            _reset(endpoint)
        server.stop()
        werkzeug_log.setLevel(saved_level)
