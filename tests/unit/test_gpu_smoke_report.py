"""benchmarks/gpu_smoke.py's report when Ray cannot start (a fresh GPU node without a package or the
``embedforge-haproxy`` command): every path fails with the reason, and nothing raises, so
``gpu_check.py`` still runs its measurement after the smoke. The paths themselves run in
tests/integration/test_gpu_smoke.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_smoke  # noqa: E402


def test_a_ray_start_failure_fails_every_path_with_its_reason(monkeypatch, tmp_path, capsys):
    import embedforge.ray_utils

    def no_wrapper(**_):
        raise FileNotFoundError("/opt/venv/bin/embedforge-haproxy is missing")

    monkeypatch.setattr(embedforge.ray_utils, "init_ray", no_wrapper)
    records = gpu_smoke._run_paths("cpu", tmp_path)
    assert [(r["path"], r["pass"]) for r in records] == [("train", False), ("encode", False), ("serve", False)]
    assert all(r["detail"] == "RuntimeError: skipped: Ray did not start: FileNotFoundError: "
               "/opt/venv/bin/embedforge-haproxy is missing" for r in records)
    assert [ln.split()[:2] for ln in capsys.readouterr().out.splitlines() if ln.startswith("FAIL")] == [
        ["FAIL", "train"], ["FAIL", "encode"], ["FAIL", "serve"]]
