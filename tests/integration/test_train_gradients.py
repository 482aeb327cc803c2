"""Cross-worker negatives and gradient caching under DeepSpeed ZeRO-3 on gloo (CPU processes).

Each worker's LoRA gradient (gathered from its ZeRO-3 partition before ``step()``) must equal the
single-process, no-caching gradient of the mean InfoNCE loss over the whole global batch; after the
step, the adapter gathered from the partitions is non-empty and loads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_train_gradcache import batch, lora_grads, lora_model  # noqa: E402

from embedforge.config.train import TrainConfig  # noqa: E402
from embedforge.ray_utils import free_port  # noqa: E402
from embedforge.train.batching import worker_slice  # noqa: E402
from embedforge.train.gradcache import contrastive_backward  # noqa: E402

TEMPERATURE = 0.05
GLOBAL = 4


def tiny_guide():
    """A frozen tiny random decoder as the guide model (the student's char tokenizer): its mask is
    arbitrary but fixed, which is all these tests need."""
    from embedforge.encoder import Encoder
    from embedforge.testing import tiny_model, tiny_tokenizer
    from embedforge.train.guide import Guide

    tok = tiny_tokenizer()
    return Guide(Encoder(tiny_model("llama", seed=3), tok, max_length=64), tok, "absolute", 0.0)


def _worker(rank, world_size, port, chunk_size, checkpointing, out_dir, guided=False):
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_grad

    from embedforge.train.engine import init_engine
    from embedforge.train.gradcache import DeepSpeedBackward
    from embedforge.train.model import gathered_lora_state_dict, save_adapter

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    deepspeed.init_distributed(dist_backend="gloo")
    model = lora_model()
    if checkpointing:
        model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    cfg = TrainConfig(global_batch_size=GLOBAL, num_workers=world_size, chunk_size=chunk_size, warmup_steps=0,
                      temperature=TEMPERATURE, deepspeed={"stage": 3, "precision": "fp32", "gradient_clipping": 0})
    engine, _ = init_engine(model, cfg, total_steps=10)
    record = dict(batch(n=GLOBAL, k=1), num_negatives=1)
    local = worker_slice(record, rank, world_size)
    # guided: every worker embeds its rows with the guide and gathers them over gloo (Guide.mask)
    mask = tiny_guide().mask(local, torch.device("cpu")) if guided else None
    torch.manual_seed(7)
    loss = contrastive_backward(engine, local, 0, TEMPERATURE, chunk_size, DeepSpeedBackward(engine), mask=mask)
    # safe_get_full_grad is a collective: every rank calls it, before step() clears the gradients.
    grads = {n: safe_get_full_grad(p).detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
    engine.step()
    state = gathered_lora_state_dict(engine.module)
    if rank == 0:
        torch.save({"loss": loss, "grads": grads, "mask": mask}, Path(out_dir) / "grads.pt")
        save_adapter(engine.module, state, Path(out_dir) / "adapter")
    dist.barrier()
    dist.destroy_process_group()


def _reference(mask=None):
    model = lora_model()
    torch.manual_seed(7)
    loss = contrastive_backward(model, dict(batch(n=GLOBAL, k=1), num_negatives=1), 0, TEMPERATURE, None, mask=mask)
    return loss, lora_grads(model)


@pytest.mark.parametrize("world_size, chunk_size, checkpointing", [
    (1, 3, False), (2, 3, True),
    pytest.param(2, None, False, marks=pytest.mark.slow),  # cross-worker gather without caching
])
def test_zero3_worker_gradient_equals_global_batch_gradient(tmp_path, world_size, chunk_size, checkpointing):
    ref_loss, ref = _reference()
    mp.spawn(_worker, args=(world_size, free_port(), chunk_size, checkpointing, str(tmp_path)),
             nprocs=world_size, join=True)
    got = torch.load(tmp_path / "grads.pt")
    assert set(got["grads"]) == set(ref)
    assert max(g.abs().max().item() for n, g in ref.items() if "lora_A" in n) > 1e-3
    for name, g in ref.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=2e-4, msg=name)
    # The saved adapter holds full tensors (not ZeRO-3's (0,)-shaped placeholders) and loads.
    from peft import PeftModel
    from safetensors.torch import load_file

    from embedforge.testing import tiny_model

    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert tensors and all(t.numel() > 0 for t in tensors.values())
    loaded = PeftModel.from_pretrained(tiny_model("llama"), str(tmp_path / "adapter"))
    assert sum(p.numel() for n, p in loaded.named_parameters() if "lora_" in n) == sum(
        t.numel() for t in tensors.values())


def test_guide_masked_cross_worker_gradient_equals_single_process_masked_gradient(tmp_path):
    """train.guide_model on 2 gloo workers under ZeRO-3 with gradient caching: the guide mask built
    from the workers' gathered guide embeddings equals the single-process mask of the global batch, and
    each worker's LoRA gradient equals the single-process, no-caching gradient of the masked loss."""
    record = dict(batch(n=GLOBAL, k=1), num_negatives=1)
    mask = tiny_guide().mask(record, torch.device("cpu"))
    assert 0 < mask.sum() < mask.numel()  # some candidates masked, not all
    ref_loss, ref = _reference(mask)
    _, unmasked = _reference()
    assert any(not torch.allclose(ref[n], unmasked[n], atol=1e-5) for n in ref)  # the mask matters
    mp.spawn(_worker, args=(2, free_port(), 3, False, str(tmp_path), True), nprocs=2, join=True)
    got = torch.load(tmp_path / "grads.pt")
    assert torch.equal(got["mask"], mask)
    for name, g in ref.items():
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=2e-4, msg=name)


def _precision_worker(rank, port, precision, offload, out_dir):
    import deepspeed
    import torch.distributed as dist
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad

    from embedforge.train.engine import init_engine
    from embedforge.train.gradcache import DeepSpeedBackward

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = TrainConfig(global_batch_size=GLOBAL, num_workers=1, chunk_size=3, warmup_steps=0, temperature=TEMPERATURE,
                      deepspeed={"stage": 3, "precision": precision, "offload": offload, "gradient_clipping": 0})
    engine, _ = init_engine(lora_model(), cfg, total_steps=10)
    torch.manual_seed(7)
    contrastive_backward(engine, dict(batch(n=GLOBAL, k=1), num_negatives=1), 0, TEMPERATURE, 3,
                         DeepSpeedBackward(engine))
    lora = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    grads = {n: safe_get_full_grad(p).detach().float().clone() for n, p in lora}
    before = {n: safe_get_full_fp32_param(p).clone() for n, p in lora}
    engine.step()
    after = {n: safe_get_full_fp32_param(p).clone() for n, p in lora}
    torch.save({"grads": grads, "before": before, "after": after,
                "dtype": str(next(engine.module.parameters()).dtype)}, Path(out_dir) / "step.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("precision, offload, min_cosine", [
    ("bf16", "none", 0.99),   # bf16 weights/activations: the gradient points the same way
    ("fp32", "cpu", None),    # optimizer + parameter offload: the same gradient as without
    pytest.param("bf16", "cpu", 0.99, marks=pytest.mark.slow),  # both together (each is covered above)
])
def test_zero3_precision_and_offload_paths_take_a_real_step(tmp_path, precision, offload, min_cosine):
    """The DeepSpeed configs the trainer generates for bf16 and CPU offload run under ZeRO-3 with
    gradient caching: the LoRA gradient matches the fp32 full-batch reference and the step moves the
    fp32 master weights. (fp16 needs a GPU: the config refuses it on CPU, see test_train_data.)"""
    _, ref = _reference()
    mp.spawn(_precision_worker, args=(free_port(), precision, offload, str(tmp_path)), nprocs=1, join=True)
    got = torch.load(tmp_path / "step.pt")
    assert got["dtype"] == ("torch.bfloat16" if precision == "bf16" else "torch.float32")
    flat_got = torch.cat([got["grads"][n].flatten() for n in ref])
    flat_ref = torch.cat([ref[n].flatten() for n in ref])
    if min_cosine is None:
        torch.testing.assert_close(flat_got, flat_ref, rtol=1e-4, atol=2e-4)
    else:
        assert torch.nn.functional.cosine_similarity(flat_got, flat_ref, dim=0).item() >= min_cosine
    moved = sum((got["after"][n] - got["before"][n]).abs().sum().item() for n in ref)
    assert moved > 1e-3, "the optimizer step did not change the LoRA weights"
