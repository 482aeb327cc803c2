"""The DeepSpeed config generated from the ``train:`` section.

``gradient_accumulation_steps`` is always 1: gradient caching accumulates chunk gradients itself
(with ``set_gradient_accumulation_boundary``), and one global batch is one optimizer step.
"""

from __future__ import annotations

from embedforge.config.train import TrainConfig


def deepspeed_config(train: TrainConfig) -> dict:
    """AdamW (torch's, so CPU workers need no compiled op); the schedule is ``lr_schedule`` (a client
    scheduler: DeepSpeed's WarmupDecayLR refuses ``warmup_num_steps=0``)."""
    ds = train.deepspeed
    zero: dict = {"stage": ds.stage}
    if ds.stage == 3:
        # Gathered 16-bit weights are not needed: the adapter is gathered explicitly on save.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    if ds.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": train.use_gpu}
        if ds.stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": train.use_gpu}
    config = {
        "train_micro_batch_size_per_gpu": train.local_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": train.global_batch_size,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": train.lr, "weight_decay": train.weight_decay, "betas": [0.9, 0.999],
                       "eps": 1e-8, "torch_adam": True},
        },
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.gradient_clipping > 0:
        config["gradient_clipping"] = ds.gradient_clipping
    if ds.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif ds.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config


# train.deepspeed.precision -> the dtype name (embedforge.models.DTYPES) the engine holds the weights in.
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def backbone_loading(train: TrainConfig) -> tuple[str, dict | None]:
    """(dtype, zero3_config) for ``load_lora_model`` on a training worker.

    ZeRO-3: the training precision and the engine's own DeepSpeed config, so each worker builds the
    backbone already partitioned (1/world_size of every weight) instead of whole in fp32 first
    (28 GB of host memory per worker for a 7B backbone) and partitions it exactly as the engine
    will. Stages 0-2 keep every weight on every worker anyway: whole, in fp32, and DeepSpeed casts it.
    """
    if train.deepspeed.stage == 3:
        return PRECISION_DTYPES[train.deepspeed.precision], deepspeed_config(train)
    return "float32", None


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 over ``warmup_steps``, then linear decay to 0 at ``total_steps``."""
    total = max(int(total_steps), warmup_steps + 1)
    if step < warmup_steps:
        return lr * step / warmup_steps
    return lr * max(0.0, (total - step) / (total - warmup_steps))


def lr_schedule(train: TrainConfig, total_steps: int):
    """A callable DeepSpeed turns into the client scheduler: ``optimizer -> LambdaLR``."""
    from torch.optim.lr_scheduler import LambdaLR

    def make(optimizer):
        return LambdaLR(optimizer, lambda step: lr_at(step, 1.0, train.warmup_steps, total_steps))

    return make
