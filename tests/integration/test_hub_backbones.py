"""Hub backbones on a cluster: fetched once per node, with HF_TOKEN forwarded by name to every worker.

The hub is `embedforge.testing.hub.LocalHub`: a local folder (MiniLM) served over the hub's HTTP
protocol at HF_ENDPOINT, token required, every file download counted; the client is the real
huggingface_hub. "A node" is one HF cache directory (HF_HOME) shared by several processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from embedforge.testing.hub import LocalHub

REPO_ID = "acme/minilm-private"
TOKEN = "hf_embedforge_test_" + os.urandom(6).hex()


@pytest.fixture
def hub(minilm_dir):
    hub = LocalHub({REPO_ID: Path(minilm_dir)}, require_token=TOKEN)
    yield hub
    hub.close()


def _env(hub: LocalHub, hf_home: Path, token: str | None = TOKEN, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1" if offline else "0")
    if token:
        env["HF_TOKEN"] = token
    return env


RESOLVE = f"from embedforge.models import resolve_backbone; print(resolve_backbone({REPO_ID!r}))"


def test_a_hub_backbone_is_fetched_once_per_node_by_concurrent_workers(hub, tmp_path):
    node_cache = tmp_path / "hf"
    procs = [subprocess.Popen([sys.executable, "-c", RESOLVE], env=_env(hub, node_cache), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    paths = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(paths) == 1 and (Path(paths.pop()) / "model.safetensors").is_file()
    files = [str(p.relative_to(hub.repos[REPO_ID])) for p in hub.repos[REPO_ID].rglob("*") if p.is_file()]
    # Three processes, one download of each file (the lock in the node's cache; the rest read the cache).
    assert hub.downloads == {f"{REPO_ID}/{f}": 1 for f in files}, hub.downloads
    before = dict(hub.downloads)
    # Offline afterwards: the node's copy serves.
    r = subprocess.run([sys.executable, "-c", RESOLVE], env=_env(hub, node_cache, offline=True),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert dict(hub.downloads) == before


def test_a_private_backbone_without_a_token_fails_naming_hf_token(hub, tmp_path):
    r = subprocess.run([sys.executable, "-c", RESOLVE], env=_env(hub, tmp_path / "hf", token=None),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "model.backbone 'acme/minilm-private'" in r.stderr and "HF_TOKEN" in r.stderr, r.stderr[-1500:]
    assert not hub.downloads


def test_ray_workers_get_the_token_by_name_and_it_lands_in_no_ray_log(hub, tmp_path, ray_cluster):
    """The session cluster's nodes were started without HF_TOKEN (and with HF_HUB_OFFLINE=1): a
    driver that has them forwards them to its tasks through init_ray, by name. (Forwarded as runtime_env
    env_vars, the token was written to runtime_env_agent.log: this test caught it.)"""
    driver = textwrap.dedent(f"""
        import os, ray
        from embedforge.ray_utils import init_ray
        init_ray()

        @ray.remote
        def on_a_worker():
            from embedforge.models import resolve_backbone
            return os.environ.get("HF_TOKEN") == {TOKEN!r}, resolve_backbone({REPO_ID!r})

        has_token, path = ray.get(on_a_worker.remote())
        assert has_token and os.path.isfile(os.path.join(path, "model.safetensors")), (has_token, path)
    """)
    env = {**ray_cluster["env"], **_env(hub, tmp_path / "hf"), "RAY_ADDRESS": ray_cluster["address"]}
    r = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sum(hub.downloads.values()) > 0 and hub.authorizations.get(f"Bearer {TOKEN}", 0) > 0
    # The token's value is in the workers' environments only: no Ray log or session file holds it.
    session = Path(ray_cluster["temp_dir"]) / "session_latest"
    hits = []
    for path in session.rglob("*"):
        try:
            if path.is_file() and path.stat().st_size < 50_000_000 and TOKEN.encode() in path.read_bytes():
                hits.append(str(path))
        except OSError:
            continue
    assert not hits, hits
