"""The run directory: committed shards (the unit of resume), rejects, brainstormed tasks, the ledger.

Layout under the run directory:
  data/synthetic-<shard>.parquet      kept rows (the shared schema; what the trainer reads)
  generate/rejects/<shard>.jsonl      rejected attempts with raw text and reason
  generate/commits/<shard>.json       one record per attempt of the shard: written LAST, so a shard
                                      counts only once its commit exists; a kill before that leaves
                                      files that the next start deletes and redoes (same seeds)
  generate/tasks/<group>.json         brainstormed task definitions and the brainstorm calls' records
  generate/summary.json               counts, reject reasons, tokens, cost, throughput
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from embedforge.schema import arrow_schema


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class RunState:
    """What the committed shards say: the basis of resume and of the summary."""

    records: list[dict] = field(default_factory=list)  # one per committed attempt
    kept_rows: list[dict] = field(default_factory=list)  # kept rows (to seed dedupe)

    def kept_per_group(self) -> Counter:
        return Counter(r["group"] for r in self.records if r["status"] == "kept" and r["kind"] == "example")

    def next_index(self, group: str) -> int:
        """The next unused attempt number of a group (attempt ids are ``<group>-<n>``)."""
        used = [int(r["id"].rsplit("-", 1)[1]) for r in self.records if r["kind"] == "example" and r["group"] == group]
        return max(used) + 1 if used else 0


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.data_dir = self.run_dir / "data"
        self.gen_dir = self.run_dir / "generate"
        for d in (self.data_dir, self.gen_dir / "commits", self.gen_dir / "rejects", self.gen_dir / "tasks"):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ reading
    def commits(self) -> list[Path]:
        return sorted((self.gen_dir / "commits").glob("*.json"))

    def load(self) -> RunState:
        """Committed shards only; leftovers of a shard killed before its commit are removed."""
        import pyarrow.parquet as pq

        committed = {p.stem for p in self.commits()}
        for path in list(self.data_dir.glob("synthetic-*.parquet")) + list((self.gen_dir / "rejects").glob("*.jsonl")):
            shard = path.stem.removeprefix("synthetic-")
            if shard not in committed:
                path.unlink()
        for tmp in list(self.data_dir.glob(".*.tmp")) + list(self.gen_dir.rglob(".*.tmp")):
            tmp.unlink()
        state = RunState()
        for tasks in sorted((self.gen_dir / "tasks").glob("*.json")):
            state.records += json.loads(tasks.read_text()).get("records", [])
        for path in self.commits():
            state.records += json.loads(path.read_text())["attempts"]
            data = self.data_dir / f"synthetic-{path.stem}.parquet"
            if data.exists():
                state.kept_rows += pq.read_table(data).to_pylist()
        return state

    def next_shard_name(self, prefix: str = "s") -> str:
        return f"{prefix}{len(self.commits()):06d}"

    # ------------------------------------------------------------------ writing
    def commit(self, shard: str, kept: list[dict], rejects: list[dict], records: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if kept:
            tmp = self.data_dir / f".synthetic-{shard}.parquet.tmp"
            pq.write_table(pa.Table.from_pylist(kept, schema=arrow_schema()), tmp)
            os.replace(tmp, self.data_dir / f"synthetic-{shard}.parquet")
        if rejects:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
            _atomic_write(self.gen_dir / "rejects" / f"{shard}.jsonl", text.encode())
        _atomic_write(self.gen_dir / "commits" / f"{shard}.json", json.dumps({"attempts": records}).encode())

    def tasks_path(self, group: str) -> Path:
        return self.gen_dir / "tasks" / f"{group}.json"

    def load_tasks(self, group: str) -> dict | None:
        path = self.tasks_path(group)
        return json.loads(path.read_text()) if path.exists() else None

    def save_tasks(self, group: str, payload: dict) -> None:
        _atomic_write(self.tasks_path(group), json.dumps(payload, indent=1, ensure_ascii=False).encode())

    def save_summary(self, summary: dict) -> Path:
        path = self.gen_dir / "summary.json"
        _atomic_write(path, json.dumps(summary, indent=2, ensure_ascii=False).encode())
        return path


# Reasons that say nothing about the teacher's health (the output was fine, or the row was redundant).
# A consistency reject is a valid answer that the filter model ranks low: a weak teacher's, not a broken one's.
NOT_TEACHER_FAULTS = ("duplicate", "contaminated", "surplus", "consistency")


def teacher_reject_rates(records: list[dict]) -> dict[str, tuple[int, int]]:
    """{teacher: (attempts, failures)} counting only failures that are the teacher's fault."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        out[r["teacher"]][0] += 1
        if r["status"] != "kept" and r["reason"] not in NOT_TEACHER_FAULTS:
            out[r["teacher"]][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def summarize(records: list[dict], prices: dict[str, tuple[float, float]], wall_s: float, session_records: list[dict]) -> dict:
    """Counts per group/language/teacher, reject reasons, tokens and cost per teacher & group, throughput."""
    kept = [r for r in records if r["status"] == "kept" and r["kind"] == "example"]
    tokens: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: {"prompt": 0, "completion": 0, "calls": 0}))
    cost: dict[str, float] = defaultdict(float)
    for r in records:
        group = r["group"] if r["kind"] == "example" else f"{r['group']}/brainstorm"
        slot = tokens[r["teacher"]][group]
        slot["prompt"] += r["prompt_tokens"]
        slot["completion"] += r["completion_tokens"]
        slot["calls"] += 1
        p_in, p_out = prices.get(r["teacher"], (0.0, 0.0))
        cost[r["teacher"]] += r["prompt_tokens"] / 1000 * p_in + r["completion_tokens"] / 1000 * p_out
    session_completion = sum(r["completion_tokens"] for r in session_records)
    return {
        "rows": len(kept),
        "per_group": dict(sorted(Counter(r["group"] for r in kept).items())),
        "per_language": dict(Counter(r["language"] for r in kept).most_common()),
        "per_teacher": dict(sorted(Counter(r["teacher"] for r in kept).items())),
        "attempts": sum(1 for r in records if r["kind"] == "example"),
        "brainstorm_calls": sum(1 for r in records if r["kind"] == "brainstorm"),
        "rejects": dict(Counter(r["reason"] for r in records if r["status"] != "kept").most_common()),
        "tokens": {t: dict(g) for t, g in tokens.items()},
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "cost_usd": round(sum(cost.values()), 6),
        "cost_usd_per_teacher": {k: round(v, 6) for k, v in sorted(cost.items())},
        "this_session": {
            "attempts": len(session_records),
            "wall_s": round(wall_s, 2),
            "completion_tokens": session_completion,
            "completion_tokens_per_s": round(session_completion / wall_s, 2) if wall_s > 0 else 0.0,
            "rows_per_min": round(60 * sum(1 for r in session_records if r["status"] == "kept" and r["kind"] == "example") / wall_s, 2)
            if wall_s > 0
            else 0.0,
        },
    }
