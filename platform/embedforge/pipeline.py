"""``embedforge pipeline``: generate → split → train → evaluate → serve → report in one run directory.

Each stage records a marker with a fingerprint of the config it depends on; a rerun skips stages
whose marker matches and redoes the rest (an interrupted stage has no marker, and the stages
themselves resume: generation from committed shards, training from the last checkpoint, evaluation
from the embedding cache). Everything lands under ``<run.output_dir>/<run.name>/``.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from pathlib import Path

from embedforge.config import with_values
from embedforge.config.pipeline import STAGE_ORDER
from embedforge.ray_utils import free_port

# Which config sections each stage's output depends on (besides the stages before it).
STAGE_INPUTS = {
    "generate": ("generate",),
    "split": ("pipeline.heldout",),
    "train": ("model", "train"),
    "evaluate": ("model", "evaluate", "pipeline.compare_with_backbone"),
    "serve": ("serve",),
    "report": (),
}


def _section(cfg, dotted: str):
    if dotted.startswith("pipeline."):
        key = dotted.split(".", 1)[1]
        data = cfg.pipeline.model_dump(mode="json")
        return {k: v for k, v in data.items() if k.startswith(key)}
    return getattr(cfg, dotted).model_dump(mode="json")


def stage_fingerprints(cfg) -> dict[str, str]:
    """A chained hash per stage: a change upstream invalidates everything after it."""
    prints, prev = {}, json.dumps({"seed": cfg.run.seed})
    for stage in STAGE_ORDER:
        payload = json.dumps({"prev": prev, **{k: _section(cfg, k) for k in STAGE_INPUTS[stage]}}, sort_keys=True)
        prev = prints[stage] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return prints


class Markers:
    """``<run>/pipeline/<stage>.done.json``: fingerprint + the stage's result, written last."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, stage: str) -> Path:
        return self.folder / f"{stage}.done.json"

    def result_if_done(self, stage: str, fingerprint: str) -> dict | None:
        path = self._path(stage)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return data["result"] if data.get("fingerprint") == fingerprint else None

    def mark(self, stage: str, fingerprint: str, result: dict, seconds: float) -> None:
        tmp = self._path(stage).with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "seconds": round(seconds, 1), "result": result},
                                  indent=2, default=str))
        tmp.replace(self._path(stage))


def stage_split(cfg, run_dir: Path, results: dict):
    from embedforge.split import run_split

    return run_split(cfg.pipeline, run_dir / "data", run_dir / "pipeline")


# ---------------------------------------------------------------- the stages

def stage_generate(cfg, run_dir: Path, results: dict, ready=None) -> dict:
    from embedforge.generate.runner import run

    return run(cfg, ready)


def stage_train(cfg, run_dir: Path, results: dict) -> dict:
    from embedforge.train.runner import run

    sources = [s.model_dump() for s in cfg.train.data]
    split_data = results["split"]["train_data"]
    if split_data not in [s["path"] for s in sources]:
        sources.append({"path": split_data, "ratio": 1.0})
    return run(with_values(cfg, **{"train.data": sources}))


def stage_evaluate(cfg, run_dir: Path, results: dict) -> dict:
    from embedforge.evaluate.runner import run

    local = [t.model_dump() for t in cfg.evaluate.local_tasks]
    local.append({"kind": "beir", "path": results["split"]["heldout_dir"], "name": "HeldoutRetrieval", "split": "test"})
    baselines = {k: v.model_dump() for k, v in cfg.evaluate.baselines.items()}
    if cfg.pipeline.compare_with_backbone:
        baselines.setdefault("backbone", {"model": cfg.model.backbone, "instructions": True})
    instructions = dict(cfg.evaluate.task_instructions)
    # The held-out queries come from many synthetic tasks: one generic retrieval instruction.
    instructions.setdefault("HeldoutRetrieval", "Given a query, retrieve documents that answer or match it")
    tuned = with_values(cfg, **{"model.backbone": results["train"]["merged"], "model.adapter": None,
                          "evaluate.local_tasks": local, "evaluate.baselines": baselines,
                          "evaluate.task_instructions": instructions, "run.name": cfg.run.name})
    return run(tuned)


def stage_serve(cfg, run_dir: Path, results: dict) -> dict:
    """A smoke request through the real endpoint: the tuned model served, the official client, one check."""
    import numpy as np
    from openai import OpenAI
    from ray import serve

    from embedforge.encoder import Encoder
    from embedforge.serving.app import build_app, check_replicas_fit

    merged = results["train"]["merged"]
    port = free_port()
    scfg = with_values(cfg, **{"model.backbone": merged, "model.adapter": None, "serve.port": port,
                         "serve.host": "127.0.0.1"})
    app = build_app(scfg)
    check_replicas_fit(scfg)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    name = f"{cfg.serve.app_name}-smoke"
    serve.run(app, name=name, route_prefix="/smoke", blocking=False)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/smoke/v1", api_key=_client_key(scfg.serve), max_retries=3)
        texts = ["A man is playing a guitar.", "Someone plays an instrument."]
        t0 = time.time()
        resp = client.embeddings.create(model=scfg.serve.model_name or "embedforge", input=texts)
        latency = time.time() - t0
        served = np.array([d.embedding for d in resp.data], dtype=np.float32)
        offline = Encoder.from_config(scfg.model).encode(texts)
        cos = float(min((served * offline).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(offline, axis=1))))
        if cos < 0.9999:
            raise RuntimeError(f"served vectors differ from the offline encoder (min cosine {cos:.6f})")
        return {"model": merged, "inputs": len(texts), "dim": int(served.shape[1]),
                "prompt_tokens": resp.usage.prompt_tokens, "min_cosine_vs_offline": cos,
                "latency_s": round(latency, 3)}
    finally:
        serve.delete(name)


def _client_key(serve_cfg) -> str:
    """The endpoint keeps auth on when keys are configured: the smoke client uses the first one."""
    import os

    from embedforge.serving.auth import _split_keys

    text = os.environ.get(serve_cfg.api_key_env, "")
    if not text.strip() and serve_cfg.api_key_file:
        text = Path(serve_cfg.api_key_file).expanduser().read_text()
    keys = _split_keys(text)
    return keys[0] if keys else "no-key-configured"


def stage_report(cfg, run_dir: Path, results: dict) -> dict:
    from embedforge.report import write_report

    return write_report(cfg, run_dir, results)


STAGES = {
    "generate": stage_generate,
    "split": stage_split,
    "train": stage_train,
    "evaluate": stage_evaluate,
    "serve": stage_serve,
    "report": stage_report,
}


def _stages_to_run(cfg, markers: Markers, prints: dict[str, str]) -> list[str]:
    wanted = [s for s in STAGE_ORDER if s in cfg.pipeline.stages]
    return [s for s in wanted if cfg.pipeline.force or s == "report" or markers.result_if_done(s, prints[s]) is None]


def run(cfg) -> dict:
    import contextlib

    from embedforge.generate.runner import ready_teachers
    from embedforge.ray_utils import init_ray, serve_ingress_env

    run_dir = cfg.run.dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    markers = Markers(run_dir / "pipeline")
    prints = stage_fingerprints(cfg)
    to_run = _stages_to_run(cfg, markers, prints)
    stages = dict(STAGES)
    with contextlib.ExitStack() as teachers:
        if "generate" in to_run and cfg.generate.num_rows > 0:
            # Every teacher answers a real completion before any Ray work; the local server stays up
            # for the generate stage and stops right after it.
            ready = teachers.enter_context(ready_teachers(cfg.generate, run_dir / "generate"))
            stages["generate"] = lambda c, d, r: stage_generate(c, d, r, ready=ready)
        init_ray(local_env=(lambda: serve_ingress_env(cfg.serve.ingress)) if "serve" in cfg.pipeline.stages else None)
        results: dict[str, dict] = {}
        timings: dict[str, float | str] = {}
        for i, stage in enumerate(STAGE_ORDER):
            done = markers.result_if_done(stage, prints[stage])
            if stage not in to_run:
                if done is not None:
                    results[stage] = done
                if stage in cfg.pipeline.stages:
                    print(f"[{i + 1}/{len(STAGE_ORDER)}] {stage}: complete, skipped", flush=True)
                    timings[stage] = "skipped"
                continue
            print(f"[{i + 1}/{len(STAGE_ORDER)}] {stage}: running", flush=True)
            t0 = time.time()
            results[stage] = stages[stage](cfg, run_dir, results)
            timings[stage] = round(time.time() - t0, 1)
            markers.mark(stage, prints[stage], results[stage], time.time() - t0)
            print(f"[{i + 1}/{len(STAGE_ORDER)}] {stage}: done in {timings[stage]} s", flush=True)
            if stage == "generate":
                teachers.close()
    return {"run_dir": str(run_dir), "stage_seconds": timings,
            "report": results.get("report", {}).get("markdown")}
