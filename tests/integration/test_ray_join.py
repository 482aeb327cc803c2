"""Which Ray cluster a command uses, and the capacity check before a stage.

The reported hang: `embedforge serve` started a private Ray instance; `embedforge pipeline` in another
terminal joined it (ray.init(address="auto") finds any instance in the process list) and its training
waited without end for the CPU the Serve replica held. Now a command joins only a cluster the user
chose, and a stage that cannot fit fails at once naming what holds the resources.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# A private instance (as `embedforge serve` starts one) with an actor holding one of its two CPUs.
HOLD_ONE_CPU = textwrap.dedent("""
    import sys, ray
    from embedforge.ray_utils import CapacityError, check_capacity, init_ray
    init_ray(num_cpus=2)
    @ray.remote(num_cpus=1)
    class Replica:
        def ping(self): return 1
    replica = Replica.options(name="serve-replica-stand-in").remote()
    ray.get(replica.ping.remote())
""")

PRIVATE = HOLD_ONE_CPU + textwrap.dedent("""
    print(ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.read()  # hold the instance (and the CPU) until the test closes stdin
""")

WHICH = textwrap.dedent("""
    import ray
    from embedforge.ray_utils import init_ray
    init_ray(num_cpus=1)
    print(ray.get_runtime_context().gcs_address)
""")

CHECK = HOLD_ONE_CPU + textwrap.dedent("""
    try:
        check_capacity("train", [{"CPU": 1.0}] * 2, "2 training workers x CPU 1", release_wait_s=2)
    except CapacityError as exc:
        print(exc)
    else:
        print("NO ERROR")
    check_capacity("train", [{"CPU": 1.0}], "1 training worker x CPU 1", release_wait_s=0)
    try:
        check_capacity("train", [{"CPU": 1.0, "GPU": 1.0}], "1 GPU worker", release_wait_s=0)
    except CapacityError as exc:
        print(exc)
""")


@pytest.fixture
def no_cluster_env():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return env


def test_a_private_instance_of_another_process_is_never_joined(no_cluster_env):
    holder = subprocess.Popen([sys.executable, "-c", PRIVATE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=no_cluster_env)
    try:
        private_address = holder.stdout.readline().strip()
        assert private_address, "the first process did not start its instance"
        out = subprocess.run([sys.executable, "-c", WHICH], capture_output=True, text=True, timeout=180,
                             env=no_cluster_env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split()[-1] != private_address  # its own instance, not the other's
        # RAY_ADDRESS is the user's choice: then it joins exactly that one
        joined = subprocess.run([sys.executable, "-c", WHICH], capture_output=True, text=True, timeout=180,
                                env=dict(no_cluster_env, RAY_ADDRESS=private_address))
        assert joined.returncode == 0, joined.stderr[-2000:]
        assert joined.stdout.split()[-1] == private_address
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_stage_that_cannot_fit_fails_at_once_naming_the_holder(no_cluster_env):
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=240,
                         env=no_cluster_env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "NO ERROR" not in out.stdout
    assert "train: 2 training workers x CPU 1 need CPU 1 more than is free now (free: CPU 1)" in out.stdout
    assert "actor serve-replica-stand-in" in out.stdout and ": CPU 1" in out.stdout
    assert "no node of this cluster can hold one of 1 GPU worker: missing GPU 1 on every node" in out.stdout
