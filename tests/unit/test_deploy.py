"""``serve/config.yaml``'s import path builds every application it lists, from its ``args``."""

import importlib.util

import pytest
import yaml
from ray.serve import Application

from embedforge.config.base import ConfigError


def _serve_app_module(repo_root):
    spec = importlib.util.spec_from_file_location("serve_app_entry", repo_root / "serve" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_application_in_the_serve_config_builds_from_its_args(repo_root, monkeypatch):
    monkeypatch.setenv("EMBEDFORGE_API_KEYS", "k1")
    serve_cfg = yaml.safe_load((repo_root / "serve" / "config.yaml").read_text())
    build_app = _serve_app_module(repo_root).build_app
    assert serve_cfg["applications"]
    for app in serve_cfg["applications"]:
        assert app["import_path"] == "serve.app:build_app"
        built = build_app(app["args"])
        assert isinstance(built, Application)
        model, serve_settings, digests = built._bound_deployment.init_args
        assert model["backbone"] == app["args"]["model"]["backbone"]
        assert serve_settings["model_name"] == app["args"]["serve"]["model_name"]
        assert len(digests) == 1 and "k1" not in digests[0]  # replicas get digests, never the key


def test_app_args_break_no_cross_section_rule(repo_root):
    build_app = _serve_app_module(repo_root).build_app
    with pytest.raises(ConfigError, match=r"serve.max_batch_tokens \(100\) must be >= model.max_length"):
        build_app({"model": {"max_length": 512}, "serve": {"max_batch_tokens": 100}})
