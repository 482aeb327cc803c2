"""The training loop's collectives use tensors on the process group's device, never the default one.

On a GPU the group is NCCL, which rejects CPU tensors; on this CPU machine gloo accepts anything. To
make the mistake visible here, the tests make the *default* device differ from the group's device
(``meta`` as the default, ``cpu`` as the group's) and replace the collectives with a check of where
each tensor lives: a tensor created without ``device=`` lands on ``meta`` and fails the check.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from embedforge.train import collectives

GROUP_DEVICE = torch.device("cpu")


@pytest.fixture
def two_workers_checking_devices(monkeypatch):
    seen = []

    def checked(tensor, *args, **kwargs):
        seen.append(tensor.device)
        assert tensor.device == GROUP_DEVICE, f"collective on {tensor.device}, the group's device is {GROUP_DEVICE}"

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "all_reduce", checked)
    with torch.device("meta"):  # the default device is not the group's device, as CPU is not CUDA's
        yield seen


def test_a_tensor_made_on_the_default_device_fails_the_check(two_workers_checking_devices):
    # What the loop did before: torch.tensor([x]) with no device.
    with pytest.raises(AssertionError, match="collective on meta"):
        dist.all_reduce(torch.tensor([1.0]))


def test_every_loop_collective_runs_on_the_given_device(two_workers_checking_devices):
    seen = two_workers_checking_devices
    assert collectives.sum_over_workers(3.0, GROUP_DEVICE) == 3.0  # (the patched reduce adds nothing)
    assert collectives.mean_over_workers(torch.tensor(4.0, device=GROUP_DEVICE), GROUP_DEVICE) == 2.0
    order = "00000000000000a-step"
    collectives.check_same_batch(order, GROUP_DEVICE)  # equal ids on every "worker": no error
    assert seen == [GROUP_DEVICE] * 3


def test_disagreeing_workers_are_caught(monkeypatch):
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)

    def other_worker_is_ahead(tensor, op=None):  # MAX over [id, -id] with a peer holding id + 1
        tensor[0] = tensor[0] + 1

    monkeypatch.setattr(dist, "all_reduce", other_worker_is_ahead)
    with pytest.raises(RuntimeError, match="disagree on the current global batch"):
        collectives.check_same_batch("00000000000000a-step", GROUP_DEVICE)


def test_the_loop_and_the_step_issue_no_collective_of_their_own(repo_root):
    """Raw collectives live in train/collectives.py (and the loss's gather): the loop and the step
    call those, so the device rule above covers every collective they issue."""
    names = {"all_reduce", "all_gather", "reduce", "broadcast", "all_gather_object", "reduce_scatter"}
    for rel in ("train/loop.py", "train/engine.py"):
        tree = ast.parse(Path(repo_root, "platform", "embedforge", rel).read_text())
        calls = [n.func.attr for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in names]
        assert calls == [], (rel, calls)


def test_the_guide_gather_runs_on_the_given_device(monkeypatch):
    """``gather_rows`` (the guide's embeddings, train.guide_model) moves its input to the group's device
    and gathers every worker's rows in rank order."""
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    seen = []

    def gather(parts, tensor):
        seen.append(tensor.device)
        assert tensor.device == GROUP_DEVICE and all(p.device == GROUP_DEVICE for p in parts)
        for rank, part in enumerate(parts):  # worker r holds rows r*10 + its local rows
            part.copy_(tensor + 10 * rank)

    monkeypatch.setattr(dist, "all_gather", gather)
    local = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    with torch.device("meta"):
        got = collectives.gather_rows(local, GROUP_DEVICE)
    assert seen == [GROUP_DEVICE] and got.device == GROUP_DEVICE
    torch.testing.assert_close(got, torch.cat([local, local + 10]))
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 1)
    assert torch.equal(collectives.gather_rows(local, GROUP_DEVICE), local)
