"""The pipeline's serve stage: the tuned model behind the real endpoint, one request through the official
``openai`` client, its vectors checked against the same model loaded offline.

The offline side runs on the encoding pool (a Ray actor with the serve replicas' accelerator), not in
this driver: on a cluster the driver is a CPU head node that never loads model weights."""

from __future__ import annotations

import secrets
import time

from pydantic import BaseModel

# The served vectors must equal the offline ones (same loader, same weights) up to float noise.
MIN_COSINE = 0.9999


class ServeSmokeResult(BaseModel):
    model: str
    inputs: int
    dim: int
    prompt_tokens: int
    min_cosine_vs_offline: float
    latency_s: float


def smoke_test(cfg, app_name: str, route_prefix: str = "/smoke") -> ServeSmokeResult:
    """Serve ``cfg`` (a root config) on a free loopback port under ``app_name``, ask, compare, remove it."""
    import numpy as np
    from openai import OpenAI
    from ray import serve

    from embedforge.embedders import EmbedderSpec
    from embedforge.encode_pool import encode_on_pool
    from embedforge.ray_utils import free_port
    from embedforge.serving.app import build_app, check_replicas_fit, served_model_name

    texts = ["A man is playing a guitar.", "Someone plays an instrument."]
    # Before the replicas start, so the actor's resources are free again when they need them.
    offline = encode_on_pool(EmbedderSpec.of(cfg.model), texts, num_actors=1, cpus_per_actor=1,
                             gpus_per_actor=cfg.serve.ray_actor_options.num_gpus, batch_size=len(texts),
                             stage="serve smoke check", settings="1 CPU, serve.ray_actor_options.num_gpus",
                             resource_check=cfg.run.resource_check)
    port = free_port()
    # A one-time key for this check alone: the smoke test needs no user key, and the endpoint is never
    # up without one.
    key = secrets.token_urlsafe(24)
    app = build_app(cfg, keys=[key])
    check_replicas_fit(cfg)
    # The proxy on the head only (where drivers run): this check's client is on the driver's node, and
    # every node's proxy on one loopback port would collide where nodes share a machine.
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=app_name, route_prefix=route_prefix, blocking=False)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}{route_prefix}/v1", api_key=key, max_retries=3)
        t0 = time.time()
        resp = client.embeddings.create(model=served_model_name(cfg), input=texts)
        latency = time.time() - t0
        served = np.array([d.embedding for d in resp.data], dtype=np.float32)
        cos = float(min((served * offline).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(offline, axis=1))))
        if cos < MIN_COSINE:
            raise RuntimeError(f"served vectors differ from the offline encoder (min cosine {cos:.6f})")
        return ServeSmokeResult(model=cfg.model.backbone, inputs=len(texts), dim=int(served.shape[1]),
                                prompt_tokens=resp.usage.prompt_tokens, min_cosine_vs_offline=cos,
                                latency_s=round(latency, 3))
    finally:
        serve.delete(app_name)
