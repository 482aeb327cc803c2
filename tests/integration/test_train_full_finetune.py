"""Full fine-tuning (``train.finetune: full``) of an encoder under DeepSpeed ZeRO-3 on 2 gloo processes
(no Ray): the loop's own loading, engine, step, gathering, checkpoint and resume.

Right after loading every weight is a ZeRO-3 partition and trainable (the unused pooler frozen); two
steps change every trained weight; the fp32 master weights gather whole and identical on both ranks
and save as a directory ``from_pretrained`` loads; an engine resumed from the ZeRO checkpoint takes the
same third step as the one that never stopped (weights and Adam moments restored). LoRA on the same
encoder steps under ZeRO-3 too, with no adapter on the pooler.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_train_encoder import _batch, tiny_bert  # noqa: E402

from embedforge.ray_utils import free_port  # noqa: E402

GLOBAL = 4


def _config(world_size, precision, finetune):
    from embedforge.config.train import TrainConfig

    return TrainConfig(finetune=finetune, global_batch_size=GLOBAL, num_workers=world_size, chunk_size=3, warmup_steps=0,
                       lr=1e-3, weight_decay=0.01, temperature=0.05, gradient_checkpointing=True,
                       lora={"r": 4, "alpha": 8, "dropout": 0.0},
                       deepspeed={"stage": 3, "precision": precision, "gradient_clipping": 1.0})


def _engine(backbone_dir, cfg):
    from embedforge.train.ds_config import backbone_loading
    from embedforge.train.engine import init_engine
    from embedforge.train.model import load_trainable_model

    dtype, zero3_config = backbone_loading(cfg)
    model = load_trainable_model(backbone_dir, cfg, dtype, zero3_config)
    loaded = {n: {"ds_id": hasattr(p, "ds_id"), "requires_grad": p.requires_grad, "dtype": str(p.dtype)}
              for n, p in model.named_parameters()}
    engine, _ = init_engine(model, cfg, total_steps=10)
    return engine, loaded


def _step(engine, cfg, rank, world_size, seed):
    from embedforge.train.batching import worker_slice
    from embedforge.train.engine import train_step

    torch.manual_seed(seed)  # the same dropout masks for a step re-run after a resume
    local = worker_slice(dict(_batch(seed=seed, n=GLOBAL)), rank, world_size)
    return train_step(engine, local, 0, cfg, pooling="mean")["loss"]


def _worker(rank, world_size, port, backbone_dir, precision, finetune, out_dir):
    import deepspeed
    import torch.distributed as dist

    from embedforge.train.model import gathered_full_state_dict, gathered_lora_state_dict, save_full_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = _config(world_size, precision, finetune)
    engine, loaded = _engine(backbone_dir, cfg)
    result = {"loaded": loaded}
    if finetune == "lora":
        result["losses"] = [_step(engine, cfg, rank, world_size, seed) for seed in (1, 2)]
        result["adapter"] = gathered_lora_state_dict(engine.module)
    else:
        result["losses"] = [_step(engine, cfg, rank, world_size, seed) for seed in (1, 2)]
        result["trained"] = gathered_full_state_dict(engine.module)
        ckpt = Path(out_dir) / "ckpt"
        engine.save_checkpoint(str(ckpt), tag="state")  # every rank writes its partitions
        result["module_dtype"] = {n: str(p.dtype) for n, p in engine.module.named_parameters()}
        if rank == 0:
            save_full_model(engine.module, result["trained"], backbone_dir, Path(out_dir) / "merged")
        dist.barrier()
        # Resume: a fresh engine loads the checkpoint and takes the third step like the original one.
        resumed, _ = _engine(backbone_dir, cfg)
        resumed.load_checkpoint(str(ckpt), tag="state")
        result["resumed"] = gathered_full_state_dict(resumed.module)
        result["third"] = _step(engine, cfg, rank, world_size, 3)
        result["third_resumed"] = _step(resumed, cfg, rank, world_size, 3)
        result["after_third"] = gathered_full_state_dict(engine.module)
        result["after_third_resumed"] = gathered_full_state_dict(resumed.module)
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _run(tmp_path, precision, finetune):
    from embedforge.models import load_tokenizer, resolve_backbone

    # The tiny BERT shares MiniLM's vocabulary: its tokenizer goes into the saved model.
    backbone = tiny_bert(tmp_path / "bert")
    load_tokenizer(resolve_backbone("all-minilm-l6-v2")).save_pretrained(backbone)
    mp.spawn(_worker, args=(2, free_port(), str(backbone), precision, finetune, str(tmp_path)), nprocs=2, join=True)
    return backbone, [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_full_finetuning_trains_every_weight_under_zero3_and_resumes(tmp_path, precision):
    from safetensors.torch import load_file
    from transformers import AutoModel

    backbone, (first, second) = _run(tmp_path, precision, "full")
    original = load_file(backbone / "model.safetensors")
    for got in (first, second):
        for name, state in got["loaded"].items():
            assert state["ds_id"], f"{name} was loaded whole, not as a ZeRO-3 partition"
            assert state["requires_grad"] == (not name.startswith("pooler.")), name
        assert all(torch.isfinite(torch.tensor(loss)) for loss in got["losses"])
    trained = first["trained"]
    assert set(trained) >= set(original)
    for name, value in trained.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(second["trained"][name], value, rtol=0, atol=0, msg=name)  # the same on both ranks
        if name in original and name.startswith("pooler."):  # frozen: as loaded, in the training precision
            want = original[name].to(torch.bfloat16 if precision == "bf16" else torch.float32).float()
            torch.testing.assert_close(value, want, rtol=0, atol=0, msg=name)
        elif name in original:
            assert not torch.equal(value, original[name].float()), f"{name} did not change"
    if precision == "bf16":
        # The fp32 masters, not the module's bf16 copy: some weight holds more than bf16 can.
        assert first["module_dtype"]["encoder.layer.0.attention.self.query.weight"] == "torch.bfloat16"
        assert any(not torch.equal(v, v.bfloat16().float()) for n, v in trained.items() if not n.startswith("pooler."))
    # merged/: a plain directory of the trained fp32 weights.
    loaded = AutoModel.from_pretrained(tmp_path / "merged").state_dict()
    for name, value in trained.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)
    # Resume: weights and optimizer state come back; the third step then matches the uninterrupted one.
    for name, value in trained.items():
        torch.testing.assert_close(first["resumed"][name], value, rtol=0, atol=0, msg=name)
    assert first["third_resumed"] == pytest.approx(first["third"], rel=1e-5)
    moved = [n for n in trained if not torch.equal(first["after_third"][n], trained[n])]
    assert moved
    for name in trained:
        torch.testing.assert_close(first["after_third_resumed"][name], first["after_third"][name], rtol=1e-5, atol=1e-6,
                                   msg=name)


def test_lora_on_an_encoder_steps_under_zero3_without_an_adapter_on_the_pooler(tmp_path):
    _, (first, second) = _run(tmp_path, "fp32", "lora")
    lora = {n for n, s in first["loaded"].items() if s["requires_grad"]}
    assert lora and all("lora_" in n for n in lora) and not any("pooler" in n for n in lora)
    adapter = first["adapter"]
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    assert any(t.abs().max() > 0 for k, t in adapter.items() if "lora_B" in k)
    assert all(torch.equal(adapter[k], second["adapter"][k]) for k in adapter)
