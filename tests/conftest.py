"""Shared fixtures: repo paths, the shared public data, the real tiny model, a local Ray cluster.
The Ray cluster is started once per test session with ``ray start --head`` and token
authentication on (RAY_AUTH_MODE=token, a token generated into a temp file), exactly as users run it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Tests never reach the Hugging Face hub: every model comes from an installed package or is built in memory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMBEDFORGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    # Tests under tests/unit and tests/integration get their tier marker from the folder.
    for item in items:
        path = str(item.fspath)
        if f"{os.sep}unit{os.sep}" in path and "unit" not in item.keywords:
            item.add_marker(pytest.mark.unit)
        if f"{os.sep}integration{os.sep}" in path and "integration" not in item.keywords:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local `ray start --head` cluster with token auth; the test process is connected to it.

    Yields a dict with ``address`` (GCS), ``dashboard`` (Jobs API URL) and ``env`` (what a
    `ray job submit` client needs: RAY_AUTH_MODE=token and the token's path).
    """
    import ray

    tmp = tmp_path_factory.mktemp("ray")
    token_path = tmp / "auth_token"
    token_path.write_text(os.urandom(32).hex())
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    gcs_port, dash_port = free_port(), free_port()
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    subprocess.run(
        [_ray_bin(), "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dash_port}",
         "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--disable-usage-stats", "--include-dashboard=true"],
        check=True, env=env, capture_output=True, timeout=180,
    )
    address = f"127.0.0.1:{gcs_port}"
    dashboard = f"http://127.0.0.1:{dash_port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dash_port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    os.environ["RAY_ADDRESS"] = address
    ray.init(address=address)
    try:
        yield {"address": address, "dashboard": dashboard, "env": env, "token_path": str(token_path)}
    finally:
        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        subprocess.run([_ray_bin(), "stop", "--force"], env=env, capture_output=True, timeout=120)
