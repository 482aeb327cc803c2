"""benchmarks/gpu_check.py end to end on the CPU (``--shape tiny``): the same code the GPU run takes.

One process with its own world-size-1 gloo group, DeepSpeed ZeRO-3, LoRA, gradient caching over
several chunks, the platform Encoder; the JSON and the markdown table it writes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--shape", "tiny", "--device", "cpu",
         "--steps", "1", "--no-smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), proc.stdout


def test_training_steps_run_with_gradient_caching_under_zero3(tiny_run):
    report, _, _ = tiny_run
    tr = report["train"]
    assert (report["world_size"], report["backend"], report["device"]) == (1, "gloo", "cpu")
    assert tr["zero_stage"] == 3 and tr["lora_r"] == 16 and tr["lora_parameters"] > 0
    assert tr["sequences_per_step"] == 3 * 8 and tr["chunks_per_step"] == 6  # global batch > one chunk
    assert tr["tokens_per_step"] == 8 * (8 + 24 + 24)
    assert len(tr["steps"]) == 2  # one warm-up + one timed
    assert tr["tokens_per_s"] > 0 and tr["step_seconds_median"] > 0
    for step in tr["steps"]:
        assert math.isfinite(step["loss"]) and step["loss"] > 0
        assert math.isfinite(step["grad_norm"]) and step["grad_norm"] > 0  # gradients reached the LoRA weights
    assert tr["steps"][1]["lr"] < tr["steps"][0]["lr"]  # the trainer's schedule stepped
    assert tr["model_tflops_per_step"] > 0 and tr["hardware_tflops_per_step"] > tr["model_tflops_per_step"]
    assert tr["mfu"] is None and report["peak_tflops"] is None  # no peak is assumed for a CPU


def test_gradient_cached_loss_equals_the_uncached_loss(tiny_run):
    tr = tiny_run[0]["train"]
    assert math.isfinite(tr["loss_gradcache"])
    assert tr["loss_gradcache"] == tr["steps"][0]["loss"]
    assert tr["loss_gradcache"] == pytest.approx(tr["loss_uncached"], abs=1e-4)
    assert tr["loss_check_passed"] is True


def test_encode_report_counts_tokens_and_padding_at_a_positive_rate_with_finite_vectors(tiny_run):
    report = tiny_run[0]
    enc = report["encode"]
    assert enc["texts"] == 64 and enc["tokens"] > enc["texts"]
    assert enc["padded_tokens"] >= enc["tokens"]
    assert enc["tokens_per_s"] > 0 and enc["finite"] is True
    assert enc["embedding_dim"] == report["model"]["hidden_size"] == 64


def test_json_and_table_record_one_passing_attempt_and_the_table_is_printed(tiny_run):
    report, table, stdout = tiny_run
    assert report["attempts"] == [{"layers": 2, "ok": True}] and "fallback" not in report
    assert report["model"]["layers"] == report["model"]["layers_requested"] == report["model"]["layers_full_shape"] == 2
    assert "forward(s) = 2(N+N_lora)s" in report["flops_formula"]
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) >= 9
    assert all(line.count("|") == 3 for line in rows), rows  # every row has exactly two cells
    assert "train: tokens/s" in table and "encode:" in table and "passed" in table
    assert table.strip() in stdout
