"""``harden_config`` on Ray's own rendered HAProxy config (its template and config classes, no HAProxy run)."""

from __future__ import annotations

import pytest

from embedforge.serving.ingress import MARK, UnknownConfig, harden_config, replica_servers


def _rendered(tmp_path, backends: dict) -> str:
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig  # noqa: F401
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(http_options=HTTPOptions(host="0.0.0.0", port=8000), stats_port=8404, metrics_port=9101,
                        socket_path=f"{tmp_path}/admin.sock", server_state_base=str(tmp_path),
                        server_state_file=f"{tmp_path}/state", metrics_socket_path=f"{tmp_path}/m.sock",
                        has_received_routes=True, has_received_servers=True)
    api = HAProxyApi(cfg, backends, config_file_path=f"{tmp_path}/haproxy.cfg")
    api._generate_config_file_internal()
    return (tmp_path / "haproxy.cfg").read_text()


def _app(tmp_path):
    from ray.serve._private.haproxy import BackendConfig, ServerConfig

    backend = BackendConfig(name="http-app", path_prefix="/", app_name="app",
                            servers=[ServerConfig(name="SERVE_REPLICA_a", host="10.0.0.2", port=30000)],
                            fallback_server=ServerConfig(name="SERVE_PROXY_ACTOR-fallback-n", host="10.0.0.1",
                                                         port=8500))
    return _rendered(tmp_path, {"app": backend})


def _binds(text: str) -> dict[str, str]:
    section, binds = "", {}
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.strip()
        elif line.strip().startswith("bind "):
            binds[section] = line.split()[1]
    return binds


def test_rays_template_binds_admin_listeners_everywhere_and_the_rewrite_moves_them(tmp_path):
    text = _app(tmp_path)
    assert _binds(text) == {"frontend prometheus": ":9101", "frontend http_frontend": "*:8000",
                            "listen stats": "*:8404"}  # what Ray renders (the reason for the rewrite)
    hardened = harden_config(text, "127.0.0.1", str(tmp_path), 10)
    # The client listener keeps serve.host; the admin ones move to the admin host.
    assert _binds(hardened) == {"frontend prometheus": "127.0.0.1:9101", "frontend http_frontend": "*:8000",
                                "listen stats": "127.0.0.1:8404"}
    assert "timeout http-request 10s" in hardened and MARK in hardened
    assert harden_config(hardened, "127.0.0.1", str(tmp_path), 10) == hardened  # a reload's rerun changes nothing
    assert "Path '%[path]' not found" not in hardened and "500.http" not in hardened  # plain-text answers gone


def test_health_counts_replicas_not_the_fallback_proxy(tmp_path):
    text = _app(tmp_path)
    assert replica_servers(text) == ["http-app/SERVE_REPLICA_a"]
    hardened = harden_config(text, "127.0.0.1", str(tmp_path), 10)
    assert "srv_is_up(http-app/SERVE_REPLICA_a)" in hardened
    assert "srv_is_up(http-app/SERVE_PROXY_ACTOR" not in hardened
    # No replica at all: /health can only be 503.
    empty = harden_config(_rendered(tmp_path, {}), "127.0.0.1", str(tmp_path), 10)
    assert "srv_is_up" not in empty and "return status 200" not in empty.split("frontend http_frontend")[1].split(
        "acl healthcheck")[0]


def test_a_config_of_unknown_shape_is_refused(tmp_path):
    with pytest.raises(UnknownConfig, match="defaults"):
        harden_config("global\n    maxconn 10\nfrontend http_frontend\n    bind :80\n", "127.0.0.1", "/x", 10)
    with pytest.raises(UnknownConfig, match="cannot rebind"):
        harden_config(_app(tmp_path).replace("bind *:8404", "bind ipv4@*"), "127.0.0.1", "/x", 10)
