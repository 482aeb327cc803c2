"""The Ray Serve application: a FastAPI-ingress deployment built by ``build_app(cfg)``.

``embedforge serve`` (``runner.serve_endpoint``) and the pipeline's smoke test call it with the loaded root config;
``serve run serve/config.yaml`` / ``serve deploy`` go through ``embedforge.deploy.build_app``, which
turns the YAML's ``args`` into that config first. Only the ``model`` and ``serve`` sections (and
``run.resource_check``) are read here.
"""

from __future__ import annotations

import logging
import os

from ray import serve
from ray.serve import Application

from embedforge.serving.service import create_app

log = logging.getLogger(__name__)


def default_model_name(backbone: str) -> str:
    """An alias stays as it is; a path becomes its last component (``runs/x/merged`` -> ``merged``)."""
    from embedforge.config.shared import MODEL_ALIASES

    if backbone in MODEL_ALIASES:
        return backbone
    return os.path.basename(os.path.normpath(os.path.expanduser(backbone))) or backbone


def served_model_name(cfg) -> str:
    return cfg.serve.model_name or default_model_name(cfg.model.backbone)


@serve.deployment(name="EmbeddingDeployment")
@serve.ingress()
class EmbeddingDeployment:
    """One replica: the model, the batch queue, the FastAPI app (built late, around this replica's state)."""

    def __init__(self, model: dict, serve_settings: dict, key_digests: list[str]):
        import torch

        from embedforge.config.serve import ServeConfig
        from embedforge.config.shared import ModelConfig
        from embedforge.embedders import load_embedder
        from embedforge.serving.metrics import RayMetrics
        from embedforge.serving.service import EmbeddingService

        # A replica gets the two sections it reads, not the root config (which stays with the driver).
        model_cfg, serve_cfg = ModelConfig.model_validate(model), ServeConfig.model_validate(serve_settings)
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus (a scheduling hint, often fractional or 1), so
        # torch would use one core; the model should use the cores this process may really run on. The
        # count is per calling thread: set here (loading), the service's model thread takes it over.
        from embedforge.ray_utils import usable_cpus

        torch.set_num_threads(serve_cfg.torch_threads or usable_cpus())
        self.serve_cfg = serve_cfg
        self.encoder = load_embedder(model_cfg)
        name = serve_cfg.model_name or default_model_name(model_cfg.backbone)
        self.metrics = RayMetrics(name)
        self.service = EmbeddingService(self.encoder, name, serve_cfg, key_digests,
                                        metrics=self.metrics, instructions=model_cfg.instructions)
        if key_digests:
            log.info("serving %s (dim %d, max_length %d, auth on)", name, self.encoder.dim, self.encoder.max_length)
        else:
            log.warning("serving %s WITHOUT AUTHENTICATION (serve.allow_anonymous: true): anyone who reaches "
                        "this endpoint can use it", name)

    def __serve_build_asgi_app__(self):
        return create_app(self.service)

    async def check_health(self) -> None:
        await self.service.check_health(timeout_s=self.serve_cfg.health_check_timeout_s)

    def stats(self) -> dict:
        """This replica's counters (through a deployment handle; Prometheus has the same series)."""
        import torch

        return {**self.metrics.snapshot(), "max_batch_tokens": self.serve_cfg.max_batch_tokens, "pid": os.getpid(),
                "torch_threads": torch.get_num_threads()}


def check_replicas_fit(cfg) -> None:
    """The cluster can hold the deployment's initial replicas (fails at once, naming who holds what)."""
    from embedforge.ray_utils import check_capacity, format_resources

    opts = cfg.serve.ray_actor_options
    replica = {"CPU": float(opts.num_cpus), "GPU": float(opts.num_gpus)}
    count = max(1, cfg.serve.autoscaling.min_replicas)
    check_capacity("serve", [replica] * count,
                   f"{count} serve replicas × {format_resources(replica)} (serve.autoscaling.min_replicas, "
                   "serve.ray_actor_options)", mode=cfg.run.resource_check)


def actor_options(opts) -> dict:
    out = {"num_cpus": opts.num_cpus, "num_gpus": opts.num_gpus}
    if opts.env:
        out["runtime_env"] = {"env_vars": dict(opts.env)}
    return out


def deployment_options(serve_cfg) -> dict:
    a = serve_cfg.autoscaling
    return {
        "autoscaling_config": {
            "min_replicas": a.min_replicas,
            "initial_replicas": max(a.min_replicas, 1),
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        },
        "max_ongoing_requests": serve_cfg.max_ongoing_requests,
        "ray_actor_options": actor_options(serve_cfg.ray_actor_options),
        "health_check_period_s": serve_cfg.health_check_period_s,
        "health_check_timeout_s": serve_cfg.health_check_timeout_s,
        "graceful_shutdown_wait_loop_s": serve_cfg.graceful_shutdown_wait_loop_s,
        "graceful_shutdown_timeout_s": serve_cfg.graceful_shutdown_timeout_s,
        "logging_config": {"enable_access_log": serve_cfg.access_log},
    }


def build_app(cfg, keys: list[str] | None = None) -> Application:
    """The Serve application for a root config (its ``model`` and ``serve`` sections).

    API keys are read here, where the app is built (``keys`` given: those instead), and the replicas
    receive their SHA-256 digests only. Without any key the app refuses to be built unless
    ``serve.allow_anonymous`` is true.
    """
    from embedforge.config.base import ConfigError
    from embedforge.serving.auth import digest, load_key_digests

    if keys is None:
        digests = load_key_digests(cfg.serve.api_key_env, cfg.serve.api_key_file)
    else:
        digests = sorted({digest(k) for k in keys})
    if not digests and not cfg.serve.allow_anonymous:
        where = f"${cfg.serve.api_key_env}" if cfg.serve.api_key_env else "no serve.api_key_env"
        raise ConfigError(
            f"serve: no API keys ({where}, serve.api_key_file: {cfg.serve.api_key_file or 'unset'}); the endpoint "
            f"would answer anyone. Export {cfg.serve.api_key_env or 'EMBEDFORGE_API_KEYS'}=<key>[,<key>...] or "
            "set serve.api_key_file, or set serve.allow_anonymous=true to serve without keys on purpose")
    if not digests:
        log.warning("serve.allow_anonymous is true: %s answers requests WITHOUT an API key. Keep it on a "
                    "private network or loopback.", served_model_name(cfg))
    deployment = EmbeddingDeployment.options(**deployment_options(cfg.serve))
    return deployment.bind(cfg.model.model_dump(mode="json"), cfg.serve.model_dump(mode="json"), digests)
