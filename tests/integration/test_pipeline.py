"""The README's quick start as a user runs it on a fresh machine: `embedforge pipeline --config
configs/tiny.yaml` (no Ray running: it starts a local instance), with the local STSB test folder added
to the evaluation tasks (a third of its test split, every genre). Every stage runs (local llama.cpp teacher → held-out split → LoRA on
SmolLM2-135M with ZeRO-3 on 2 workers → evaluation → Serve smoke request → report); the fine-tuned
model must beat its own backbone on STSB. Then the same command, submitted with `ray job submit` to a
running cluster, finds every stage complete and only rewrites the report.

The longest test of the suite (~20 min on 2 cores: generation with the 135M local teacher, then STSB
encoded by the tuned model and the backbone). Measured for the tiny recipe (30 steps of 32 pairs, lr 2e-3,
seed pairs + generated rows): STSB 0.496 against the backbone's 0.267; the earlier 8 × 1e-3 recipe once
reached only 0.284 here, under the + 0.02 bar.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("generate", "split", "train", "evaluate", "serve", "report")


def stsb_sample(out: Path, shared_data: Path) -> Path:
    """Every third pair of STSB's test split (460 of 1,379, all genres): the tuned-vs-backbone gap
    (0.50 vs 0.27 on the full split) is far above this sample's noise, at a third of the encoding cost
    of three models on this 2-core machine."""
    from embedforge.formats import read_sts_file, write_sts

    folder = out / "stsb-sample"
    if not (folder / "test.tsv").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_sts(folder / "test.tsv", read_sts_file(shared_data / "stsb" / "test.tsv")[::3])
    return folder


def _overrides(out: Path, shared_data: Path) -> list[str]:
    return [f"run.output_dir={out}",
            f"evaluate.local_tasks=[{{kind: sts, path: {stsb_sample(out, shared_data)}, name: STSBenchmark}}]"]


def _marker(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / "pipeline" / f"{stage}.done.json").read_text())


@pytest.fixture(scope="module")
def tiny_pipeline(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    # A fresh machine has no Ray running: RAY_ADDRESS=local makes the CLI start its own instance even
    # when this test session's cluster runs beside it.
    env = dict(os.environ, RAY_ADDRESS="local")
    cmd = [str(Path(sys.executable).with_name("embedforge")), "pipeline", "--config", "configs/tiny.yaml",
           *_overrides(out, shared_data)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=45 * 60)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    return {"out": out, "run_dir": out / "tiny", "stdout": proc.stdout, "seconds": time.time() - t0}


def test_every_stage_runs_and_the_report_has_scores_and_figures(tiny_pipeline):
    run_dir = tiny_pipeline["run_dir"]
    for stage in STAGES:
        assert f"{stage}: done" in tiny_pipeline["stdout"], stage
        assert (run_dir / "pipeline" / f"{stage}.done.json").is_file(), stage
    gen = _marker(run_dir, "generate")["result"]
    assert gen["synthetic"]["rows"] >= 12, gen
    split = _marker(run_dir, "split")["result"]
    assert split["heldout_queries"] >= 4 and split["train_rows"] > 0
    train = _marker(run_dir, "train")["result"]
    assert Path(train["adapter"], "adapter_model.safetensors").is_file()
    serve = _marker(run_dir, "serve")["result"]
    assert serve["min_cosine_vs_offline"] >= 0.9999 and serve["prompt_tokens"] > 0
    report = (run_dir / "report" / "report.md").read_text()
    for needle in ("STSBenchmark", "HeldoutRetrieval", "all-minilm-l6-v2", "backbone"):
        assert needle in report, needle
    pngs = list((run_dir / "report").glob("*.png"))
    assert len(pngs) >= 2 and all(p.stat().st_size > 1000 for p in pngs)


def test_the_tuned_model_beats_its_backbone_on_stsb(tiny_pipeline):
    scores = _marker(tiny_pipeline["run_dir"], "evaluate")["result"]["scores"]
    tuned, backbone = scores["tiny"]["STSBenchmark"], scores["backbone"]["STSBenchmark"]
    # Measured before training: Spearman 0.258 with the STS instruction (0.173 without).
    assert 0.2 < backbone < 0.32, backbone
    assert tuned > backbone + 0.02, (tuned, backbone)


def test_rerun_as_a_ray_job_skips_every_complete_stage(tiny_pipeline, ray_cluster, shared_data):
    job = f"pipeline-rerun-{uuid.uuid4().hex[:8]}"
    cmd = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_cluster["dashboard"],
           "--submission-id", job, "--working-dir", ".", "--", "python", "jobs/pipeline.py", "--config",
           "configs/tiny.yaml", *_overrides(tiny_pipeline["out"], shared_data)]
    proc = subprocess.run(cmd, cwd=REPO, env=ray_cluster["env"], capture_output=True, text=True, timeout=900)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-5000:]
    for stage in STAGES[:-1]:
        assert f"{stage}: complete, skipped" in logs, stage
    assert "report: done" in logs
