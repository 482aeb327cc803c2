"""capacity_shortfall: the pure rule behind the check every stage runs before it asks Ray for resources."""

from __future__ import annotations

from embedforge.ray_utils import capacity_shortfall, format_resources

TWO_CPU_NODE = {"CPU": 2.0, "memory": 8e9}


def test_fits_when_free():
    assert capacity_shortfall([{"CPU": 1.0}] * 2, [TWO_CPU_NODE], {"CPU": 2.0}) is None


def test_held_names_the_missing_amount():
    # the reported hang: a Serve replica held one of two CPUs, training asked for two workers x 1 CPU
    assert capacity_shortfall([{"CPU": 1.0}] * 2, [TWO_CPU_NODE], {"CPU": 1.0}) == ("held", {"CPU": 1.0})


def test_cluster_too_small_is_total():
    assert capacity_shortfall([{"CPU": 1.0}] * 3, [TWO_CPU_NODE], {"CPU": 2.0}) == ("total", {"CPU": 1.0})


def test_gpu_on_a_gpu_less_cluster_is_node():
    # a GPU-less head: no single node can take a GPU worker
    assert capacity_shortfall([{"CPU": 1.0, "GPU": 1.0}], [TWO_CPU_NODE], {"CPU": 2.0}) == ("node", {"GPU": 1.0})


def test_bundle_larger_than_any_node_even_if_total_suffices():
    nodes = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert capacity_shortfall([{"CPU": 3.0}], nodes, {"CPU": 4.0}) == ("node", {"CPU": 3.0})
    assert capacity_shortfall([{"CPU": 2.0}] * 2, nodes, {"CPU": 4.0}) is None


def test_zero_requests_are_ignored():
    assert capacity_shortfall([{"CPU": 1.0, "GPU": 0.0}], [TWO_CPU_NODE], {"CPU": 1.0}) is None
    assert format_resources({"CPU": 1.0, "GPU": 0.0}) == "CPU 1"
