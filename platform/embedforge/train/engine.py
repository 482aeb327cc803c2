"""DeepSpeed engine setup and one optimizer step of contrastive training."""

from __future__ import annotations

import torch

from embedforge.config.train import TrainConfig
from embedforge.train.collectives import mean_over_workers
from embedforge.train.ds_config import deepspeed_config, lr_schedule
from embedforge.train.gradcache import DeepSpeedBackward, contrastive_backward


def init_engine(model, train: TrainConfig, total_steps: int):
    """``deepspeed.initialize`` on the LoRA (or fully trainable) model with the generated config (the
    process group exists). The trainable weights go in AdamW groups: ``train.weight_decay`` on
    matrices, none on biases and norms (``model.optimizer_param_groups``; LoRA has matrices only)."""
    import deepspeed

    from embedforge.train.model import optimizer_param_groups

    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=optimizer_param_groups(model, train.weight_decay), config=deepspeed_config(train),
        lr_scheduler=lr_schedule(train, total_steps),
    )
    return engine, scheduler


def engine_device(engine) -> torch.device:
    return torch.device(engine.device) if not isinstance(engine.device, torch.device) else engine.device


def train_step(engine, local: dict, pad_id: int, train: TrainConfig, pooling: str = "last_token",
               guide=None) -> dict:
    """Forward/backward of this worker's slice of a global batch, then one optimizer step.

    ``guide`` (``train.guide.Guide``, when ``train.guide_model`` is set): the step's false-negative
    mask over the global batch is built first, once, and the loss applies it.

    Returns the step's loss averaged over workers, the learning rate used, and the gradient norm; with
    a guide also ``guide_masked``, the candidates masked per query (mean over the global batch).
    """
    lr = engine.get_lr()[0] if engine.lr_scheduler is not None else train.lr
    device = engine_device(engine)
    mask = guide.mask(local, device) if guide is not None else None
    loss = contrastive_backward(
        engine, local, pad_id, train.temperature, train.chunk_size, DeepSpeedBackward(engine),
        pooling=pooling, device=device, mask=mask,
    )
    engine.step()
    norm = engine.get_global_grad_norm()
    mean_loss = mean_over_workers(loss, device)
    metrics = {"loss": mean_loss, "lr": float(lr), "grad_norm": float(norm) if norm is not None else float("nan")}
    if mask is not None:  # the same global mask on every worker: no collective needed
        metrics["guide_masked"] = float(mask.sum().item()) / mask.shape[0]
    return metrics
