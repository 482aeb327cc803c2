"""The teacher check sends a real completion; a local server that dies (at the check, mid-run) is
reported as dead — exit status, log tail, what to do — never as a count of request errors; and
``embedforge doctor`` passes here and fails clearly on a broken local teacher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from embedforge.config.generate import GenerateConfig
from embedforge.generate.runner import ready_teachers
from embedforge.generate.teachers import LocalTeacherDied
from embedforge.ray_utils import free_port
from tests.conftest import generate_job

DYING = Path(__file__).resolve().parents[1] / "support" / "dying_teacher.py"


def dying_teacher_command() -> list[str]:
    return ["{python}", str(DYING), "--port", "{port}", "--alias", "{alias}"]


def test_check_sends_a_real_completion_to_the_local_teacher(tmp_path):
    gen = GenerateConfig(local_teacher={"enabled": True, "n_threads": 2, "n_ctx": 512})
    with ready_teachers(gen, tmp_path) as ready:
        check = ready.checks["local"]
        assert check["completion_tokens"] > 0 and check["latency_s"] > 0
        assert ready.server.exit_status() is None
    assert ready.server.exit_status() is not None  # stopped on leaving


def test_server_dying_on_its_first_completion_is_reported_dead(tmp_path):
    gen = GenerateConfig(local_teacher={"enabled": True, "name": "smollm2-local", "command": dying_teacher_command()})
    with pytest.raises(LocalTeacherDied) as err, ready_teachers(gen, tmp_path):
        pass
    text = str(err.value)
    # named, with its URL, the signal, the log's last lines and what to do
    assert "local teacher 'smollm2-local' (http://127.0.0.1:" in text
    assert "died during the teacher check (a test completion" in text
    assert "killed by signal SIGSEGV" in text
    assert "crashing like llama_decode did" in text  # from the server's log
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in text and "embedforge doctor" in text
    assert "request_error" not in text


def _doctor(repo_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedforge.cli", "doctor", "--config", "configs/tiny.yaml", *overrides],
                          cwd=repo_root, capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})


def test_doctor_passes_on_this_machine(repo_root):
    out = _doctor(repo_root)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = {line.split()[1]: line.split()[0] for line in out.stdout.splitlines()[1:-1] if line.startswith("  ") and
             not line.startswith("      ")}
    for name in ("python", "packages", "cpu", "ray", "teacher", "minilm", "data", "disk", "memory"):
        assert lines.get(name) == "ok", (name, out.stdout)
    assert lines.get("llama.cpp") == "ok", out.stdout  # the portable build (see test_llama_build)
    assert out.stdout.rstrip().endswith("embedforge doctor: ready")


def test_doctor_fails_clearly_on_a_broken_local_teacher(repo_root):
    command = json.dumps(dying_teacher_command())
    out = _doctor(repo_root, f"generate.local_teacher.command={command}")
    assert out.returncode == 1, out.stdout + out.stderr
    fail = next(line for line in out.stdout.splitlines() if line.startswith("  FAIL  teachers"))
    assert "died during the teacher check" in fail and "killed by signal SIGSEGV" in fail
    assert "fix:" in out.stdout and "crashing like llama_decode did" in out.stdout
    assert "1 check(s) failed: teachers" in out.stdout


def _server_pid(port: int) -> int | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "llama_cpp.server" in cmd and str(port) in cmd:
            return proc.pid
    return None


def test_local_server_killed_mid_run_stops_the_run_then_rerun_continues(ray_cluster, tmp_path, repo_root):
    port = free_port()
    cmd, commits = generate_job(tmp_path, "dies", 4, port, repo_root)
    env = dict(os.environ, **ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None and not list(commits.glob("*.json")):
            time.sleep(0.2)
        pid = _server_pid(port)
        assert first.poll() is None and pid is not None, first.stderr.read()[-3000:] if first.poll() is not None else pid
        os.kill(pid, signal.SIGKILL)
        _, stderr = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0
    assert "died mid-run: killed by signal SIGKILL" in stderr, stderr[-3000:]
    assert "Last lines of" in stderr and "rerun the same command to continue" in stderr
    assert "failed" not in stderr.split("died mid-run")[0].splitlines()[-1]  # not reported as a reject count
    committed = {p.name for p in commits.glob("*.json")}
    assert committed

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "dies" / "generate" / "summary.json").read_text())
    assert summary["complete"] and sum(summary["per_group"].values()) == 4
    assert committed <= {p.name for p in commits.glob("*.json")}  # the first run's shards are kept
    attempt_ids = [a["id"] for p in commits.glob("*.json") for a in json.loads(p.read_text())["attempts"]]
    assert len(attempt_ids) == len(set(attempt_ids))
