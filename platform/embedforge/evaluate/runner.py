"""``run(cfg)``: evaluate ``cfg.model`` (backbone + optional adapter) and the configured baselines on
every task, then write mteb's result JSON per task and one summary (markdown, JSON, bar chart).

Every task's files are read and validated before any model is loaded, and results are written to a
staging folder that replaces the output only when every model finished every task: a failure never
leaves a partial result behind as if it were one.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from embedforge.config.base import ConfigError
from embedforge.evaluate.leaderboard import leaderboard_meta, save_result
from embedforge.evaluate.spec import ModelSpec
from embedforge.evaluate.summary import summary_table, write_summary
from embedforge.evaluate.tasks import corpus_labels_folder, evaluated_local_tasks, local_task, named_task
from embedforge.evaluate.wrapper import EmbedforgeModel


class ModelEncodeStats(BaseModel):
    """How one model's texts were encoded: all of them, served from the cache, computed by its pool."""

    texts: int
    cache_hits: int
    encoded: int
    encode_calls: int  # every task and side of the run, one pool
    model_loads: int  # the model loaded once per pool actor for the whole run (evaluate.num_actors)
    seconds: float
    fingerprint: str


class EvaluateResult(BaseModel):
    """Main scores per model and task, and where mteb's results and the summary were written."""

    output_dir: str
    scores: dict[str, dict[str, float]]  # model label -> task name -> main score
    summary: dict[str, str]  # markdown / json / chart -> path
    encode_stats: dict[str, ModelEncodeStats]
    results_dir: str
    # The configured model's results in MTEB's results-repository layout, with its ModelMeta
    # (results/<org__name>/<revision>/): copy it into a pull request to the leaderboard's repository.
    leaderboard_dir: str = ""


def build_tasks(names: list[str], local: list) -> list:
    """The evaluated tasks: MTEB's ``names``, then the ``local`` ones (``evaluated_local_tasks``: the
    configured folders, the corpus's labeled queries last)."""
    if not names and not local:
        raise ConfigError("evaluate: no tasks configured; give MTEB task names in evaluate.tasks "
                          "and/or folders in evaluate.local_tasks (kind: beir|sts|classification, path, name)")
    return [named_task(n) for n in names] + [local_task(t) for t in local]


def output_paths(cfg) -> tuple[Path, str | None]:
    ecfg = cfg.evaluate
    out = Path(ecfg.output_dir) if ecfg.output_dir else cfg.run.dir / "evaluate"
    if ecfg.cache_dir is None:
        cache = str(cfg.run.dir / "embedding_cache")
    else:
        cache = ecfg.cache_dir or None
    return out, cache


def weights_of(spec: ModelSpec) -> str:
    """Where the model's weight files are: a URI as it is (headers are read in place), else the
    local directory."""
    from embedforge.storage import is_uri

    return spec.backbone if is_uri(spec.backbone) else spec.resolved_path()


def models_to_run(cfg) -> list[tuple[str, ModelSpec, bool]]:
    """(label, spec, instructions): the configured model first, then baselines that name a model.

    The configured model gets instructions when it takes them (``model.instructions``, as it was
    trained); each baseline follows its own ``instructions``.
    """
    ecfg = cfg.evaluate
    dtype = ecfg.dtype or cfg.model.dtype
    if dtype == "auto":
        from embedforge.doctor import cpu_flags
        from embedforge.models import auto_encoding_dtype

        dtype = auto_encoding_dtype(cfg.model.device, cpu_flags())
    runs = [(cfg.run.name, ModelSpec.of(cfg.model, dtype=dtype), cfg.model.instructions)]
    for name, b in ecfg.baselines.items():
        if b.model is not None:  # the baseline's weights, encoded with the model section's settings
            runs.append((name, ModelSpec.of(cfg.model, backbone=b.model, adapter=None, dtype=dtype), b.instructions))
    return runs


def evaluate_model(cfg) -> EvaluateResult:
    ecfg = cfg.evaluate
    out_dir, cache_dir = output_paths(cfg)
    tasks = build_tasks(ecfg.tasks, evaluated_local_tasks(cfg))
    if ecfg.corpus_labels and cfg.generate.corpus and corpus_labels_folder(cfg) is None:
        print(f"evaluate.corpus_labels: generate.corpus.path {cfg.generate.corpus.path!r} has no labeled queries "
              f"(queries.jsonl and qrels/{ecfg.corpus_labels.split}.tsv beside corpus.jsonl): not scored on them", flush=True)
    runs = models_to_run(cfg)
    for _label, spec, _ in runs:
        spec.resolved_path()  # a missing model path fails here, before any encoding
    import mteb

    from embedforge.encode_pool import EncodingPool

    staging = out_dir.parent / f".{out_dir.name}.staging-{uuid.uuid4().hex[:8]}"
    main_scores: dict[str, dict[str, float]] = {}
    stats: dict[str, dict] = {}
    leaderboard_dir = None
    try:
        for label, spec, use_instr in runs:
            # One pool per model for the whole run: every task and side reuses its actors (the driver
            # loads no weights; a model is loaded once per actor).
            t0 = time.time()
            with EncodingPool(spec, num_actors=ecfg.num_actors, cpus_per_actor=ecfg.cpus_per_actor,
                              gpus_per_actor=ecfg.gpus_per_actor, batch_size=ecfg.ray_batch_size, stage="evaluate",
                              settings="evaluate.num_actors, evaluate.cpus_per_actor: unset = the cluster's "
                                       "CPUs / actors, evaluate.gpus_per_actor",
                              resource_check=cfg.run.resource_check) as pool:
                model = EmbedforgeModel(spec, label, encoder=pool, instructions=use_instr,
                                        task_instructions=ecfg.task_instructions, cache_dir=cache_dir)
                # The configured model (the first run) also gets the leaderboard's layout and ModelMeta.
                meta = None if label != cfg.run.name else leaderboard_meta(
                    model.mteb_model_meta, weights_of(spec), [d.name for d in cfg.generate.labeled], use_instr)
                main_scores[label] = {}
                for task in tasks:
                    result = mteb.evaluate(model, task, cache=None, overwrite_strategy="always",
                                           show_progress_bar=False, raise_error=True)
                    task_result = result.task_results[0]
                    result_path = staging / "results" / label / f"{task.metadata.name}.json"
                    result_path.parent.mkdir(parents=True, exist_ok=True)
                    task_result.to_disk(result_path)
                    if meta is not None:
                        leaderboard_dir = save_result(staging / "mteb", task_result, meta)
                    main_scores[label][task.metadata.name] = float(task_result.get_score())
            stats[label] = ModelEncodeStats(texts=model.stats.texts, cache_hits=model.stats.cache_hits,
                                            encoded=model.stats.encoded, encode_calls=len(model.stats.calls),
                                            model_loads=pool.model_loads,
                                            seconds=round(time.time() - t0, 2), fingerprint=model.fingerprint)
        score_names = {t.metadata.name: t.metadata.main_score for t in tasks}
        published = {n: b.published for n, b in ecfg.baselines.items() if b.published}
        table = summary_table(main_scores, score_names, published)
        files = write_summary(staging, table, {"encode_stats": {k: v.model_dump() for k, v in stats.items()}})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    files = {k: str(out_dir / Path(v).name) for k, v in files.items()}
    return EvaluateResult(output_dir=str(out_dir), scores=main_scores, summary=files, encode_stats=stats,
                          results_dir=str(out_dir / "results"),
                          leaderboard_dir=str(out_dir / leaderboard_dir.relative_to(staging)) if leaderboard_dir else "")
