"""generate/store.py and the Committer that writes to it: shards committed atomically, resume, summary."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from embedforge.config.generate import GenerateConfig
from embedforge.generate.store import RunStore, summarize, teacher_reject_rates
from embedforge.schema import TrainingRow


def _outcome(i, group="sts", status="kept", reason="", query=None):
    row = TrainingRow(id=f"{group}-{i:07d}", group=group, task="t", query=query or f"query {i}",
                      positive=f"positive {i}", negatives=[f"neg {i}"], teacher="t").to_dict()
    return {"id": row["id"], "group": group, "kind": "example", "teacher": "t", "language": "English",
            "raw": "{}", "prompt_tokens": 3, "completion_tokens": 4, "latency_s": 0.0, "status": status,
            "reason": reason, "detail": "", "payload": json.dumps(row)}


def test_committer_dedupes_caps_and_resumes(tmp_path):
    from embedforge.generate.runner import Committer

    cfg = GenerateConfig(shard_rows=2)
    store = RunStore(tmp_path)
    c = Committer(store, cfg, {"sts": 3}, [], [])
    for out in [_outcome(0), _outcome(1, query="QUERY 0"), _outcome(2, status="rejected", reason="empty"), _outcome(3)]:
        c.add(out)
    c.flush()
    # a shard killed before its commit: data written, no commit → removed at load
    (store.data_dir / "synthetic-s999999.parquet").write_bytes(b"partial")
    state = store.load()
    assert not (store.data_dir / "synthetic-s999999.parquet").exists()
    assert state.kept_per_group() == {"sts": 2} and len(state.kept_rows) == 2
    c2 = Committer(store, cfg, {"sts": 3}, state.records, state.kept_rows)
    assert c2.missing() == {"sts": 1}
    assert not c2.add(_outcome(4, query="query 3"))  # duplicate of a committed row
    assert c2.add(_outcome(5))
    assert not c2.add(_outcome(6))  # surplus
    c2.flush()
    state = store.load()
    assert state.kept_per_group() == {"sts": 3} and state.next_index("sts") == 7
    reasons = Counter(r["reason"] for r in state.records if r["status"] != "kept")
    assert reasons == {"duplicate": 2, "empty": 1, "surplus": 1}
    rejects = [json.loads(line) for p in (store.gen_dir / "rejects").glob("*.jsonl") for line in p.open()]
    assert sorted(r["reason"] for r in rejects) == ["duplicate", "duplicate", "empty", "surplus"] and all("raw" in r for r in rejects)
    s = summarize(state.records, {"t": (1.0, 2.0)}, 10.0, state.records)
    assert s["rows"] == 3 and s["tokens"]["t"]["sts"]["calls"] == 7
    assert s["cost_usd"] == pytest.approx(7 * (3 * 1.0 + 4 * 2.0) / 1000)


def test_reject_rate_stops_a_failing_teacher(tmp_path):
    from embedforge.generate.runner import Committer
    from embedforge.generate.teachers import TeacherError

    cfg = GenerateConfig(shard_rows=100, reject_min_attempts=5, max_reject_rate=0.5)
    c = Committer(RunStore(tmp_path), cfg, {"sts": 10}, [], [])
    for i in range(6):
        c.add(_outcome(i, status="rejected", reason="invalid_json"))
    with pytest.raises(TeacherError, match="teacher 't' failed 6 of its last 6"):
        c.flush()
    assert teacher_reject_rates(RunStore(tmp_path).load().records) == {"t": (6, 6)}  # committed before stopping


def test_skipped_requests_of_a_full_group_are_not_attempts(tmp_path):
    """A request the teacher caller skipped (its group was full) cost nothing: it is counted as
    skipped, not recorded as an attempt or a reject, and spends no tokens in the ledger."""
    from embedforge.generate.pipeline import skipped_outcome
    from embedforge.generate.runner import Committer

    c = Committer(RunStore(tmp_path), GenerateConfig(shard_rows=100), {"sts": 1}, [], [])
    assert c.add(_outcome(0))
    skipped = skipped_outcome({"id": "sts-0000001", "group": "sts", "kind": "example", "teacher": "t", "language": "English"})
    assert skipped["status"] == "skipped" and skipped["completion_tokens"] == 0
    assert not c.add(skipped) and c.skipped == 1
    c.flush()
    records = RunStore(tmp_path).load().records
    assert [r["status"] for r in records] == ["kept"]
    assert summarize(records, {"t": (1.0, 2.0)}, 1.0, records)["attempts"] == 1
