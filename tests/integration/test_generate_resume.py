"""Kill a real generate run (SIGKILL, mid-run) and rerun the same command: exact rows, no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pyarrow.parquet as pq

from embedforge.generate.taxonomy import split_counts
from embedforge.ray_utils import free_port
from tests.conftest import generate_job
from tests.conftest import port_open as _listening


def test_rerun_after_a_sigkill_completes_keeping_every_commit_and_no_attempt_twice(ray_cluster, tmp_path, repo_root):
    port = free_port()
    cmd, commits = generate_job(tmp_path, "resume", 2, port, repo_root)
    env = dict(os.environ, **ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"),
                             start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None:
            if commits.is_dir() and len(list(commits.glob("*.json"))) >= 1:
                break
            time.sleep(0.2)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)  # the driver dies mid-run, between or inside a shard
        first.wait()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    committed_before = {p.name for p in commits.glob("*.json")}
    assert committed_before
    # the local teacher server the killed job started goes with it
    for _ in range(50):
        if not _listening(port):
            break
        time.sleep(0.2)
    assert not _listening(port)

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((tmp_path / "resume" / "generate" / "summary.json").read_text())
    assert summary["complete"] and summary["per_group"] == split_counts(2, {"sts": 1, "bitext": 1})

    table = pq.read_table(tmp_path / "resume" / "data")
    rows = table.to_pylist()
    assert len(rows) == 2
    assert len({r["id"] for r in rows}) == 2 and len({r["query"].casefold() for r in rows}) == 2
    # nothing lost: every shard committed before the kill is still there, and no attempt ran twice
    assert committed_before <= {p.name for p in commits.glob("*.json")}
    attempt_ids = [a["id"] for p in commits.glob("*.json") for a in json.loads(p.read_text())["attempts"]]
    assert len(attempt_ids) == len(set(attempt_ids))
    assert summary["attempts"] == len(attempt_ids)
