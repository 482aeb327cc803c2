"""The one place that starts or joins Ray, so every stage ships the package to its workers alike."""

from __future__ import annotations

import os
from pathlib import Path


def package_dir() -> str:
    return str(Path(__file__).resolve().parent)


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs):
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``, or the job's, or one that `ray start`
    left running on this machine), else start a local one.

    The ``embedforge`` package travels to the workers as a ``py_modules`` entry, so the same driver
    works from an installed wheel, from a checkout, and under ``ray job submit --working-dir .``
    (where ``platform/`` is not on the workers' path).
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
        ray.init(address=address, **init_kwargs)
        return ray
    try:
        ray.init(address="auto", **init_kwargs)  # a `ray start --head` cluster on this machine
    except ConnectionError:
        # None running (or several, ambiguous): a private local instance for this driver.
        if num_cpus is not None:
            init_kwargs["num_cpus"] = num_cpus
        ray.init(**init_kwargs)
    return ray
