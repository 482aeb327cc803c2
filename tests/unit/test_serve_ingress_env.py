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
    assert serve_ingress_env("proxy") is None
    assert serve_ingress_env("haproxy")["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
