"""cluster.yaml passes Ray's own cluster-launcher validation, and so does its on-prem variant."""

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def validate(config: dict) -> dict:
    """What `ray up` does before touching a cloud: fill the provider's defaults, then check the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def cluster_config():
    return yaml.safe_load(CLUSTER.read_text())


def test_cluster_yaml_validates_with_rays_schema(cluster_config):
    validate(cluster_config)
    assert cluster_config["head_node_type"] in cluster_config["available_node_types"]
    assert any("RAY_AUTH_MODE=token" in c for c in cluster_config["head_start_ray_commands"])
    assert any("RAY_AUTH_MODE=token" in c for c in cluster_config["worker_start_ray_commands"])
    assert any('pip install' in c and '.[all]' in c for c in cluster_config["setup_commands"])


def test_local_provider_variant_validates(cluster_config):
    local = copy.deepcopy(cluster_config)
    local["provider"] = {"type": "local", "head_ip": "10.0.0.1", "worker_ips": ["10.0.0.2", "10.0.0.3"]}
    local["auth"] = {"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/id_rsa"}
    # Ray generates the node types of a local cluster from head_ip/worker_ips.
    for key in ("available_node_types", "head_node_type", "max_workers"):
        local.pop(key)
    prepared = validate(local)
    assert prepared["max_workers"] == 2


def test_broken_cluster_yaml_is_rejected(cluster_config):
    bad = copy.deepcopy(cluster_config)
    bad["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        validate(bad)
