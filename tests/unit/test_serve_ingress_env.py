"""The HAProxy ingress environment: private files and ports per Ray instance, paths HAProxy accepts."""

from __future__ import annotations

import os

from embedforge.ray_utils import serve_haproxy_env, serve_ingress_env

HAPROXY_MAX_SOCKET_PATH = 97  # haproxy 2.8: "socket path ... too long (max 97)"
RAY_NODE_DIR = "n" * 56  # Ray puts HAProxy's files under a directory named by the node id


def test_two_instances_get_private_files_and_ports():
    a, b = serve_haproxy_env(), serve_haproxy_env()
    assert a["RAY_SERVE_ENABLE_HA_PROXY"] == a["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    for key in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
                "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        assert a[key] != b[key], key
    assert os.path.isdir(a["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"])


def test_socket_paths_fit_haproxy_limit_under_ray_node_dir():
    env = serve_haproxy_env()
    for key in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"):
        head, name = os.path.split(env[key])
        assert len(os.path.join(head, RAY_NODE_DIR, name)) <= HAPROXY_MAX_SOCKET_PATH, env[key]


def test_haproxy_ingress_sets_the_serve_env_and_proxy_sets_none():
    from embedforge.config.serve import ServeConfig

    assert serve_ingress_env(ServeConfig(ingress="proxy")) is None
    env = serve_ingress_env(ServeConfig(ingress="haproxy", admin_host="10.0.0.5", request_timeout_s=7.4))
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # Ray starts the hardening wrapper as its HAProxy binary, with the admin host and header timeout.
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("embedforge-haproxy")
    assert os.access(env["RAY_SERVE_HAPROXY_BINARY_PATH"], os.X_OK)
    assert (env["EMBEDFORGE_ADMIN_HOST"], env["EMBEDFORGE_HEADER_TIMEOUT_S"]) == ("10.0.0.5", "7")


def test_ingress_env_prints_the_exports_a_cluster_node_needs(capsys):
    from embedforge.cli import main

    assert main(["ingress-env", "--admin-host", "10.1.2.3", "--header-timeout-s", "15"]) == 0
    exports = dict(line.removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert exports["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and exports["EMBEDFORGE_ADMIN_HOST"] == "10.1.2.3"
    assert exports["EMBEDFORGE_HEADER_TIMEOUT_S"] == "15"
    assert exports["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("embedforge-haproxy")
    # A node's HAProxy keeps Ray's default files and ports: no private temp dirs on a cluster node.
    assert not any(k.startswith("RAY_SERVE_HAPROXY_") and k.endswith(("_PORT", "_LOC", "_PATH", "_BASE", "_FILE"))
                   and k != "RAY_SERVE_HAPROXY_BINARY_PATH" for k in exports)
