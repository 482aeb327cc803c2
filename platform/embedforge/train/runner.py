"""``embedforge train``: validate, prepare the data with Ray Data, run the Ray Train job, plot.

Rerunning the same command after a driver crash resumes: Ray Train V2 finds the run's snapshot under
``storage_path/name`` and hands the workers the latest checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from embedforge.config.train import TrainConfig


class TrainResult(BaseModel):
    """What a training run wrote under ``<run>/train`` (also ``train/summary.json``).

    ``checkpoint``, ``adapter``, ``merged`` and ``sentence_transformers`` are paths in the run's storage
    (URIs when it is an object store: each node that needs one fetches it, ``storage.local_copy``);
    ``metrics`` and ``loss_curve`` are in the driver's working copy of the run (and published too)."""

    sources: list[dict[str, Any]]  # per data source: path, rows read, valid rows
    mixed_rows: int
    steps_per_epoch: int
    mixed_batches: int = 0  # batches packed from the groups' leftovers (every step holds a whole batch)
    rows_dropped_per_epoch: int = 0  # leftover rows that filled no batch
    total_steps: int
    final_metrics: dict[str, Any] = Field(default_factory=dict)  # the last step's reported metrics
    checkpoint: str | None
    adapter: str
    merged: str
    sentence_transformers: str
    exported_by: str = ""  # "<host> pid <pid> node <ray node id>" of the export task (train/export.py)
    metrics: str  # metrics.jsonl, one line per optimizer step
    loss_curve: str


def validate_before_training(cfg) -> str:
    """Checks that need the backbone (not only the config); returns the backbone spec that workers,
    tasks and the export resolve on their own nodes (a path into this node's cache would not exist on
    the others)."""
    from embedforge.models import is_hub_id, node_portable_spec, resolve_backbone
    from embedforge.train.model import check_target_modules, meta_backbone

    spec = node_portable_spec(cfg.model.backbone)
    # A hub backbone's module tree needs only its config.json, not the weights on this (driver) node.
    check_target_modules(meta_backbone(spec if is_hub_id(spec) else resolve_backbone(spec)),
                         cfg.train.lora.target_modules)
    return spec


def total_steps(train: TrainConfig, steps_per_epoch: int) -> int:
    steps = steps_per_epoch * train.epochs
    return min(steps, train.max_steps) if train.max_steps else steps


def training_instructions() -> dict[str, str]:
    """Task name -> instruction for the sentence-transformers ``prompts`` (the paper's table, every
    MTEB English task by name, CQADupstack's forums included)."""
    from embedforge.instructions import named_instructions

    return named_instructions()


def export_instructions(model_cfg) -> dict[str, str]:
    """The exported model's ``prompts``: none for a model trained with ``model.instructions: false``
    (its queries are encoded exactly like documents)."""
    return training_instructions() if model_cfg.instructions else {}


def plot_loss_curve(metrics_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = {}
    for line in metrics_path.read_text().splitlines():
        m = json.loads(line)
        last[m["step"]] = m["loss"]  # a step re-run after a restart: keep the latest value
    steps = sorted(last)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [last[s] for s in steps], marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("InfoNCE loss (mean over workers)")
    ax.set_title("training loss")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def train_model(cfg) -> TrainResult:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from embedforge import storage
    from embedforge.ray_utils import check_capacity, format_resources, init_ray
    from embedforge.train.dataset import build_batches
    from embedforge.train.export import ExportPlan, run_export_task
    from embedforge.train.guide import guide_spec
    from embedforge.train.loop import WorkerPlan, train_loop_per_worker
    from embedforge.train.mining import mining_spec

    train = cfg.train
    run_dir = cfg.run.dir.resolve()
    out_dir = run_dir / "train"  # this node's working copy
    out_dir.mkdir(parents=True, exist_ok=True)
    published = storage.join(cfg.run.storage, "train")  # what the workers and the export task write to
    backbone = validate_before_training(cfg)

    init_ray()
    worker = {"CPU": float(train.cpus_per_worker), **({"GPU": 1.0} if train.use_gpu else {}),
              **train.resources_per_worker}
    check_capacity("train", [worker] * train.num_workers,
                   f"{train.num_workers} training workers × {format_resources(worker)} (train.num_workers, train.cpus_per_worker, "
                   "train.use_gpu, train.resources_per_worker)", mode=cfg.run.resource_check)
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    batches, summary = build_batches(train, backbone, cfg.run.storage, cfg.run.seed,
                                     mining_spec(cfg.model, train.mining_model),
                                     instructions=cfg.model.instructions, resource_check=cfg.run.resource_check,
                                     lengths=cfg.training_lengths())
    steps = total_steps(train, summary["steps_per_epoch"])
    # Ray Train writes checkpoints through pyarrow's filesystems: a URI works as it is.
    ray_storage = train.storage_path or storage.join(cfg.run.storage, "ray_train")
    if not storage.is_uri(ray_storage):
        ray_storage = str(Path(ray_storage).resolve())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=WorkerPlan(
            train=train, backbone=backbone, out_dir=published, total_steps=steps,
            pooling=cfg.model.pooling, guide=guide_spec(cfg.model, train.guide_model),
        ).model_dump(mode="json"),
        scaling_config=ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu,
                                     resources_per_worker={"CPU": train.cpus_per_worker, **train.resources_per_worker}),
        run_config=RunConfig(name=f"{cfg.run.name}-train", storage_path=ray_storage,
                             failure_config=FailureConfig(max_failures=train.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": batches},
        dataset_config=DataConfig(datasets_to_split=[]),
        torch_config=TorchConfig(backend="nccl" if train.use_gpu else "gloo"),
    )
    result = trainer.fit()
    # The worker group is gone: merging and the sentence-transformers export run in a task of their own.
    exported = run_export_task(
        ExportPlan(backbone=backbone, out_dir=published, max_length=cfg.model.max_length,
                   prompts=export_instructions(cfg.model), pooling=cfg.model.pooling, normalize=cfg.model.normalize),
        num_cpus=train.cpus_per_worker, use_gpu=train.use_gpu, resources=train.resources_per_worker)
    metrics_path = out_dir / "metrics.jsonl"
    if storage.is_uri(published) and storage.exists(storage.join(published, "metrics.jsonl")):
        storage.download(storage.join(published, "metrics.jsonl"), metrics_path)
    if metrics_path.is_file():
        plot_loss_curve(metrics_path, out_dir / "loss_curve.png")
    done = TrainResult(
        **summary,
        total_steps=steps,
        final_metrics=json.loads(json.dumps(result.metrics or {}, default=str)),
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        adapter=storage.join(published, "adapter"),
        merged=exported.merged,
        sentence_transformers=exported.sentence_transformers,
        exported_by=f"{exported.host} pid {exported.pid} node {exported.node_id}",
        metrics=str(metrics_path),
        loss_curve=str(out_dir / "loss_curve.png"),
    )
    (out_dir / "summary.json").write_text(done.model_dump_json(indent=2))
    for name in ("summary.json", "loss_curve.png"):
        if (out_dir / name).is_file():
            storage.upload(out_dir / name, storage.join(published, name))
    return done
