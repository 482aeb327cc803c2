"""config/serve.py: the serve section's own checks, the cross-section batch rule, the shipped configs."""

from __future__ import annotations

import pytest

from embedforge.config import ConfigError, config_from_args, load_config
from embedforge.config.serve import ServeConfig


def test_bad_serve_settings_fail_naming_the_setting():
    with pytest.raises(ValueError, match="min_replicas"):
        ServeConfig(autoscaling={"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ValueError, match="route_prefix"):
        ServeConfig(route_prefix="v1")
    with pytest.raises(ConfigError, match="serve.max_batch_tokens"):
        config_from_args({"model": {"max_length": 512}, "serve": {"max_batch_tokens": 100}})
    with pytest.raises(ConfigError, match="unknown key 'serve.api_key'"):
        config_from_args({"serve": {"api_key": "secret"}})


def test_shipped_configs_serve_batches_fit_a_full_length_input(repo_root):
    for name in ("tiny.yaml", "paper.yaml"):
        cfg = config_from_args({"config": str(repo_root / "configs" / name)})
        assert cfg.serve.max_batch_tokens >= cfg.model.max_length


def test_tiny_config_loads_with_a_serve_batch_fitting_max_length(repo_root):
    cfg = load_config(repo_root / "configs" / "tiny.yaml")
    assert cfg.serve.max_batch_tokens >= cfg.model.max_length
