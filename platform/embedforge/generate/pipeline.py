"""The Ray Data stages: teacher calls in async actors, parse + validate, contamination filter.

requests (one row per teacher call) → TeacherCaller (actor pool; each actor keeps many requests in
flight with the async openai client, then parses and validates each answer) → ContaminationFilter
(actor holding the eval-set index) → the driver, which dedupes over the whole run and commits shards.
With ``generate.engine: ray_llm`` one vLLM processor per teacher (``generate/ray_llm.py``) takes the
TeacherCaller's place, followed by ``parse_outcomes``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os

import numpy as np

from embedforge.config.generate import TeacherConfig
from embedforge.generate.contamination import ContaminationIndex
from embedforge.generate.taxonomy import load_template
from embedforge.generate.teachers import call_teacher, make_client
from embedforge.generate.validation import (
    Rejected,
    is_corpus_request,
    parse_brainstorm,
    parse_corpus_answer,
    to_row,
    validate_example,
)

REQUEST_COLUMNS = ("id", "group", "kind", "task", "language", "messages", "schema", "seed", "values", "teacher", "max_tokens")


def limits_actor_name(run_key: str, teacher: str) -> str:
    return f"embedforge-limits-{run_key}-{teacher}"


def _rows(batch: dict) -> list[dict]:
    n = len(next(iter(batch.values())))
    return [{k: (v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in batch.items()} for i in range(n)]


def _columns(rows: list[dict]) -> dict:
    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


class TeacherCaller:
    """A Ray Data actor: every row of a batch is one chat completion, all in flight together.

    Ray Data runs several batches of an async actor at once, so per-teacher semaphores (each
    actor's share of the teacher's max_concurrency) keep the endpoint busy without overrunning it.
    """

    def __init__(self, teachers: list[dict], run_key: str, per_actor_concurrency: dict[str, int],
                 min_words_short: int = 1, min_words_long: int = 5):
        self.min_words = (min_words_short, min_words_long)
        self.teachers = {t["name"]: TeacherConfig(**t) for t in teachers}
        self.run_key = run_key
        self.per_actor = per_actor_concurrency
        self.clients: dict = {}
        self.sems: dict = {}
        self.limits: dict = {}

    def _setup(self, name: str):
        # Clients and semaphores bind to the running event loop, so they are made inside it.
        if name not in self.clients:
            import ray

            teacher = self.teachers[name]
            self.clients[name] = make_client(teacher)
            self.sems[name] = asyncio.Semaphore(self.per_actor[name])
            limited = teacher.requests_per_minute or teacher.tokens_per_minute
            self.limits[name] = ray.get_actor(limits_actor_name(self.run_key, name), namespace="embedforge") if limited else None
        return self.teachers[name], self.clients[name], self.sems[name], self.limits[name]

    async def _one(self, row: dict) -> dict:
        teacher, client, sem, limits = self._setup(row["teacher"])
        async with sem:
            out = await call_teacher(client, teacher, row, int(row["max_tokens"]), limits)
        return {**row, **out}

    def _full_groups(self) -> set[str]:
        import ray

        from embedforge.generate.teachers import quotas_actor_name

        try:
            quotas = ray.get_actor(quotas_actor_name(self.run_key), namespace="embedforge")
        except ValueError:  # no quotas for this run (a direct call): nothing is skipped
            return set()
        return set(ray.get(quotas.full_groups.remote()))

    async def __call__(self, batch: dict) -> dict:
        rows = _rows(batch)
        # Asked once per batch: a group that filled meanwhile costs no more teacher calls.
        full = self._full_groups()
        todo = [r for r in rows if not (r["kind"] == "example" and r["group"] in full)]
        results = iter(await asyncio.gather(*(self._one(r) for r in todo)))
        # Parsing here rather than in a separate task stage spares the CPUs the teacher may share.
        return _columns([skipped_outcome(r) if r["kind"] == "example" and r["group"] in full
                         else parse_outcome(next(results), *self.min_words) for r in rows])


def skipped_outcome(row: dict) -> dict:
    """A request not sent: its group was already full (no tokens, no cost, not an attempt)."""
    return {"id": row["id"], "group": row["group"], "kind": row["kind"], "teacher": row["teacher"],
            "language": row["language"], "raw": "", "prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0,
            "status": "skipped", "reason": "group_full", "detail": "", "payload": ""}


def parse_outcome(row: dict, min_words_short: int, min_words_long: int) -> dict:
    """A teacher result → status kept/rejected, the reason, and the parsed payload as JSON."""
    out = {
        "id": row["id"], "group": row["group"], "kind": row["kind"], "teacher": row["teacher"],
        "language": row["language"], "raw": row["text"], "prompt_tokens": int(row["prompt_tokens"]),
        "completion_tokens": int(row["completion_tokens"]), "latency_s": float(row["latency_s"]),
        "status": "rejected", "reason": "", "detail": "", "payload": "",
    }
    try:
        if row["error"]:
            raise Rejected("request_error", row["error"])
        try:
            if row["kind"] == "brainstorm":
                payload = parse_brainstorm(row["text"])
            elif is_corpus_request(row):  # a query for a chunk of the user's corpus (generate.corpus)
                payload = parse_corpus_answer(row, row["text"], row["teacher"], (out["prompt_tokens"], out["completion_tokens"]))
            else:
                template = load_template(row["group"])
                fields = validate_example(row["text"], template, min_words_short, min_words_long,
                                          json.loads(row.get("values") or "{}"))
                payload = to_row(fields, template, row, row["teacher"], (out["prompt_tokens"], out["completion_tokens"])).to_dict()
        except Rejected as exc:
            if row["finish_reason"] == "length" and exc.reason == "invalid_json":
                raise Rejected("truncated", f"hit max_tokens={row['max_tokens']}") from None
            raise
        out["status"], out["payload"] = "kept", json.dumps(payload, ensure_ascii=False)
    except Rejected as exc:
        out["reason"], out["detail"] = exc.reason, exc.detail[:300]
    return out


def parse_outcomes(batch: dict, min_words_short: int, min_words_long: int) -> dict:
    return _columns([parse_outcome(r, min_words_short, min_words_long) for r in _rows(batch)])


class ContaminationFilter:
    """Rejects kept rows that overlap the evaluation sets' index (built once by the driver; each
    actor maps the node's shared read-only copy from Ray's object store)."""

    def __init__(self, index_refs: list):
        import ray

        self.index = ContaminationIndex.from_state(ray.get(index_refs[0]))

    def __call__(self, batch: dict) -> dict:
        rows = _rows(batch)
        for row in rows:
            if row["status"] == "kept" and row["kind"] == "example":
                why = self.index.check_row(json.loads(row["payload"]))
                if why:
                    row["status"], row["reason"], row["detail"] = "rejected", "contaminated", why
        return _columns(rows)


def build_dataset(requests: list[dict], teachers: list[TeacherConfig], run_key: str, actors: int, gen_cfg,
                  contamination=None):
    """The lazy Ray Dataset of outcomes for ``requests`` (nothing runs until it is iterated);
    ``contamination``: the object ref of the run's ``ContaminationIndex`` state, or None."""
    import ray.data

    per_actor = {t.name: max(1, math.ceil(t.max_concurrency / actors)) for t in teachers}
    in_flight = sum(per_actor.values())
    # Ray Data keeps up to 4 batches of an async actor running; batches of half the actor's
    # concurrency leave room for the next batch to start while a slow request finishes.
    batch_size = max(1, math.ceil(in_flight / 2))
    # A block's outcomes reach the driver (which commits them: the unit of resume) only once the whole
    # block is done, and an actor works on 4 blocks at once. So blocks stay small: a round of 1,950
    # corpus requests in 16 blocks ran an hour of a slow teacher's calls before the first commit.
    rows_per_block = max(8, 2 * in_flight)
    num_blocks = max(min(len(requests), 4 * actors * 4), math.ceil(len(requests) / rows_per_block))
    ds = ray.data.from_items(requests, override_num_blocks=max(1, num_blocks))
    if gen_cfg.engine == "ray_llm":
        from embedforge.generate.ray_llm import apply_ray_llm

        # Each teacher's rows go to that teacher's own vLLM processor; a teacher with no row in these
        # requests gets none (no replicas started for nothing).
        named = {r["teacher"] for r in requests}
        unknown = named - {t.name for t in teachers}
        if unknown:
            raise ValueError(f"requests name teachers not in generate.teachers: {', '.join(sorted(unknown))}")
        ds = apply_ray_llm(ds, [t for t in teachers if t.name in named]).map_batches(
            parse_outcomes, fn_kwargs={"min_words_short": gen_cfg.min_words_short, "min_words_long": gen_cfg.min_words_long},
            batch_size=batch_size, batch_format="numpy",
        )
        return _contamination(ds, batch_size, contamination)
    # Keys reach the actors by the env var each teacher names, never through config or logs.
    key_env = {t.api_key_env: os.environ[t.api_key_env] for t in teachers if t.api_key_env and t.api_key_env in os.environ}
    ds = ds.map_batches(
        TeacherCaller, runtime_env={"env_vars": key_env} if key_env else None,
        fn_constructor_kwargs={
            "teachers": [t.model_dump() for t in teachers], "run_key": run_key, "per_actor_concurrency": per_actor,
            "min_words_short": gen_cfg.min_words_short, "min_words_long": gen_cfg.min_words_long,
        },
        batch_size=batch_size, concurrency=actors, num_cpus=0.1, batch_format="numpy",
    )
    return _contamination(ds, batch_size, contamination)


def _contamination(ds, batch_size: int, index_ref):
    if index_ref is not None:
        ds = ds.map_batches(
            ContaminationFilter,
            fn_constructor_kwargs={"index_refs": [index_ref]},  # nested: Ray Data hands it over unresolved
            batch_size=batch_size, concurrency=1, num_cpus=0.1, batch_format="numpy",
        )
    return ds
