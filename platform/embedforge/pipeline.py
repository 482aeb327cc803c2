"""``embedforge pipeline``: generate → split → train → evaluate → serve → report in one run directory.

This module only orders the stages, fingerprints the config each depends on, keeps the markers and
dispatches; the work is in each stage's own module (``generate.runner``, ``split``, ``train.runner``,
``evaluate.runner``, ``serving.smoke``, ``report``), and each returns a typed result. A stage's marker
holds its fingerprint and that result; a rerun skips stages whose marker matches and redoes the rest
(an interrupted stage has no marker, and the stages themselves resume: generation from committed
shards, training from the last checkpoint, evaluation from the embedding cache). Everything lands
under ``<run.output_dir>/<run.name>/``: a local path, a shared mount, or an object-store URI. With a
URI the driver works in its node's copy of the run (``run.dir``): it fetches the markers and the
stages' outputs first (a rerun from another machine resumes), and publishes each stage's outputs and
marker as soon as the stage ends. Training, export, evaluation actors and Serve replicas read and
write the storage themselves, on whatever node they run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from embedforge.config import EmbedforgeConfig, with_values
from embedforge.config.pipeline import STAGE_ORDER
from embedforge.evaluate.runner import EvaluateResult, evaluate_model
from embedforge.generate.runner import GenerateResult, generate_data, ready_teachers
from embedforge.report import ReportResult, write_report
from embedforge.serving.smoke import ServeSmokeResult, smoke_test
from embedforge.split import SplitResult, run_split
from embedforge.train.runner import TrainResult, train_model

# Which config sections each stage's output depends on (besides the stages before it).
STAGE_INPUTS = {
    "generate": ("generate",),
    "split": ("pipeline.heldout",),
    "train": ("model", "train"),
    "evaluate": ("model", "evaluate", "pipeline.compare_with_backbone"),
    "serve": ("serve",),
    "report": (),
}

STAGE_RESULTS: dict[str, type[BaseModel]] = {
    "generate": GenerateResult,
    "split": SplitResult,
    "train": TrainResult,
    "evaluate": EvaluateResult,
    "serve": ServeSmokeResult,
    "report": ReportResult,
}

# What each stage leaves in the driver's working copy of the run, published to the run's storage when
# it ends (the train stage's models are written to the storage by its workers and export task). The
# embedding cache is not among them: it stays in the working copy of the node that computed it (keyed
# by the model's fingerprint, so never stale), and at MTEB scale it is far larger than any result.
STAGE_OUTPUTS = {
    "generate": ("data", "generate"),
    "split": ("pipeline/heldout", "pipeline/train_data"),
    "train": ("train/summary.json", "train/loss_curve.png", "train/metrics.jsonl"),
    "evaluate": ("evaluate",),
    "serve": (),
    "report": ("report",),
}

# The held-out queries come from many synthetic tasks: one generic retrieval instruction.
HELDOUT_INSTRUCTION = "Given a query, retrieve documents that answer or match it"


class PipelineResult(BaseModel):
    run_dir: str
    stage_seconds: dict[str, float | str]  # stage -> seconds, or "skipped"
    report: str | None  # the report's markdown file


def _section(cfg, dotted: str):
    if dotted.startswith("pipeline."):
        key = dotted.split(".", 1)[1]
        data = cfg.pipeline.model_dump(mode="json")
        return {k: v for k, v in data.items() if k.startswith(key)}
    if dotted == "evaluate.local_tasks":  # as evaluated: with the corpus's labeled queries when they count
        from embedforge.evaluate.tasks import evaluated_local_tasks

        return _jsonable(evaluated_local_tasks(cfg))
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return _jsonable(value)


def _jsonable(value):
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def stage_inputs(cfg, stage: str) -> tuple[str, ...]:
    """``STAGE_INPUTS[stage]`` plus what a setting makes the generate stage read: the model (corpus
    chunks are counted in its tokens; the consistency filter may be the backbone) and the evaluation
    tasks (the contamination index)."""
    keys = STAGE_INPUTS[stage]
    if stage == "generate":
        if cfg.generate.corpus is not None:
            keys += ("model",)
        if cfg.generate.contamination.against_evaluation:
            keys += ("evaluate.tasks", "evaluate.local_tasks")
    return keys


def stage_fingerprints(cfg) -> dict[str, str]:
    """A chained hash per stage: a change upstream invalidates everything after it."""
    prints, prev = {}, json.dumps({"seed": cfg.run.seed})
    for stage in STAGE_ORDER:
        payload = json.dumps({"prev": prev, **{k: _section(cfg, k) for k in stage_inputs(cfg, stage)}}, sort_keys=True)
        prev = prints[stage] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return prints


class Markers:
    """``<run>/pipeline/<stage>.done.json``: fingerprint + the stage's typed result, written last."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, stage: str) -> Path:
        return self.folder / f"{stage}.done.json"

    def result_if_done(self, stage: str, fingerprint: str) -> BaseModel | None:
        """The stage's result when its marker matches ``fingerprint``; a marker from another config, or
        one whose result no longer reads as this version's type, means the stage runs again."""
        path = self._path(stage)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("fingerprint") != fingerprint:
            return None
        try:
            return STAGE_RESULTS[stage].model_validate(data.get("result"))
        except ValidationError:
            return None

    def mark(self, stage: str, fingerprint: str, result: BaseModel, seconds: float) -> None:
        tmp = self._path(stage).with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "seconds": round(seconds, 1),
                                   "result": result.model_dump(mode="json")}, indent=2))
        tmp.replace(self._path(stage))


# ---------------------------------------------------------------- the stages: what each needs from before

def stage_generate(cfg, run_dir: Path, results: dict, ready=None) -> GenerateResult:
    return generate_data(cfg, ready)


def stage_split(cfg, run_dir: Path, results: dict) -> SplitResult:
    return run_split(cfg.pipeline, run_dir / "data", run_dir / "pipeline")


def training_sources(cfg, run_dir: Path, results: dict) -> list[dict]:
    """The configured sources plus the run's data: the split's training part, or — with no split stage
    (configs/paper.yaml: no held-out queries are taken from the training data) — all of it."""
    from embedforge import storage

    sources = [s.model_dump() for s in cfg.train.data]
    split = "split" in cfg.pipeline.stages and "split" in results
    # Read from the run's storage (published when the stage ended): training's Ray Data read tasks
    # may run on any node.
    local = Path(results["split"].train_data) if split else run_dir / "data"
    run_data = storage.join(cfg.run.storage, str(local.resolve().relative_to(run_dir.resolve())))
    if run_data not in [s["path"] for s in sources]:
        sources.append({"path": run_data, "ratio": 1.0})
    return sources


def stage_train(cfg, run_dir: Path, results: dict) -> TrainResult:
    return train_model(with_values(cfg, **{"train.data": training_sources(cfg, run_dir, results)}))


def tuned_model(cfg, results: dict) -> EmbedforgeConfig:
    """The config with the trained (merged) model in place of the backbone."""
    return with_values(cfg, **{"model.backbone": results["train"].merged, "model.adapter": None})


def run_local_tasks(cfg, results: dict) -> list[dict]:
    """The local tasks the evaluate stage scores: the configured ones, plus the split's held-out queries
    when it held any out (a run of labeled sets alone holds none out: they have their own tasks)."""
    local = [t.model_dump() for t in cfg.evaluate.local_tasks]
    split = results.get("split") if "split" in cfg.pipeline.stages else None
    if split is not None and split.heldout_queries > 0:
        local.append({"kind": "beir", "path": split.heldout_dir, "name": "HeldoutRetrieval", "split": "test"})
    elif split is not None:
        print(f"evaluate: no held-out queries (no generated rows of pipeline.heldout_groups "
              f"{cfg.pipeline.heldout_groups}): HeldoutRetrieval is not scored", flush=True)
    return local


def stage_evaluate(cfg, run_dir: Path, results: dict) -> EvaluateResult:
    local = run_local_tasks(cfg, results)
    baselines = {k: v.model_dump() for k, v in cfg.evaluate.baselines.items()}
    if cfg.pipeline.compare_with_backbone:
        baselines.setdefault("backbone", {"model": cfg.model.backbone, "instructions": cfg.model.instructions})
    instructions = {"HeldoutRetrieval": HELDOUT_INSTRUCTION, **cfg.evaluate.task_instructions}
    return evaluate_model(with_values(tuned_model(cfg, results), **{
        "evaluate.local_tasks": local, "evaluate.baselines": baselines, "evaluate.task_instructions": instructions}))


def stage_serve(cfg, run_dir: Path, results: dict) -> ServeSmokeResult:
    return smoke_test(tuned_model(cfg, results), app_name=f"{cfg.serve.app_name}-smoke")


def stage_report(cfg, run_dir: Path, results: dict) -> ReportResult:
    return write_report(cfg, run_dir, results)


def fetch_run(root: str, run_dir: Path) -> None:
    """A run in object storage: its config, markers and stage outputs into this node's working copy
    (what a rerun needs to skip or resume stages). The storage is the truth: what an earlier run left
    of these in the working copy is dropped first (a marker there would skip a stage the storage
    lacks); the embedding cache stays."""
    import shutil

    from embedforge import storage

    if not storage.is_uri(root):
        return
    for rel in ("config.yaml", *(f"pipeline/{s}.done.json" for s in STAGE_ORDER),
                *(rel for outputs in STAGE_OUTPUTS.values() for rel in outputs)):
        local = run_dir / rel
        if local.is_dir():
            shutil.rmtree(local)
        elif local.exists():
            local.unlink()
        if storage.exists(storage.join(root, rel)):
            storage.download(storage.join(root, rel), local)


def publish(root: str, run_dir: Path, *rels: str) -> None:
    """Files and folders of the working copy to the run's storage (nothing to do when they are one)."""
    from embedforge import storage

    if not storage.is_uri(root):
        return
    for rel in rels:
        if (run_dir / rel).exists():
            storage.upload(run_dir / rel, storage.join(root, rel))


STAGES = {
    "generate": stage_generate,
    "split": stage_split,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "serve": stage_serve,
    "report": stage_report,
}


def run_pipeline(cfg) -> PipelineResult:
    from embedforge.ray_utils import init_ray, serve_ingress_env

    run_dir = cfg.run.dir.resolve()  # this node's working copy (the run itself when it is local)
    run_dir.mkdir(parents=True, exist_ok=True)
    fetch_run(cfg.run.storage, run_dir)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    publish(cfg.run.storage, run_dir, "config.yaml")
    markers = Markers(run_dir / "pipeline")
    prints = stage_fingerprints(cfg)
    # Read every marker once: a stage is done when its marker matches and its result reads back.
    done = {s: markers.result_if_done(s, prints[s]) for s in STAGE_ORDER}
    wanted = [s for s in STAGE_ORDER if s in cfg.pipeline.stages]
    to_run = [s for s in wanted if cfg.pipeline.force or s == "report" or done[s] is None]
    stages = dict(STAGES)
    results: dict[str, BaseModel] = {s: r for s, r in done.items() if r is not None and s not in to_run}
    timings: dict[str, float | str] = {}
    with contextlib.ExitStack() as teachers:
        if "generate" in to_run and cfg.generate.uses_teachers:
            # Every teacher answers a real completion before any Ray work; the local server stays up
            # for the generate stage and stops right after it.
            ready = teachers.enter_context(ready_teachers(cfg.generate, run_dir / "generate"))
            stages["generate"] = lambda c, d, r: stage_generate(c, d, r, ready=ready)
        init_ray(local_env=(lambda: serve_ingress_env(cfg.serve)) if "serve" in cfg.pipeline.stages else None)
        for i, stage in enumerate(STAGE_ORDER):
            step = f"[{i + 1}/{len(STAGE_ORDER)}] {stage}"
            if stage not in to_run:
                if stage in wanted:
                    print(f"{step}: complete, skipped", flush=True)
                    timings[stage] = "skipped"
                continue
            print(f"{step}: running", flush=True)
            t0 = time.time()
            results[stage] = stages[stage](cfg, run_dir, results)
            timings[stage] = round(time.time() - t0, 1)
            markers.mark(stage, prints[stage], results[stage], time.time() - t0)
            publish(cfg.run.storage, run_dir, *STAGE_OUTPUTS[stage], f"pipeline/{stage}.done.json")
            print(f"{step}: done in {timings[stage]} s", flush=True)
            if stage == "generate":
                teachers.close()
    report = results.get("report")
    return PipelineResult(run_dir=cfg.run.storage, stage_seconds=timings, report=report.markdown if report else None)
