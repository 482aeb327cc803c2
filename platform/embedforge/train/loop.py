"""The Ray Train worker loop: DeepSpeed engine, resume, steps, reports, checkpoints, final outputs."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from embedforge.config.train import TrainConfig
from embedforge.embedders import EmbedderSpec
from embedforge.train.batching import count_tokens, derived_seed, worker_slice
from embedforge.train.collectives import check_same_batch, sum_over_workers

CHECKPOINT_TAG = "state"
PROGRESS_FILE = "progress.json"


class WorkerPlan(BaseModel):
    """What every training worker receives (Ray Train's ``train_loop_config``, as JSON-safe data)."""

    train: TrainConfig
    backbone: str  # the model.backbone spec; each worker resolves it on its own node
    out_dir: str  # the train stage's folder in the run's storage (a local path, a shared mount or a URI)
    total_steps: int = Field(ge=1)
    pooling: str  # the student's pooling (train/runner.py: student_settings)
    # The frozen guide model of false-negative masking (train.guide_model; train/guide.py), null: off.
    guide: EmbedderSpec | None = None
    seed: int = 0  # run.seed: the trainable weights' initial values and every step's dropout draw from it


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of one worker's step: dropout is a function of (run.seed, rank, step), so a rerun
    repeats every step, and so does a run resumed from a checkpoint (a seed set once at the start would
    give the steps after a restart other masks than the first attempt's)."""
    return derived_seed(seed, f"rank {rank} step {step}")


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train

    from embedforge.embedders import resolve
    from embedforge.prompts import pad_token_id
    from embedforge.train.ds_config import backbone_loading
    from embedforge.train.engine import engine_device, init_engine, train_step
    from embedforge.train.model import (
        gathered_full_state_dict,
        gathered_lora_state_dict,
        load_trainable_model,
        save_adapter,
        save_full_model,
    )

    plan = WorkerPlan.model_validate(config)
    train = plan.train
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    if world_size != train.num_workers:
        raise RuntimeError(f"expected {train.num_workers} workers, got {world_size}")
    deepspeed.init_distributed(dist_backend="nccl" if train.use_gpu else "gloo")
    from embedforge import storage
    from embedforge.models import load_tokenizer

    # Rank 0 writes in this node's working copy and publishes to the run's storage (the same folder
    # when the storage is a local path or a shared mount).
    work_dir = storage.working_dir(plan.out_dir)

    # This node's copy (a hub model: fetched once per node); a sentence-transformers directory's
    # transformer folder.
    backbone_path = resolve(EmbedderSpec(backbone=plan.backbone)).weights
    tokenizer = load_tokenizer(backbone_path)
    pad = pad_token_id(tokenizer)
    # Under ZeRO-3 every worker builds the backbone partitioned, in the training precision; LoRA or
    # every weight trainable (train.finetune).
    dtype, zero3_config = backbone_loading(train)
    torch.manual_seed(plan.seed)  # the same on every rank: LoRA's initial weights
    model = load_trainable_model(backbone_path, train, dtype, zero3_config)
    total_steps = plan.total_steps
    engine, _ = init_engine(model, train, total_steps)
    device = engine_device(engine)  # the process group's device: every collective's tensors live there
    guide = None
    if plan.guide is not None:  # frozen, on this worker's device, loaded after the (ZeRO-3) backbone
        from embedforge.train.guide import Guide

        guide = Guide.load(plan.guide, tokenizer, train.guide_margin_strategy, train.guide_margin, device)

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=CHECKPOINT_TAG)
            start_step = json.loads((Path(d) / PROGRESS_FILE).read_text())["step"]
    metrics_path = work_dir / "metrics.jsonl"
    remote_metrics = storage.join(plan.out_dir, "metrics.jsonl")
    if rank == 0 and storage.is_uri(plan.out_dir) and storage.exists(remote_metrics):
        storage.download(remote_metrics, metrics_path)  # a restarted group, maybe on another node
    shard = ray.train.get_dataset_shard("train")

    # The batch dataset holds every epoch's steps in order (each epoch dealt on its own: train/dataset.py).
    step = 0
    for record in shard.iter_rows():
        if step >= total_steps:
            break
        if step < start_step:  # consumed before the restart
            step += 1
            continue
        check_same_batch(record["order"], device)
        epoch = int(record["epoch"])
        local = worker_slice(record, rank, world_size)
        t0 = time.perf_counter()
        torch.manual_seed(step_seed(plan.seed, rank, step))
        metrics = train_step(engine, local, pad, train, pooling=plan.pooling, guide=guide)
        seconds = time.perf_counter() - t0
        step += 1
        tokens = sum_over_workers(count_tokens(local), device)
        # The batch's group: batches are same-task, so the loss jumps between groups (an easy paraphrase
        # batch near 0, a retrieval batch near 2); the summary and the loss curve read it per group.
        metrics.update(step=step, epoch=epoch, group=str(record["group"]), seconds=seconds, tokens_per_s=tokens / seconds,
                       examples_per_s=len(record["query_ids"]) / seconds, resumed_from=start_step)
        if rank == 0:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
        if step % train.checkpoint_every == 0 or step == total_steps:
            with tempfile.TemporaryDirectory() as tmp:
                # Every rank writes its own ZeRO partition; Ray merges the ranks' directories.
                engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG)
                if rank == 0:
                    (Path(tmp) / PROGRESS_FILE).write_text(json.dumps({"step": step, "epoch": epoch}))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            if rank == 0:
                storage.upload(metrics_path, remote_metrics)
        elif step % train.log_every == 0:
            ray.train.report(metrics)

    # LoRA: only the adapter (small) is gathered and written here; merging it into the backbone and
    # the sentence-transformers export run in a Ray task after training (train/export.py), not on rank 0
    # while the other ranks wait at a barrier (at 7B that outlasted the process group's timeout).
    # Full fine-tuning: the trained weights exist only as the workers' partitions, so they are gathered
    # here (fp32 masters, one weight at a time) and rank 0 writes merged/ (a plain HF directory); the
    # export task then only writes the sentence-transformers directory. Meant for small students.
    if train.finetune == "full":
        state = gathered_full_state_dict(engine.module, keep=rank == 0)  # a collective: every rank takes part
        if rank == 0:
            save_full_model(engine.module, state, backbone_path, work_dir / "merged")
            storage.upload(work_dir / "merged", storage.join(plan.out_dir, "merged"))
    else:
        state = gathered_lora_state_dict(engine.module)  # a collective: every rank takes part
        if rank == 0:
            save_adapter(engine.module, state, work_dir / "adapter")
            storage.upload(work_dir / "adapter", storage.join(plan.out_dir, "adapter"))
    if rank == 0:
        storage.upload(metrics_path, remote_metrics)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
