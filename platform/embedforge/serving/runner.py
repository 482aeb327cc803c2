"""``embedforge serve``: start the endpoint on Ray Serve and block until interrupted."""

from __future__ import annotations

import os
import signal
import threading

from pydantic import BaseModel


class ServeInfo(BaseModel):
    url: str  # the OpenAI-compatible base URL (ends in /v1)
    model: str  # the name clients send as "model"
    app: str  # the Ray Serve application name


def serve_endpoint(cfg, block: bool = True) -> ServeInfo:
    from ray import serve

    from embedforge.ray_utils import init_ray, serve_ingress_env
    from embedforge.serving.app import build_app, check_replicas_fit, served_model_name

    app = build_app(cfg)  # reads the API keys (as digests for the replicas) before touching Ray
    # The plaintext keys leave this process's environment before Ray starts: every Ray process this call
    # starts (raylet, workers, replicas, HAProxy) would otherwise inherit them.
    if cfg.serve.api_key_env:
        os.environ.pop(cfg.serve.api_key_env, None)
    # Ray starts its workers at niceness 15, so a replica would yield the CPU to any other process on the
    # machine. When this call starts the local Ray instance, the replica (the product) runs at normal
    # priority instead; a cluster started apart needs RAY_worker_niceness=0 in `ray start`'s environment.
    os.environ.setdefault("RAY_worker_niceness", "0")
    init_ray(local_env=lambda: serve_ingress_env(cfg.serve), loopback=True)
    check_replicas_fit(cfg)
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(app, name=cfg.serve.app_name, route_prefix=cfg.serve.route_prefix, blocking=False)
    prefix = cfg.serve.route_prefix.rstrip("/")
    url = f"http://{cfg.serve.host}:{cfg.serve.port}{prefix}/v1"
    print(f"embedforge: serving {served_model_name(cfg)!r} at {url} (Ctrl-C stops)", flush=True)
    info = ServeInfo(url=url, model=served_model_name(cfg), app=cfg.serve.app_name)
    if not block:
        return info
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        serve.delete(cfg.serve.app_name)
    return info
