"""The train stage as users run it: `ray job submit -- python jobs/train.py` on a local cluster,
2 CPU workers, DeepSpeed ZeRO-3 over gloo, LoRA on a random two-layer Llama saved as a backbone folder
(the code path of any Hugging Face backbone; SmolLM2 itself trains in the pipeline test, which is why
this one can afford to be about resuming).

The driver is killed (`ray job stop`) after the first checkpoint, while steps are still to run;
rerunning the same command resumes from the last registered checkpoint and finishes, writing the
adapter, the merged model, a sentence-transformers directory that encodes like the platform's
Encoder, metrics and a loss curve.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# A checkpoint every 2 of 16 steps (batches of 8; the 24 rows below give ~3 a epoch): a random
# two-layer model runs a step in well under a second, so the run must still have many steps to go when
# `ray job stop` lands after the first checkpoint (with 3 steps it had finished by then).
MAX_STEPS, CHECKPOINT_EVERY = 16, 2
# LoRA dropout on (tiny.yaml has none): the resumed steps repeat the first attempt's losses only if
# every step's dropout masks come from (run.seed, rank, step).
SHORT_RUN = [f"train.max_steps={MAX_STEPS}", "train.epochs=8", f"train.checkpoint_every={CHECKPOINT_EVERY}",
             "train.warmup_steps=0", "train.lr=1e-4", "train.global_batch_size=8", "train.chunk_size=4",
             "train.lora.dropout=0.1"]
TOPICS = ["cats", "rivers", "stocks", "music", "bread", "rockets", "trees", "chess", "rain", "coffee", "glass", "maps"]


def write_rows(path: Path, n: int = 24) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedforge.schema import TrainingRow, arrow_schema

    rows = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        group = "short_long" if i % 2 == 0 else "sts"
        rows.append(TrainingRow(
            id=f"r{i}", group=group, task="Given a question, retrieve a passage that answers it" if group == "short_long" else "",
            query=f"what about {t} number {i}?", positive=f"A passage on {t}, item {i}, with details.",
            negatives=[f"An unrelated note on {TOPICS[(i + 5) % 12]} {i}."]).to_dict())
    # One invalid row (empty query): dropped, not fatal.
    rows.append(dict(rows[0], id="bad", query=""))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), path / "part-0.parquet")


def _ray(args, env, timeout=600):
    return subprocess.run([str(Path(sys.executable).with_name("ray")), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def submit_args(cluster, out: Path, data: Path, backbone: Path, submission_id: str, wait: bool) -> list[str]:
    return ["job", "submit", "--address", cluster["dashboard"], "--submission-id", submission_id,
            *([] if wait else ["--no-wait"]), "--working-dir", ".", "--",
            "python", "jobs/train.py", "--config", "configs/tiny.yaml", f"run.output_dir={out}",
            f"model.backbone={backbone}", f"train.data=[{{path: {data}}}]", *SHORT_RUN]


def random_backbone(folder: Path) -> Path:
    from embedforge.testing import save_tiny_model

    return save_tiny_model(folder / "backbone")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(2)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoint_registered(ckpts: Path) -> bool:
    """Ray Train has recorded a checkpoint in its run snapshot (files on disk alone may still be mid-report)."""
    snap = ckpts / "checkpoint_manager_snapshot.json"
    return snap.is_file() and "checkpoint_" in snap.read_text() and any(ckpts.glob("checkpoint_*/progress.json"))


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "tiny" / "train" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def resumed_run(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_job")
    data, out = root / "data", root / "out"
    write_rows(data)
    backbone = random_backbone(root)
    first = f"train-{uuid.uuid4().hex[:8]}"
    r = _ray(submit_args(ray_cluster, out, data, backbone, first, wait=False), ray_cluster["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = out / "tiny" / "ray_train" / "tiny-train"
    try:
        wait_for(lambda: checkpoint_registered(ckpts), 1200, "the first checkpoint")
    finally:
        _ray(["job", "stop", "--address", ray_cluster["dashboard"], first], ray_cluster["env"], timeout=120)
    # The driver is gone before it finished: no outputs yet.
    assert not (out / "tiny" / "train" / "adapter").exists(), "the first run finished before `ray job stop` landed"
    rerun = _ray(submit_args(ray_cluster, out, data, backbone, f"train-{uuid.uuid4().hex[:8]}", wait=True),
                 ray_cluster["env"])
    logs = rerun.stdout[-6000:] + rerun.stderr[-3000:]
    assert rerun.returncode == 0, logs
    return out / "tiny" / "train", out, backbone


def test_rerun_after_driver_kill_resumes_from_the_checkpoint(resumed_run):
    train_dir, out, _ = resumed_run
    rows = metrics(out)
    first_run = [m["step"] for m in rows if m["resumed_from"] == 0]
    assert first_run[:2] == [1, 2] and max(first_run) < MAX_STEPS
    resumed = [m for m in rows if m["resumed_from"] > 0]
    # resumed from a checkpoint the first run registered, and went on from the step after it
    start = resumed[0]["resumed_from"]
    assert 2 <= start <= max(first_run) and start % CHECKPOINT_EVERY == 0
    assert [m["step"] for m in resumed] == list(range(start + 1, MAX_STEPS + 1))
    # The steps the first run took past that checkpoint are retaken on the same batches from the same
    # state with the same dropout masks: bit-identical losses (seen: killed at step 6, resumed from 4,
    # steps 5 and 6 equal; with dropout unseeded step 5 was 2.688737 then 2.688588).
    first_loss = {m["step"]: m["loss"] for m in rows if m["resumed_from"] == 0}
    for m in resumed:
        if m["step"] in first_loss:
            assert m["loss"] == first_loss[m["step"]], (m, first_loss)
    assert all(np.isfinite(m["loss"]) and m["tokens_per_s"] > 0 and m["grad_norm"] > 0 for m in rows)
    summary = json.loads((train_dir / "summary.json").read_text())
    assert summary["sources"][0] == {"path": summary["sources"][0]["path"], "rows": 25, "valid": 24}
    assert summary["total_steps"] == MAX_STEPS
    # Each step logs its batch's group (same-task batches, or "mixed" leftovers); the summary reads them back.
    groups = {m["group"] for m in rows}
    assert groups and groups <= {"short_long", "sts", "mixed"}, groups
    assert set(summary["loss_by_group"]) == groups
    assert sum(g["steps"] for g in summary["loss_by_group"].values()) == MAX_STEPS
    # Merging and the sentence-transformers export ran in their own Ray task, after the worker group.
    assert summary["exported_by"] and summary["merged"].endswith("merged")
    ckpt = Path(summary["checkpoint"])
    for rank in (0, 1):  # every rank's ZeRO-3 partition is in the checkpoint
        assert (ckpt / "state" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    assert (train_dir / "loss_curve.png").stat().st_size > 1000


def test_outputs_load_and_sentence_transformers_matches_encoder(resumed_run):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    from embedforge.encoder import Encoder
    from embedforge.models import load_backbone

    train_dir, _, backbone = resumed_run
    adapter = load_file(train_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    assert any(t.abs().max() > 0 for k, t in adapter.items() if "lora_B" in k)  # B moved off its zero init
    model, tok = load_backbone(str(backbone), adapter=str(train_dir / "adapter"))
    enc = Encoder(model, tok, max_length=64)
    texts = ["A cat sits on the mat.", "Stock markets fell sharply today."]
    st = SentenceTransformer(str(train_dir / "sentence_transformers"), device="cpu")
    np.testing.assert_allclose(st.encode(texts), enc.encode(texts), atol=1e-4)
    name = "SciFact-query"  # retrieval prompts are keyed for the query side (mteb applies a bare task key to documents too)
    instr = st.prompts[name].removeprefix("Instruct: ").removesuffix("\nQuery: ")
    np.testing.assert_allclose(st.encode(texts, prompt_name=name), enc.encode(texts, instruction=instr), atol=1e-4)
    merged, _ = load_backbone(str(train_dir / "merged"))
    np.testing.assert_allclose(Encoder(merged, tok, max_length=64).encode(texts), enc.encode(texts), atol=1e-4)


@pytest.mark.slow
def test_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, tmp_path):
    """Kill one Ray Train worker process after the first checkpoint: Ray restarts the worker group
    from that checkpoint (FailureConfig.max_failures) and the run finishes (with SmolLM2 and 3 steps it
    took ~3 min idle on 2 cores, 338 s in CI's conditions). Left out of CI (slow) to keep it near an hour: resuming from a checkpoint
    is covered there by the driver-kill test above; this one adds Ray Train's own worker restart."""
    import os
    import signal

    from ray.util.state import list_actors

    data, out = tmp_path / "data", tmp_path / "out"
    write_rows(data)
    job = f"train-kill-{uuid.uuid4().hex[:8]}"
    r = _ray(submit_args(ray_cluster, out, data, random_backbone(tmp_path), job, wait=False), ray_cluster["env"])
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = out / "tiny" / "ray_train" / "tiny-train"
    wait_for(lambda: checkpoint_registered(ckpts), 1200, "the first checkpoint")
    workers = [a for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])]
    assert workers, "no live Ray Train worker to kill"
    os.kill(int(workers[-1]["pid"]), signal.SIGKILL)

    # The Jobs SDK's status enum, not `ray job status` text (which prints "Job '...' succeeded").
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(ray_cluster["dashboard"])
    wait_for(lambda: jobs.get_job_status(job).is_terminal(), 900, "the job to finish")
    assert jobs.get_job_status(job) == JobStatus.SUCCEEDED, jobs.get_job_logs(job)[-3000:]
    rows = metrics(out)
    assert max(m["step"] for m in rows) == MAX_STEPS
    assert any(m["resumed_from"] >= 2 for m in rows), "the restarted group did not resume from a checkpoint"
    assert (out / "tiny" / "train" / "adapter" / "adapter_model.safetensors").is_file()
