"""Shared fixtures: repo paths, the shared public data, the real tiny model, a local Ray cluster.
The Ray cluster is started once per test session with ``ray start --head`` and token
authentication on (RAY_AUTH_MODE=token, a token generated into a temp file), exactly as users run it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from embedforge.ray_utils import free_port

# Tests never reach the Hugging Face hub: every model comes from an installed package or is built in memory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Token auth for every Ray instance the tests start or join. Ray reads these when it is first
# imported, so they are set here, before any test module imports ray.
_TOKEN_DIR = Path(tempfile.mkdtemp(prefix="ef-ray-auth-"))
RAY_TOKEN_PATH = _TOKEN_DIR / "auth_token"
RAY_TOKEN_PATH.write_text(os.urandom(32).hex())
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(RAY_TOKEN_PATH)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMBEDFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    # Tests under tests/unit and tests/integration get their tier marker from the folder.
    for item in items:
        path = str(item.fspath)
        # (not `item.keywords`: it also holds the package names `unit` / `integration`)
        if f"{os.sep}unit{os.sep}" in path and item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.unit)
        if f"{os.sep}integration{os.sep}" in path and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"shared public data not found at {SHARED_DATA} (set EMBEDFORGE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The imported SmolLM2-135M-Instruct directory (imported from the packaged GGUF once, cached)."""
    from embedforge.models import resolve_backbone

    return resolve_backbone("smollm2-135m")


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    from embedforge.models import resolve_backbone

    return resolve_backbone("all-minilm-l6-v2")


@pytest.fixture
def tiny_tokenizer():
    from embedforge.testing import tiny_tokenizer as make

    return make()


@pytest.fixture
def tiny_llama():
    from embedforge.testing import tiny_model

    return tiny_model("llama")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def generate_job(tmp_path: Path, name: str, num_rows: int, port: int, repo_root: Path) -> tuple[list[str], Path]:
    """A small `jobs/generate.py` run with the real local teacher on ``port`` (English sts + bitext,
    a shard committed per attempt): (command, its commits folder)."""
    import yaml

    cfg = {
        "run": {"name": name, "output_dir": str(tmp_path), "seed": 0},
        "generate": {
            "num_rows": num_rows, "groups": {"sts": 1, "bitext": 1},
            "local_teacher": {"enabled": True, "port": port, "n_threads": 2, "n_ctx": 1024, "max_concurrency": 2},
            "language_weights": {"English": 100}, "max_tokens": 48, "min_words_long": 1,
            "shard_rows": 1, "progress": False, "reject_min_attempts": 100,
        },
    }
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, str(repo_root / "jobs" / "generate.py"), "--config", str(config)]
    return cmd, tmp_path / name / "generate" / "commits"


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start_ray_head(tmp: Path, num_cpus: int = 2):
    """`ray start --head --block` in its own process group, token auth on; returns (proc, info).

    Stopping kills that process group only: `ray stop` would kill every Ray cluster on the machine.
    """
    token_path = RAY_TOKEN_PATH
    from embedforge.ray_utils import serve_haproxy_env

    # Started like cluster.yaml's head: token auth, and Serve's HAProxy ingress (the serving default).
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), **serve_haproxy_env())
    env.pop("RAY_ADDRESS", None)
    # Every port chosen free, so two test sessions on one machine don't collide.
    gcs_port, dash_port, agent_port = free_port(), free_port(), free_port()
    extra_ports = [f"--dashboard-agent-listen-port={agent_port}", f"--dashboard-agent-grpc-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                   f"--ray-client-server-port={free_port()}"]
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths are length-limited
    proc = subprocess.Popen(
        [_ray_bin(), "start", "--head", "--block", f"--port={gcs_port}", f"--dashboard-port={dash_port}",
         "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
         "--disable-usage-stats", f"--temp-dir={temp_dir}", *extra_ports],
        env=env, stdout=open(tmp / "ray_head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start failed: {(tmp / 'ray_head.log').read_text()[-2000:]}")
        # The Jobs API refuses submissions until the head's dashboard agent is up too.
        if all(port_open(p) for p in (dash_port, agent_port)):
            break
        time.sleep(0.5)
    else:
        stop_ray_head(proc)
        raise RuntimeError("Ray head did not come up within 120 s")
    info = {"address": f"127.0.0.1:{gcs_port}", "dashboard": f"http://127.0.0.1:{dash_port}", "env": env,
            "token_path": str(token_path), "temp_dir": str(temp_dir)}
    return proc, info


def stop_ray_head(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local `ray start --head` cluster with token auth; the test process is connected to it.

    Yields a dict with ``address`` (GCS), ``dashboard`` (Jobs API URL) and ``env`` (what a
    `ray job submit` client needs: RAY_AUTH_MODE=token and the token's path).
    """
    proc, info = start_ray_head(tmp_path_factory.mktemp("ray"))
    import ray

    os.environ["RAY_ADDRESS"] = info["address"]
    try:  # a failed connect must not leak the head
        ray.init(address=info["address"])
        yield info
    finally:
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        stop_ray_head(proc)
