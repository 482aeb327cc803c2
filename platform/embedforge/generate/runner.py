"""The generate stage: labeled loaders, then synthetic rows from teachers until every group is full.

Rounds: plan the missing rows' attempts (seeded ids continuing the run) → run them through the Ray
Data pipeline → the driver dedupes, caps each group at its target and commits shards. A rerun of
the same command reads the committed shards and plans only what is still missing.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, Field

from embedforge.config.base import ConfigError
from embedforge.config.generate import GenerateConfig, TeacherConfig
from embedforge.generate.consistency import ConsistencyFilter, check_filter_model, reject_detail
from embedforge.generate.corpus import CorpusFunnel, CorpusPlanner, corpus_funnel, load_chunks
from embedforge.generate.store import RunStore, summarize, teacher_reject_rates
from embedforge.generate.taxonomy import (
    BRAINSTORM_SCHEMA,
    brainstorm_calls_needed,
    brainstorm_messages,
    choose_teacher,
    example_request,
    language_weights,
    load_template,
    row_seed,
    split_counts,
)
from embedforge.generate.teachers import (
    LocalTeacherServer,
    TeacherError,
    limits_actor,
    preflight,
    quotas_actor,
)
from embedforge.generate.validation import Deduper, dedupe_keys
from embedforge.schema import CORPUS_GROUP, SYNTHETIC_GROUPS, chunk_id_of


class SessionThroughput(BaseModel):
    attempts: int
    wall_s: float
    completion_tokens: int
    completion_tokens_per_s: float
    rows_per_min: float
    # The consistency filter's encoding of the corpus before the first teacher call (None: not encoded
    # this session: no filter, nothing missing, or read from the run's cache).
    chunk_encoding_s: float | None = None


class GenerationSummary(BaseModel):
    """The synthetic data of a run (also ``generate/summary.json``): what was kept, rejected, spent."""

    rows: int
    per_group: dict[str, int]
    per_language: dict[str, int]
    per_teacher: dict[str, int]
    attempts: int
    brainstorm_calls: int
    rejects: dict[str, int]
    tokens: dict[str, dict[str, dict[str, int]]]  # teacher -> group -> prompt / completion / calls
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cost_usd_per_teacher: dict[str, float]
    this_session: SessionThroughput
    targets: dict[str, int]
    complete: bool
    missing: dict[str, int] = Field(default_factory=dict)  # group -> rows still missing
    # Planned requests never sent because their group filled first (generate.oversample's surplus).
    skipped_full_group: int = 0
    fallback_tasks: list[str] = Field(default_factory=list)
    teacher_checks: dict[str, dict] = Field(default_factory=dict)  # teacher -> its test completion
    labeled: dict[str, int] = Field(default_factory=dict)
    # What the contamination filter checked against: texts and n-grams per eval file / task.
    contamination: dict | None = None
    # Corpus-grounded generation's funnel (chunks -> queries -> kept after validation -> after consistency).
    corpus: CorpusFunnel | None = None


class GenerateResult(BaseModel):
    """What the generate stage produced: Parquet files under ``data_dir``."""

    run_dir: str
    data_dir: str
    labeled: dict[str, int] = Field(default_factory=dict)  # labeled set name -> rows written
    synthetic: GenerationSummary | None = None  # None when no teacher is asked (num_rows 0, no corpus)
    summary_path: str | None = None


class Committer:
    """Driver-side end of the pipeline: whole-run dedupe, per-group caps, shard commits, health."""

    def __init__(self, store: RunStore, cfg: GenerateConfig, targets: dict[str, int], records: list[dict],
                 kept_rows: list[dict], server: LocalTeacherServer | None = None, quotas=None, consistency=None):
        self.store, self.cfg, self.targets, self.server = store, cfg, targets, server
        self.quotas = quotas  # the run's GroupQuotas actor: told when a group fills
        # Corpus-grounded rows wait in `pending` for the consistency filter (a ConsistencyFilter), which
        # checks them in batches and always before a commit: a row's verdict is committed with it.
        self.consistency = consistency
        self.pending: list[tuple[dict, dict]] = []
        self.on_kept = None  # called with 1 for every row kept (the progress bar)
        self.skipped = 0
        self.records = records  # every committed attempt of the run (grows as shards commit)
        self.session: list[dict] = []
        self.kept = Counter(r["group"] for r in records if r["status"] == "kept" and r["kind"] == "example")
        self.deduper = Deduper()
        for row in kept_rows:
            self.deduper.seen.update(dedupe_keys(row))
        self._reset()

    def _reset(self):
        self.buf_kept, self.buf_rejects, self.buf_records = [], [], []
        self.last_flush = time.monotonic()

    def missing(self) -> dict[str, int]:
        return {g: n - self.kept[g] for g, n in self.targets.items() if n - self.kept[g] > 0}

    def add(self, out: dict) -> bool:
        """Take one outcome; True when it became a kept row (a corpus row waiting for its consistency
        check is counted when checked)."""
        if out["status"] == "skipped":  # never sent: not an attempt, nothing to record
            self.skipped += 1
            return False
        row = None
        if out["status"] == "kept":
            row = json.loads(out["payload"])
            if self.consistency is not None and chunk_id_of(row) is not None:
                if not self.deduper.add(row):
                    return self._record({**out, "status": "rejected", "reason": "duplicate", "detail": ""}, row)
                self.pending.append((out, row))
                if len(self.pending) >= self.cfg.consistency.check_rows:
                    self.check_pending()
                return False
            if self.kept[row["group"]] >= self.targets.get(row["group"], 0):
                out = {**out, "status": "rejected", "reason": "surplus", "detail": ""}
            elif not self.deduper.add(row):
                out = {**out, "status": "rejected", "reason": "duplicate", "detail": ""}
        return self._record(out, row)

    def check_pending(self) -> None:
        """The consistency filter's verdict on the waiting corpus rows; then each is kept, or
        rejected (``consistency``, or ``surplus`` when its group filled meanwhile)."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        ranks = self.consistency.ranks([row for _, row in pending])
        for (out, row), rank in zip(pending, ranks, strict=True):
            if rank > self.consistency.top_k:
                out = {**out, "status": "rejected", "reason": "consistency",
                       "detail": reject_detail(rank, len(self.consistency.chunks.chunks), self.consistency.top_k)}
            elif self.kept[row["group"]] >= self.targets.get(row["group"], 0):
                out = {**out, "status": "rejected", "reason": "surplus", "detail": ""}
            self._record(out, row)

    def _record(self, out: dict, row: dict | None) -> bool:
        """Buffer one attempt's outcome (a kept ``row`` counts towards its group); commit when due."""
        if out["status"] == "kept":
            self.kept[row["group"]] += 1
            self.buf_kept.append(row)
            if self.on_kept is not None:
                self.on_kept(1)
            if self.quotas is not None and self.kept[row["group"]] >= self.targets.get(row["group"], 0):
                self.quotas.mark_full.remote(row["group"])
        if out["status"] != "kept":
            self.buf_rejects.append({k: out[k] for k in ("id", "group", "kind", "teacher", "reason", "detail", "raw")})
        self.buf_records.append({k: out[k] for k in ("id", "group", "kind", "teacher", "language", "status", "reason", "prompt_tokens", "completion_tokens")})
        if len(self.buf_records) >= self.cfg.shard_rows or time.monotonic() - self.last_flush >= self.cfg.flush_seconds:
            self.flush()
        return out["status"] == "kept"

    def flush(self):
        self.check_pending()
        if not self.buf_records:
            return
        self.store.commit(self.store.next_shard_name(), self.buf_kept, self.buf_rejects, self.buf_records)
        self.records += self.buf_records
        self.session += self.buf_records
        self._reset()
        self.check_teachers()

    def check_teachers(self):
        for teacher, (attempts, failures) in teacher_reject_rates(self.session).items():
            if attempts >= self.cfg.reject_min_attempts and failures / attempts > self.cfg.max_reject_rate:
                if self.server is not None:  # a dead local server is reported as dead, not as a reject count
                    self.server.raise_if_dead("mid-run")
                reasons = Counter(r["reason"] for r in self.session if r["teacher"] == teacher and r["status"] != "kept")
                raise TeacherError(
                    f"teacher {teacher!r} failed {failures} of its last {attempts} calls (> generate.max_reject_rate="
                    f"{self.cfg.max_reject_rate}); reasons: {dict(reasons.most_common())}. Committed work is kept; "
                    "fix the teacher and rerun the same command to continue."
                )


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="generate", unit="row")


def _teachers(cfg: GenerateConfig, server: LocalTeacherServer | None) -> list[TeacherConfig]:
    teachers = list(cfg.teachers) + ([server.teacher()] if server else [])
    if not teachers:
        raise ConfigError("generate: no teacher; give generate.teachers or set generate.local_teacher.enabled=true")
    return teachers


class ReadyTeachers(NamedTuple):
    """The run's teachers after the check, and the local server when the job started one."""

    teachers: list[TeacherConfig]
    server: LocalTeacherServer | None
    checks: dict[str, dict]  # teacher name -> its test completion (text, latency_s, completion_tokens)


@contextlib.contextmanager
def ready_teachers(gen: GenerateConfig, log_dir: Path):
    """Start the local teacher (if enabled) and send every teacher one real short completion, before
    any Ray work: a teacher that cannot answer fails here, named, with its URL and what happened."""
    server = LocalTeacherServer(gen.local_teacher, log_dir=log_dir) if gen.local_teacher.enabled else None
    try:
        if server:
            server.start()
        teachers = _teachers(gen, server)
        checks = {}
        if gen.engine == "openai":
            for teacher in teachers:
                local = server if server is not None and teacher.name == server.cfg.name else None
                checks[teacher.name] = preflight(teacher, server=local)
        else:  # ray_llm: the teachers run in vLLM on the cluster's GPUs once the pipeline executes
            from embedforge.generate.ray_llm import require_vllm

            require_vllm()
        yield ReadyTeachers(teachers, server, checks)
    finally:
        if server:
            server.stop()


def _stream(requests, ready: ReadyTeachers, run_key, cfg, contamination=None):
    """The pipeline's outcomes; a local server that died is reported at once, before its errors count."""
    from embedforge.generate.pipeline import build_dataset

    if not requests:
        return
    for out in build_dataset(requests, ready.teachers, run_key, cfg.actors, cfg, contamination).iter_rows():
        if ready.server is not None:
            ready.server.raise_if_dead("mid-run")
        yield out
    if ready.server is not None:
        ready.server.raise_if_dead("mid-run")


def _brainstorm(store: RunStore, cfg: GenerateConfig, targets, ready: ReadyTeachers, weights, run_key, run_seed):
    """Task definitions per brainstorm group, from the run dir or fresh brainstorm calls (then saved),
    and the records of the calls made now."""
    tasks: dict[str, list[str]] = {}
    pending: dict[str, dict] = {}
    new_records: list[dict] = []
    for group, n in targets.items():
        if n <= 0 or group not in SYNTHETIC_GROUPS:  # corpus-grounded rows need no task definitions
            continue
        template = load_template(group)
        if not template.has_brainstorm:
            continue
        saved = store.load_tasks(group)
        if saved is not None:
            tasks[group] = saved["tasks"]
            continue
        calls = brainstorm_calls_needed(n, cfg.tasks_per_brainstorm, cfg.rows_per_task)
        pending[group] = {"calls": {c: None for c in range(calls)}, "records": []}
    for attempt in range(cfg.brainstorm_attempts):
        requests = []
        for group, st in pending.items():
            messages = json.dumps(brainstorm_messages(load_template(group), cfg.tasks_per_brainstorm))
            for call, got in st["calls"].items():
                if got is None:
                    rid = f"{group}-brainstorm-{call}-{attempt}"
                    requests.append({
                        "id": rid, "group": group, "kind": "brainstorm", "task": "", "language": "English",
                        "messages": messages, "schema": json.dumps(BRAINSTORM_SCHEMA), "seed": row_seed(run_seed, rid),
                        "values": "{}", "teacher": choose_teacher(run_seed, rid, weights), "max_tokens": cfg.brainstorm_max_tokens,
                    })
        for out in _stream(requests, ready, run_key, cfg):
            st = pending[out["group"]]
            call = int(out["id"].split("-")[-2])
            st["records"].append({k: out[k] for k in ("id", "group", "kind", "teacher", "language", "status", "reason", "prompt_tokens", "completion_tokens")})
            if out["status"] == "kept":
                st["calls"][call] = json.loads(out["payload"])
    for group, st in pending.items():
        found = [t for got in st["calls"].values() if got for t in got]
        found = list(dict.fromkeys(found))
        fallback = not found
        if fallback:  # every attempt failed to parse: the template's own examples keep the run going
            found = list(load_template(group).fallback_tasks)
        store.save_tasks(group, {"tasks": found, "fallback": fallback, "records": st["records"]})
        tasks[group] = found
        new_records += st["records"]
    return tasks, new_records


def _plan(committer: Committer, cfg: GenerateConfig, tasks, weights, languages, run_seed, corpus=None) -> list[dict]:
    """The round's requests; ``corpus``: the CorpusPlanner of corpus-grounded rows (group retrieval)."""
    requests = []
    for group, missing in committer.missing().items():
        done = [r for r in committer.records if r["kind"] == "example" and r["group"] == group]
        kept = sum(r["status"] == "kept" for r in done)
        # Plan for the yield seen so far (at least 10%) so a weak teacher needs few rounds.
        rate = max(kept / len(done), 0.1) if len(done) >= 5 else 1.0
        count = math.ceil(missing * cfg.oversample / rate)
        used = [int(r["id"].rsplit("-", 1)[1]) for r in done]
        start = max(used) + 1 if used else 0
        if group == CORPUS_GROUP:
            requests += corpus.requests(start, count, weights)
            continue
        template = load_template(group)
        for index in range(start, start + count):
            rid = f"{group}-{index:07d}"
            req = example_request(template, rid, index, tasks.get(group, []), run_seed, languages, cfg.rows_per_task)
            req["teacher"] = choose_teacher(run_seed, rid, weights)
            req["max_tokens"] = cfg.max_tokens
            requests.append(req)
    return requests


def _corpus_chunks(cfg):
    """The corpus's chunks (None without generate.corpus), read and checked with the filter model
    before any teacher or Ray work."""
    if cfg.generate.corpus is None:
        return None
    chunks = load_chunks(cfg)
    if cfg.generate.consistency.enabled:
        check_filter_model(cfg)
    return chunks


def generate_synthetic(cfg, run_dir: Path, ready: ReadyTeachers | None = None, chunks=None) -> GenerationSummary:
    """Synthetic rows until every group is full; ``ready``: teachers already checked (the pipeline
    checks them before it starts Ray), else this call starts and checks them itself. ``chunks``: the
    corpus's chunks when already read (``corpus.load_chunks``)."""
    if chunks is None:
        chunks = _corpus_chunks(cfg)
    if ready is None:
        with ready_teachers(cfg.generate, RunStore(run_dir).gen_dir) as ready:
            return generate_synthetic(cfg, run_dir, ready, chunks)
    gen: GenerateConfig = cfg.generate
    store = RunStore(run_dir)
    run_seed = cfg.run.seed
    languages = language_weights(gen.language_weights)
    targets = split_counts(gen.num_rows, dict(gen.groups))
    planner = cfilter = None
    if chunks is not None:
        targets[CORPUS_GROUP] = gen.corpus.num_queries
        planner = CorpusPlanner(gen.corpus, chunks, run_seed)
        if gen.consistency.enabled:  # its pool starts below, only when rows are missing
            cfilter = ConsistencyFilter(cfg, chunks, store.gen_dir / "corpus")
    started = time.monotonic()
    teachers = ready.teachers
    import ray.data

    from embedforge.ray_utils import init_ray

    init_ray()
    # Our own progress bar counts kept rows; Ray Data's per-operator bars would only add noise.
    ray.data.DataContext.get_current().enable_progress_bars = False
    run_key = f"{Path(run_dir).resolve().name}-{row_seed(0, str(Path(run_dir).resolve()))}"
    for t in teachers:
        if t.requests_per_minute or t.tokens_per_minute:
            limits_actor(run_key, t)
    weights = {t.name: t.weight for t in teachers}
    state = store.load()
    quotas = quotas_actor(run_key)
    committer = Committer(store, gen, targets, state.records, state.kept_rows, server=ready.server, quotas=quotas,
                          consistency=cfilter)
    # Groups full from an earlier session are skipped from the start.
    ray.get(quotas.reset.remote([g for g, target in targets.items() if committer.kept[g] >= target]))
    contamination, contamination_summary = _contamination_index(cfg, store.gen_dir)
    if cfilter is not None and committer.missing():
        # The corpus is encoded before the first teacher call, alone on the CPUs, and cached: answers
        # then wait at most one check (check_rows) before their commit, so a stopped run keeps them.
        cfilter.prepare()
    tasks, brainstorm_records = _brainstorm(store, gen, targets, ready, weights, run_key, run_seed)
    committer.records += brainstorm_records
    committer.session += brainstorm_records
    bar = _progress(sum(targets.values()), sum(committer.kept.values()), gen.progress)
    committer.on_kept = bar.update if bar is not None else None
    try:
        for _ in range(gen.max_rounds):
            if not committer.missing():
                break
            requests = _plan(committer, gen, tasks, weights, languages, run_seed, planner)
            for out in _stream(requests, ready, run_key, gen, contamination):
                committer.add(out)
                if not committer.missing():
                    break
            committer.flush()
    finally:
        try:
            committer.flush()
        finally:
            if cfilter is not None:
                cfilter.close()
            if bar is not None:
                bar.close()
    prices = {t.name: (t.price_prompt_per_1k, t.price_completion_per_1k) for t in teachers}
    counts = summarize(committer.records, prices, time.monotonic() - started, committer.session)
    counts["this_session"]["chunk_encoding_s"] = cfilter.chunk_encoding_s if cfilter else None
    return GenerationSummary(
        **counts, targets=targets, complete=not committer.missing(), missing=committer.missing(),
        skipped_full_group=committer.skipped, contamination=contamination_summary,
        corpus=None if chunks is None else corpus_funnel(
            committer.records, chunks, targets[CORPUS_GROUP], cfilter.describe() if cfilter else None,
            gen.corpus.queries_per_chunk),
        fallback_tasks=sorted(g for g in tasks if (store.load_tasks(g) or {}).get("fallback")),
        teacher_checks=ready.checks)


def _contamination_index(cfg, cache_dir: Path):
    """The run's contamination index, put in Ray's object store once (None when nothing is
    configured), and what went into it (texts and n-grams per source) for the summary."""
    from embedforge.generate.contamination import build_run_index

    c = cfg.generate.contamination
    tasks, keys = [], []
    from embedforge.evaluate.tasks import evaluated_local_tasks

    local = evaluated_local_tasks(cfg)
    if c.against_evaluation and (cfg.evaluate.tasks or local):
        from embedforge.evaluate.runner import build_tasks
        from embedforge.storage import file_stamps

        tasks = build_tasks(cfg.evaluate.tasks, local)
        named = tasks[: len(cfg.evaluate.tasks)]
        keys = [f"{t.metadata.name}@{t.metadata.dataset.get('revision')}" for t in named]
        keys += [f"{lt.name}:{lt.path}:{json.dumps(file_stamps(str(lt.path)))}" for lt in local]
    if not c.eval_files and not tasks:
        return None, None
    import ray

    index, summary = build_run_index(c.eval_files, tasks, c.ngram, cache_dir, keys)
    return ray.put(index.to_state()), summary


def generate_data(cfg, ready: ReadyTeachers | None = None) -> GenerateResult:
    """The generate stage: labeled sets, then synthetic rows (``ready``: teachers already checked)."""
    from embedforge.generate.labeled import write_labeled

    run_dir = Path(cfg.run.dir)
    result = GenerateResult(run_dir=str(run_dir), data_dir=str(run_dir / "data"))
    if cfg.generate.labeled:
        result.labeled = write_labeled(cfg.generate.labeled, run_dir / "data", seed=cfg.run.seed)
    if cfg.generate.uses_teachers:
        summary = generate_synthetic(cfg, run_dir, ready)
        summary.labeled = result.labeled
        result.synthetic = summary
        result.summary_path = str(RunStore(run_dir).save_summary(summary.model_dump(mode="json")))
    return result
