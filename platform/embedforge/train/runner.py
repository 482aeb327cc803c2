"""``embedforge train``: validate, prepare the data with Ray Data, run the Ray Train job, plot.

Rerunning the same command after a driver crash resumes: Ray Train V2 finds the run's snapshot under
``storage_path/name`` and hands the workers the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from embedforge.config.train import TrainConfig

log = logging.getLogger(__name__)


class TrainResult(BaseModel):
    """What a training run wrote under ``<run>/train`` (also ``train/summary.json``).

    ``checkpoint``, ``adapter``, ``merged`` and ``sentence_transformers`` are paths in the run's storage
    (URIs when it is an object store: each node that needs one fetches it, ``storage.local_copy``);
    ``metrics`` and ``loss_curve`` are in the driver's working copy of the run (and published too).
    ``adapter`` is None after full fine-tuning (``merged`` holds the trained weights)."""

    sources: list[dict[str, Any]]  # per data source: path, rows read, valid rows
    mixed_rows: int
    # Per epoch (each epoch is dealt with its own seed, so these may differ a little between epochs):
    steps_per_epoch: list[int]
    mixed_batches: list[int]  # batches packed from the groups' leftovers (every step holds a whole batch)
    rows_dropped_per_epoch: list[int]  # leftover rows that filled no batch
    total_steps: int
    final_metrics: dict[str, Any] = Field(default_factory=dict)  # the last step's reported metrics
    # Per batch group: steps, first / median / last loss (``loss_by_group``); empty for older runs.
    loss_by_group: dict[str, dict[str, int | float]] = Field(default_factory=dict)
    checkpoint: str | None
    adapter: str | None
    merged: str
    sentence_transformers: str
    exported_by: str = ""  # "<host> pid <pid> node <ray node id>" of the export task (train/export.py)
    metrics: str  # metrics.jsonl, one line per optimizer step
    loss_curve: str


class Student(BaseModel):
    """The model being trained, as the driver resolved it (``validate_before_training``)."""

    backbone: str  # the spec workers, tasks and the export resolve on their own nodes
    kind: Literal["decoder", "encoder"]  # embedforge.models.backbone_kind
    pooling: str  # model.pooling (a sentence-transformers backbone's own pooling: they must agree)
    sentence_transformers: bool  # the backbone is a sentence-transformers directory

    @property
    def append_eos(self) -> bool:
        return self.kind == "decoder"


def validate_before_training(cfg) -> Student:
    """Checks that need the backbone (not only the config); returns the student, whose ``backbone`` is
    the spec that workers, tasks and the export resolve on their own nodes (a path into this node's
    cache would not exist on the others).

    The backbone's kind and settings come from the one loader (``embedforge.embedders.resolve``), so
    the student is trained as it is loaded everywhere else: an encoder (BERT family) keeps its
    tokenizer's own ``[CLS] … [SEP]`` (no EOS appended); a sentence-transformers backbone's own
    Pooling module must agree with ``model.pooling``, which the trained model is exported, evaluated
    and served with. Fails naming the setting: a LoRA target module absent from the backbone
    (``train.finetune: lora``), a pooling that disagrees, an encoder's ``model.max_length`` beyond its
    position limit."""
    from embedforge.embedders import EmbedderSpec, resolve
    from embedforge.models import ENCODER, is_hub_id, kind_of_config, load_tokenizer, node_portable_spec
    from embedforge.train.model import check_target_modules, meta_backbone

    spec = node_portable_spec(cfg.model.backbone)
    if is_hub_id(spec):
        # A hub backbone's kind and module tree need only its config.json, not the weights on this
        # (driver) node; its sentence-transformers files are read by the workers, which load it.
        from transformers import AutoConfig

        kind, weights, st = kind_of_config(AutoConfig.from_pretrained(spec)), spec, False
    else:
        used = resolve(EmbedderSpec.of(cfg.model, backbone=spec), weights=False)
        kind, weights, st = used.kind, used.weights, used.sentence_transformers
        if st and used.pooling != cfg.model.pooling:
            raise ValueError(
                f"model.pooling: {cfg.model.pooling!r}, but the backbone {cfg.model.backbone!r} is a sentence-transformers "
                f"model pooled with {used.pooling!r} (its Pooling module); the student is trained, exported, evaluated "
                f"and served with one pooling: set model.pooling: {used.pooling} (to train it with another pooling, "
                "give its transformer folder without modules.json as model.backbone)")
        if kind == ENCODER:
            limit = load_tokenizer(weights).model_max_length
            if isinstance(limit, int) and limit < 1_000_000 and cfg.model.max_length - 1 > limit:
                raise ValueError(
                    f"model.max_length ({cfg.model.max_length}) is beyond the encoder's {limit} positions: an encoder "
                    f"sees max_length - 1 tokens ([CLS] and [SEP] included); set model.max_length <= {limit + 1}")
    if kind == ENCODER and cfg.model.pooling == "last_token":
        log.warning("model.pooling=last_token on an encoder pools its [SEP] token; encoders are usually mean-pooled "
                    "(model.pooling: mean)")
    if cfg.train.finetune == "lora":
        check_target_modules(meta_backbone(weights), cfg.train.lora.target_modules)
    return Student(backbone=spec, kind=kind, pooling=cfg.model.pooling, sentence_transformers=st)


def total_steps(train: TrainConfig, steps_per_epoch: list[int]) -> int:
    steps = sum(steps_per_epoch)
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


def read_step_metrics(metrics_path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's steps in step order; a step re-run after a restart keeps its latest line."""
    last: dict[int, dict[str, Any]] = {}
    for line in metrics_path.read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            last[int(m["step"])] = m
    return [last[s] for s in sorted(last)]


def loss_by_group(steps: list[dict[str, Any]]) -> dict[str, dict[str, int | float]]:
    """Per batch group (``mixed``: packed from the groups' leftovers): its number of steps and its first,
    median and last loss. Batches are same-task, so one curve over all steps zigzags between easy and
    hard groups; each group's own curve shows whether it learns. Steps logged without a group (runs
    before it was logged) are left out."""
    losses: dict[str, list[float]] = {}
    for m in steps:
        if "group" in m:
            losses.setdefault(str(m["group"]), []).append(float(m["loss"]))
    return {g: {"steps": len(v), "first": v[0], "median": float(statistics.median(v)), "last": v[-1]}
            for g, v in sorted(losses.items())}


def plot_loss_curve(steps: list[dict[str, Any]], out_png: Path) -> None:
    """The loss per optimizer step (``read_step_metrics``), one series per batch group when the steps carry one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict[str, Any]]] = {}
    for m in steps:
        series.setdefault(str(m.get("group", "all")), []).append(m)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in sorted(series.items()):
        ax.plot([m["step"] for m in points], [m["loss"] for m in points], marker="o", label=name)
    if len(series) > 1:
        ax.legend(title="batch group", fontsize="small")
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
    student = validate_before_training(cfg)
    backbone = student.backbone

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
                                     lengths=cfg.training_lengths(), append_eos=student.append_eos)
    steps = total_steps(train, summary["steps_per_epoch"])
    # Ray Train writes checkpoints through pyarrow's filesystems: a URI works as it is.
    ray_storage = train.storage_path or storage.join(cfg.run.storage, "ray_train")
    if not storage.is_uri(ray_storage):
        ray_storage = str(Path(ray_storage).resolve())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=WorkerPlan(
            train=train, backbone=backbone, out_dir=published, total_steps=steps,
            pooling=student.pooling, guide=guide_spec(cfg.model, train.guide_model), seed=cfg.run.seed,
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
                   prompts=export_instructions(cfg.model), pooling=student.pooling, normalize=cfg.model.normalize,
                   kind=student.kind, finetune=train.finetune),
        num_cpus=train.cpus_per_worker, use_gpu=train.use_gpu, resources=train.resources_per_worker)
    metrics_path = out_dir / "metrics.jsonl"
    if storage.is_uri(published) and storage.exists(storage.join(published, "metrics.jsonl")):
        storage.download(storage.join(published, "metrics.jsonl"), metrics_path)
    per_group: dict[str, dict[str, int | float]] = {}
    if metrics_path.is_file():
        logged = read_step_metrics(metrics_path)
        plot_loss_curve(logged, out_dir / "loss_curve.png")
        per_group = loss_by_group(logged)
    done = TrainResult(
        **summary,
        total_steps=steps,
        final_metrics=json.loads(json.dumps(result.metrics or {}, default=str)),
        loss_by_group=per_group,
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        adapter=storage.join(published, "adapter") if train.finetune == "lora" else None,
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
