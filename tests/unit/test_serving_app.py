"""serving/app.py: the Ray Serve deployment options built from the serve section."""

from __future__ import annotations

import pytest

from embedforge.config import ConfigError, config_from_args
from embedforge.serving.app import deployment_options


def test_deployment_options_carry_replica_env():
    cfg = config_from_args({"overrides": ["serve.ray_actor_options.env={OMP_WAIT_POLICY: PASSIVE}",
                                           "serve.ray_actor_options.num_cpus=2"]})
    opts = deployment_options(cfg.serve)
    assert opts["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0,
                                         "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}}
    no_env = deployment_options(config_from_args({"overrides": ["serve.ray_actor_options.env={}"]}).serve)
    assert "runtime_env" not in no_env["ray_actor_options"]
    with pytest.raises(ConfigError, match="serve.ray_actor_options.env"):
        config_from_args({"overrides": ["serve.ray_actor_options.env=[1, 2]"]})
