"""The GPU smoke suite's CPU rehearsal (``benchmarks/gpu_smoke.py --device cpu``): the same paths the
one-GPU run takes — Ray Train with ZeRO-3 and gradient caching, the export task, the evaluation
stage's Ray Data encoding on an actor, a Serve replica answering the openai client — on a random Llama."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_gpu_path_passes_on_the_cpu(tmp_path):
    env_out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--device", "cpu",
                           "--out", str(env_out)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS", "FAIL"))]
    assert proc.returncode == 0, "\n".join(lines) + proc.stderr[-4000:]
    report = json.loads((env_out / "gpu_smoke.json").read_text())
    assert [(r["path"], r["pass"]) for r in report["paths"]] == [("train", True), ("encode", True), ("serve", True)]
    train, encode, serve = (r["detail"] for r in report["paths"])
    assert train.startswith("3 steps") and "exported by" in train
    assert "32 texts on 1 actor" in encode and "through the openai client" in serve
    assert len(lines) == 3
