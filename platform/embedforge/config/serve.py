"""The Ray Serve embedding endpoint (OpenAI-compatible /v1/embeddings): its config section.

The served model itself is the root config's ``model`` section; this section says how it is served.
API keys are never part of the config: only the name of the environment variable and the path of a
file that hold them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from embedforge.config.base import Section


class AutoscalingConfig(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    # Ray Serve adds replicas when the mean number of requests in flight per replica exceeds this.
    target_ongoing_requests: float = Field(16.0, gt=0)
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"autoscaling.min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})"
            )
        return self


class ActorOptions(Section):
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    # Environment of the replica processes (Ray's runtime_env env_vars), set before torch loads.
    env: dict[str, str] = Field(default_factory=dict)


class ServeConfig(Section):
    # Name reported in responses and /v1/models, and the only `model` value requests may name;
    # empty: derived from model.backbone (its alias, or the directory's name).
    model_name: str = ""
    app_name: str = "embedforge"
    route_prefix: str = "/"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Where the HAProxy ingress's stats page and Prometheus endpoint listen (a Ray instance embedforge
    # starts binds its own services, metrics included, to loopback too). They have no auth: keep them
    # on loopback, or a private address a Prometheus on another machine can reach (docs/serve.md).
    admin_host: str = "127.0.0.1"
    # OpenAI allows 2048 inputs per request.
    max_inputs: int = Field(2048, ge=1)
    # Padded tokens (rows x longest row) one batch may hold across concurrent requests;
    # must be at least model.max_length so any single input fits.
    max_batch_tokens: int = Field(16384, ge=2)
    # After an idle spell, how long the first batch waits for other requests; under load the next
    # batch is whatever waited while the model ran (serving.batching.ForwardQueue).
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    # The fixed cost of one forward pass, in token-equivalents. A batch gathered from concurrent
    # requests is length-sorted and cut into several passes wherever the padding saved exceeds this:
    # 0 -> a pass per distinct length; very large -> as few passes as max_batch_tokens allows.
    # Small on CPU (per-pass cost is small next to per-token cost), large on GPUs (which want big batches).
    forward_overhead_tokens: int = Field(64, ge=0)
    # Over-long inputs: false -> 400 naming the limit; true -> cut to model.max_length like offline encode.
    truncate: bool = False
    # API keys (Bearer), comma/newline separated. Without any key the endpoint refuses to start unless
    # allow_anonymous is true (then it serves anyone, and says so loudly at start-up).
    api_key_env: str = "EMBEDFORGE_API_KEYS"
    api_key_file: str | None = None
    allow_anonymous: bool = False
    # Checked before the app reads anything: a request body above this is 413; a body that has not fully
    # arrived within request_timeout_s is 408 (slow clients cannot hold the replica's request slots).
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(10.0, gt=0)
    # Characters per input checked before tokenising (bounds the tokenizer's work); null: 32 per token of
    # model.max_length (no real text averages more). Over it: 400, or cut there first when truncate.
    max_input_chars: int | None = Field(None, ge=1)
    # Torch intra-op threads per replica; 0 -> every CPU the replica process may run on (its affinity
    # mask). Ray would otherwise leave torch at ray_actor_options.num_cpus threads (1 by default).
    torch_threads: int = Field(0, ge=0)
    max_ongoing_requests: int = Field(64, ge=1)
    # HTTP ingress of a Ray instance embedforge starts itself (`embedforge serve`, the pipeline):
    # "haproxy" = Ray Serve's high-throughput mode (HAProxy in front of replicas serving HTTP;
    # ~1.4x the throughput of "proxy" on 2 cores, see the README); "proxy" = Serve's Python proxy
    # actor. A cluster started apart keeps the ingress it was started with (cluster.yaml: haproxy).
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    # Ray Serve's per-request access log line (costs CPU at high request rates).
    access_log: bool = True
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)
    graceful_shutdown_wait_loop_s: float = Field(2.0, ge=0)
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0)

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"route_prefix must start with '/', got {v!r}")
        return v
