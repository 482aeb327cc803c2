"""Training workers load the backbone partitioned by ZeRO-3, in the training precision (gloo, CPU).

Through the loop's own loading (``backbone_loading`` + ``load_lora_model``) on 2 processes: right
after loading, before ``deepspeed.initialize``, every backbone weight is a ZeRO-3 partition (half of
it per rank) in the training dtype holding the checkpoint's values, and the LoRA weights are
trainable; the engine then takes a step and the adapter gathers whole. Loading whole in fp32 and
letting ``deepspeed.initialize`` partition (the old way) fails the first assertions.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_train_gradcache import batch  # noqa: E402

from embedforge.config.train import LoraSettings, TrainConfig  # noqa: E402
from embedforge.ray_utils import free_port  # noqa: E402

GLOBAL = 4
LORA = LoraSettings(r=4, alpha=8, dropout=0.0)


def _backbone_key(peft_name: str) -> str:
    """The checkpoint's name of a PEFT-wrapped backbone weight."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _worker(rank, world_size, port, backbone_dir, precision, out_dir):
    import deepspeed
    import torch.distributed as dist

    from embedforge.train.batching import worker_slice
    from embedforge.train.ds_config import backbone_loading
    from embedforge.train.engine import init_engine, train_step
    from embedforge.train.model import gathered_lora_state_dict, load_lora_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = TrainConfig(global_batch_size=GLOBAL, num_workers=world_size, chunk_size=2, warmup_steps=0, lr=1e-2,
                      temperature=0.05, lora=LORA, gradient_checkpointing=True,
                      deepspeed={"stage": 3, "precision": precision, "gradient_clipping": 0})
    dtype, zero3_config = backbone_loading(cfg)
    model = load_lora_model(backbone_dir, cfg.lora, dtype, cfg.gradient_checkpointing, zero3_config)

    # What each parameter is right after loading, before deepspeed.initialize touches it.
    loaded = {
        name: {"ds_id": hasattr(p, "ds_id"), "dtype": str(p.dtype), "requires_grad": p.requires_grad,
               "local_numel": p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel(),
               "full_numel": getattr(p, "ds_numel", p.numel())}
        for name, p in model.named_parameters()
    }
    backbone = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]
    with deepspeed.zero.GatheredParameters([p for _, p in backbone]):  # a no-op on whole weights
        values = {_backbone_key(n): p.detach().clone() for n, p in backbone}

    engine, _ = init_engine(model, cfg, total_steps=10)
    local = worker_slice(dict(batch(n=GLOBAL, k=1), num_negatives=1), rank, world_size)
    metrics = train_step(engine, local, 0, cfg)
    adapter = gathered_lora_state_dict(engine.module)
    torch.save({"loaded": loaded, "values": values, "loss": metrics["loss"], "adapter": adapter},
               Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_zero3_workers_load_the_backbone_partitioned_in_the_training_precision(tmp_path, precision):
    from embedforge.testing import tiny_model

    backbone_dir = tmp_path / "backbone"
    checkpoint = tiny_model("llama", hidden_size=64).state_dict()
    tiny_model("llama", hidden_size=64).save_pretrained(backbone_dir)  # fp32 on disk, like a real checkpoint
    world_size = 2
    mp.spawn(_worker, args=(world_size, free_port(), str(backbone_dir), precision, str(tmp_path)),
             nprocs=world_size, join=True)
    want_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]

    for rank in range(world_size):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        backbone = {n: s for n, s in got["loaded"].items() if "lora_" not in n}
        lora = {n: s for n, s in got["loaded"].items() if "lora_" in n}
        assert backbone and lora
        for name, state in backbone.items():
            assert state["ds_id"], f"{name} was loaded whole, not as a ZeRO-3 partition"
            assert state["local_numel"] < state["full_numel"], name
            assert state["dtype"] == str(want_dtype), name
            assert not state["requires_grad"], name
        for name, state in lora.items():
            assert state["requires_grad"] and state["dtype"] == str(want_dtype), name
        # The partitions hold the checkpoint's values (rank 0 read them in; every rank gathers them).
        assert set(got["values"]) == set(checkpoint)
        for key, value in got["values"].items():
            assert value.dtype == want_dtype
            torch.testing.assert_close(value, checkpoint[key].to(want_dtype), rtol=0, atol=0, msg=key)
        # The engine took a step on the partitioned model, and the adapter gathers whole and trained.
        assert torch.isfinite(torch.tensor(got["loss"]))
        adapter = got["adapter"]
        assert adapter and all(t.numel() > 0 for t in adapter.values())
        assert any(t.abs().max() > 0 for k, t in adapter.items() if "lora_B" in k), "the step left lora_B at zero"
    first, second = (torch.load(tmp_path / f"rank{r}.pt")["adapter"] for r in range(world_size))
    assert all(torch.equal(first[k], second[k]) for k in first)
