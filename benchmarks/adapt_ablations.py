"""Issue #15's ablations: what each part of corpus adaptation (configs/adapt.yaml) adds on SciFact.

Every trained variant fully fine-tunes all-MiniLM-L6-v2 with adapt.yaml's own train section (the real
``embedforge train`` runner: Ray Train + DeepSpeed ZeRO-3, mining included) on the queries a finished
``embedforge pipeline --config configs/adapt.yaml`` run generated — the split stage's training part, so
the held-out documents stay unseen — and is scored on the SciFact test split (its human queries and
qrels; nothing from SciFact's train split is used, the human_* references aside) through the real
``embedforge evaluate`` runner. Variants differ from ``adapted`` (the config as shipped) in one thing each:

    untouched         no training: all-MiniLM-L6-v2 as published
    adapted           configs/adapt.yaml: consistency-filtered pairs, positive-aware mining (0.95 rule)
    no_consistency    + the pairs the consistency filter rejected (rebuilt from the run's reject log:
                      the teacher's answer, re-validated, with the chunk it was written for)
    loose_filter      + the rejected pairs whose chunk ranked in the filter's top 50 (a looser
                      generate.corpus.consistency.top_k, without generating again: the reject log
                      records each reject's rank)
    no_title          the kept pairs less those of the title style: what generate.corpus.styles.title=0
                      (adapt.yaml's mix since 2026-12-04) keeps of a run generated with titles, without
                      generating again (the style is in each row's id); on a run without titles, adapted
    plain_mining      train.mining_max_positive_ratio=null: the student's top-30 taken as they come
    masking           train.guide_model=all-minilm-l6-v2: GISTEmbed-style false-negative masking
    three_negatives   three mined negatives per query instead of one, with gradient caching in chunks of 16
    smollm2_student   SmolLM2-135M + LoRA as the student instead of MiniLM (same pairs)
    human_pairs       a reference, not an ablation: SciFact's own *train* split (its 919 human-written
                      claims and the abstracts judged for them) through the same trainer and recipe in
                      place of the generated pairs — what a teacher writing SciFact's own kind of
                      claims would give this student. The human_* variants are the only ones that read
                      the train split; its qrels never touch the test queries scored here
    human_filtered    the human pairs the run's consistency filter would keep (their abstract's best
                      chunk in the filter model's top_k of every chunk, as for a generated query): what
                      the filter costs when the queries are good
    human_subset      as many human pairs as human_filtered keeps, drawn at random (seed 0): the size
                      control for human_filtered

Each variant runs in its own subprocess (its own local Ray: ``RAY_ADDRESS=local``) and leaves
``<out>/results/<variant>.json``; a rerun skips finished variants. The table adds a 95 % paired-bootstrap
interval of each variant's nDCG@10 minus ``adapted``'s over the 300 test queries (per-query nDCG@10
computed from the evaluation's embedding cache, checked against mteb's mean).

    python benchmarks/adapt_ablations.py --run runs/adapt --out /tmp/embedforge-adapt-ablations [--set train.epochs=3]
    python benchmarks/adapt_ablations.py --run runs/adapt --out /tmp/embedforge-adapt-ablations --table
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

SCIFACT = (REPO / ".." / "shared" / "data" / "scifact").resolve()
CONFIG = REPO / "configs" / "adapt.yaml"

VARIANTS = {
    "untouched": None,
    "adapted": [],
    "no_consistency": [],  # its data differs, not its config
    "loose_filter": [],  # likewise
    "no_title": [],  # likewise
    "plain_mining": ["train.mining_max_positive_ratio=null"],
    "masking": ["train.guide_model=all-minilm-l6-v2"],
    # 16 queries + 64 passages of up to 257 tokens a worker at once held ~10 GB each and Ray's memory
    # monitor killed both workers on the 24 GB box (2026-12-04): gradient caching bounds it.
    "three_negatives": ["train.negatives_per_query=3", "train.chunk_size=16"],
    # The softmax temperature either side of MultipleNegativesRankingLoss's 0.05: the paper's 0.02 (sharper:
    # the hardest negatives dominate the gradient) and 0.1 (softer: every negative counts).
    "temperature_002": ["train.temperature=0.02"],
    "temperature_01": ["train.temperature=0.1"],
    # The other student: SmolLM2-135M (a decoder: last-token pooling, instructions, LoRA) on the same pairs
    # (chunked in MiniLM's tokens, under its 256), negatives mined with MiniLM (the untrained decoder's
    # own vectors rank at chance), SciFact encoded at evaluate.dtype=auto as configs/cpu-quality.yaml does
    # (bf16 only where the CPU has it natively). lr 2e-3: the
    # tiny step-size study's best for LoRA on SmolLM2 at 32 pairs a step (docs/results.md). One 2-thread
    # worker with gradient caching in chunks of 16, as configs/cpu-quality.yaml: on 2 cores one 2-thread
    # worker steps faster than two 1-thread ones, and without caching a step's 96 sequences of up to 256
    # tokens would hold their fp32 activations at once (72 x 128 tokens already peaked at 20 GB here).
    # Documents cut to 128 tokens in training (evaluated at 256), as configs/cpu-quality.yaml, whose
    # 0.317 is the bar: at 256 a step took ~270 s on the 2-core AVX2 EPYC VM (45 tokens/s).
    "smollm2_student": ["model.backbone=smollm2-135m", "model.pooling=last_token", "model.instructions=true",
                        "model.max_length=256", "train.finetune=lora", "train.lr=2e-3", "train.temperature=0.02",
                        "train.query_max_length=64", "train.passage_max_length=128",
                        "train.num_workers=1", "train.cpus_per_worker=2", "train.chunk_size=16",
                        "train.mining_model=all-minilm-l6-v2", "evaluate.dtype=auto"],
    "human_pairs": [],  # their data differs, not their config
    "human_filtered": [],
    "human_subset": [],
}


def pipeline_cfg(run: Path):
    """The config the pipeline run used: its own config.yaml (with the command line's overrides, e.g.
    ``generate.corpus.queries_per_chunk=3``, which changes which chunk request ``i`` was written for),
    else adapt.yaml at the run's folder and name."""
    from embedforge.config import load_config

    location = [f"run.output_dir={run.parent}", f"run.name={run.name}"]
    saved = run / "config.yaml"
    return load_config(saved, location) if saved.is_file() else load_config(CONFIG, location)


# loose_filter: the consistency rejects it adds back, as if top_k had been this.
LOOSE_TOP_K = 50


def rebuilt_consistency_rejects(run: Path, kept: list[dict], held_keys: set[str],
                                max_rank: int | None = None) -> list[dict]:
    """The pairs the consistency filter rejected (those ranked at most ``max_rank`` when given), rebuilt
    as training rows. Request ``corpus-<style>-<i>``
    was written for chunk ``sampler(i)`` (the run's seeded order; the style is in the id, so a style mix
    changed mid-run does not matter); its answer is re-validated with today's rules. Rows of held-out
    documents are left out (the split's rule: whole documents). ``kept``: the run's kept rows."""
    from embedforge.generate.consistency import reject_rank
    from embedforge.generate.corpus import CorpusPlanner, load_chunks, style_of_id
    from embedforge.generate.validation import Rejected, parse_corpus_answer
    from embedforge.schema import chunk_id_of
    from embedforge.split import is_heldout, split_key

    cfg = pipeline_cfg(run)
    planner = CorpusPlanner(cfg.generate.corpus, load_chunks(cfg), cfg.run.seed)

    def request_of(row_id: str) -> dict:
        return planner.request(int(row_id.rsplit("-", 1)[1]), style_of_id(row_id))

    # The rebuild trusts that request i still maps to the chunk it was written for: check it on kept rows.
    for r in kept[:50]:
        if json.loads(request_of(r["id"])["values"])["chunk_id"] != chunk_id_of(r):
            raise SystemExit(f"{r['id']}: the sampler maps it to another chunk than the run did "
                             "(corpus or chunking changed since): cannot rebuild the rejects")
    rows, seen = [], set()
    for f in sorted((run / "generate" / "rejects").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("reason") != "consistency" or rec["id"] in seen:
                continue
            if max_rank is not None and reject_rank(rec["detail"]) > max_rank:
                continue
            seen.add(rec["id"])
            try:
                row = parse_corpus_answer(request_of(rec["id"]), rec["raw"], rec["teacher"], (0, 0))
            except Rejected:
                continue
            key = split_key(row)
            if key in held_keys or is_heldout(key, cfg.pipeline.heldout_fraction):
                continue
            rows.append(row)
    return rows


def human_data(name: str, run: Path, out: Path) -> Path:
    """The folder of a human_* variant's rows (written once per --out): SciFact's train pairs, those the
    run's consistency filter keeps, or a random subset of the same size."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.evaluate.wrapper import task_instruction
    from embedforge.generate.labeled import write_labeled
    from embedforge.schema import arrow_schema

    folder = out / "data" / name
    if any(folder.glob("*.parquet")):
        return folder
    if name == "human_pairs":
        write_labeled([LabeledDatasetConfig(kind="beir", name="scifact-train", path=str(SCIFACT), split="train",
                                            task=task_instruction("SciFact", "Retrieval", "query"))], folder)
        return folder
    rows = [r for f in sorted(human_data("human_pairs", run, out).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    if name == "human_filtered":
        cfg = pipeline_cfg(run)
        ranks, top_k = human_filter_ranks(cfg, run, rows), cfg.generate.consistency.top_k
        keep = [r for r, rank in zip(rows, ranks, strict=True) if rank <= top_k]
        (out / "data").mkdir(parents=True, exist_ok=True)
        (out / "data" / "human_filter_ranks.json").write_text(json.dumps([int(x) for x in ranks]))
    else:
        keep = random.Random(0).sample(rows, pq.read_metadata(human_data("human_filtered", run, out) / "rows.parquet").num_rows)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(keep, schema=arrow_schema()), folder / "rows.parquet")
    return folder


def human_filter_ranks(cfg, run: Path, rows: list[dict]):
    """For each human pair, the rank of its abstract's best chunk for its claim among every chunk of the
    corpus under the run's consistency filter (its model, its cached chunk vectors): the filter's own
    test, taken per document because a human claim was judged against a whole abstract."""
    import numpy as np

    from embedforge.formats import document_text, read_beir
    from embedforge.generate.consistency import ConsistencyFilter
    from embedforge.generate.corpus import load_chunks

    chunks = load_chunks(cfg)
    doc_of_text = {document_text(doc): doc_id for doc_id, doc in read_beir(SCIFACT, "train")["corpus"].items()}
    chunks_of: dict[str, list[int]] = {}
    for i, c in enumerate(chunks.chunks):
        chunks_of.setdefault(c.doc_id, []).append(i)
    missing = {doc_of_text[r["positive"]] for r in rows} - set(chunks_of)
    if missing:  # before any encoding
        raise SystemExit(f"human_filtered: {len(missing)} of SciFact's judged train abstracts are not chunks of "
                         f"{run}'s corpus (generate.corpus.path must be SciFact's corpus)")
    flt = ConsistencyFilter(cfg, chunks, run / "generate" / "corpus")
    try:
        flt.prepare()
        query_vecs = flt.pool.encode([r["query"] for r in rows], [r["task"] if flt.instructions else None for r in rows])
        chunk_vecs = flt.chunk_vecs
    finally:
        flt.close()
    return best_document_ranks(np.asarray(query_vecs), chunk_vecs,
                               [chunks_of[doc_of_text[r["positive"]]] for r in rows])


def best_document_ranks(query_vecs, chunk_vecs, own_chunks: list[list[int]]):
    """Per query, the best (lowest) rank among all chunks of any of its own chunks (``own_chunks[i]``:
    row indices of ``chunk_vecs``): a document ranks where its best-matching chunk does."""
    import numpy as np

    from embedforge.generate.consistency import own_chunk_ranks

    pair_of = np.array([i for i, own in enumerate(own_chunks) for _ in own], dtype=np.int64)
    ranks = own_chunk_ranks(np.asarray(query_vecs)[pair_of], chunk_vecs, np.array([c for own in own_chunks for c in own]))
    best = np.full(len(own_chunks), np.iinfo(np.int64).max)
    np.minimum.at(best, pair_of, ranks)
    return best


def variant_data(name: str, run: Path, out: Path) -> list[dict]:
    """train.data for a variant: the pipeline's training part (+ the rebuilt rejects for no_consistency,
    those ranked in the top LOOSE_TOP_K for loose_filter; less the title-style rows for no_title), or the
    human pairs of a human_* reference."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedforge.schema import arrow_schema
    from embedforge.split import split_key

    if name.startswith("human_"):
        return [{"path": str(human_data(name, run, out)), "ratio": 1.0}]
    train_dir = run / "pipeline" / "train_data"
    if not (train_dir / "rows.parquet").is_file():
        raise SystemExit(f"{train_dir}/rows.parquet not found: run `embedforge pipeline --config configs/adapt.yaml` "
                         "(at least its generate and split stages) first and pass its run folder as --run")
    sources = [{"path": str(train_dir), "ratio": 1.0}]
    if name == "no_title":
        from embedforge.generate.corpus import style_of_id

        subset_dir = out / "data" / "no_title"
        if not (subset_dir / "rows.parquet").is_file():
            rows = pq.read_table(train_dir / "rows.parquet").to_pylist()
            subset_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([r for r in rows if style_of_id(r["id"]) != "title"],
                                                schema=arrow_schema()), subset_dir / "rows.parquet")
        return [{"path": str(subset_dir), "ratio": 1.0}]
    if name in ("no_consistency", "loose_filter"):
        max_rank = LOOSE_TOP_K if name == "loose_filter" else None
        extra_dir = out / "data" / ("consistency_rejects" + (f"_top{max_rank}" if max_rank else ""))
        if not (extra_dir / "rows.parquet").is_file():
            train_ids = set(pq.read_table(train_dir / "rows.parquet", columns=["id"]).column("id").to_pylist())
            kept = [r for f in sorted((run / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
            held_keys = {split_key(r) for r in kept if r["id"] not in train_ids}
            rows = rebuilt_consistency_rejects(run, kept, held_keys, max_rank)
            extra_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), extra_dir / "rows.parquet")
        sources.append({"path": str(extra_dir), "ratio": 1.0})
    return sources


def variant_config(name: str, run: Path, out: Path, model: str | None = None, common: list[str] = ()):
    from embedforge.config import load_config

    overrides = [
        f"run.output_dir={out / 'runs'}", f"run.name={name}",
        f"train.data={json.dumps(variant_data(name, run, out)) if VARIANTS[name] is not None else '[]'}",
        "evaluate.tasks=[]", "evaluate.baselines={}",
        f"evaluate.local_tasks=[{{kind: beir, path: {SCIFACT}, name: SciFact}}]",
    ] + list(common) + (VARIANTS[name] or [])
    if model:  # the trained model in place of the backbone (after the variant's own overrides)
        overrides.append(f"model.backbone={model}")
    return load_config(CONFIG, overrides)


def pipeline_trained(run: Path, cfg) -> tuple[dict, float] | None:
    """(train summary, seconds) of the pipeline run's own model when it was trained with exactly ``cfg``'s
    train section (its data aside: the same split), else None."""
    from embedforge.config import load_config

    summary, marker = run / "train" / "summary.json", run / "pipeline" / "train.done.json"
    if not (summary.is_file() and marker.is_file() and (run / "config.yaml").is_file()):
        return None
    used = load_config(run / "config.yaml").train.model_dump(exclude={"data"})
    if used != cfg.train.model_dump(exclude={"data"}):
        return None
    return json.loads(summary.read_text()), float(json.loads(marker.read_text())["seconds"])


def run_variant(name: str, run: Path, out: Path, common: list[str]) -> dict:
    from embedforge.config import with_values
    from embedforge.evaluate.runner import evaluate_model
    from embedforge.train.runner import train_model

    record: dict = {"variant": name, "overrides": VARIANTS[name], "common_overrides": list(common)}
    model = None
    if VARIANTS[name] is not None:
        cfg = variant_config(name, run, out, common=common)
        done = cfg.run.dir / "train" / "summary.json"
        pipeline_model = pipeline_trained(run, cfg) if name == "adapted" else None
        if pipeline_model is not None:  # the pipeline run trained exactly this: its model, not a second run
            summary, record["train_seconds"] = pipeline_model
            record["trained_by"] = "the pipeline run"
        elif done.is_file():
            summary = json.loads(done.read_text())
            record["train_seconds"] = json.loads((done.parent / "wall.json").read_text())["seconds"]
        else:
            t0 = time.time()
            summary = train_model(cfg).model_dump()
            record["train_seconds"] = round(time.time() - t0, 1)
            (done.parent / "wall.json").write_text(json.dumps({"seconds": record["train_seconds"]}))
        losses = [json.loads(line)["loss"] for line in Path(summary["metrics"]).read_text().splitlines()]
        record.update(train_rows=summary["mixed_rows"], train_steps=summary["total_steps"],
                      first_loss=losses[0], last_loss=losses[-1])
        model = summary["merged"]  # LoRA: the adapter merged into the backbone
    else:
        record.update(train_rows=0, train_steps=0, train_seconds=0.0)
    cfg = variant_config(name, run, out, model, common)
    if record.get("trained_by"):  # the pipeline run encoded this model already: its cache serves the evaluation
        cfg = with_values(cfg, **{"evaluate.cache_dir": str(run / "embedding_cache")})
    t0 = time.time()
    result = evaluate_model(cfg)
    record["eval_seconds"] = round(time.time() - t0, 1)
    record["model"] = cfg.model.backbone
    record["ndcg_at_10"] = float(next(iter(result.scores.values()))["SciFact"])
    per_query = per_query_ndcg(cfg)
    if per_query is not None:
        record["per_query_ndcg_at_10"] = per_query
        record["per_query_mean"] = sum(per_query.values()) / len(per_query)
    return record


# ------------------------------------------------------------------- per-query scores, bootstrap


def read_scifact_test():
    from embedforge.formats import read_beir

    data = read_beir(SCIFACT, "test")
    return data["corpus"], data["queries"], data["relevant_docs"]


def per_query_ndcg(cfg) -> dict[str, float] | None:
    """nDCG@10 per SciFact test query of ``cfg``'s model, from its evaluation's embedding cache (the
    namespaces of exactly this model's fingerprint: documents uninstructed, queries with SciFact's
    instruction when the model takes one); None when the cache does not hold every text."""
    import numpy as np

    from embedforge.evaluate.cache import EmbeddingCache, namespace_key, text_hash
    from embedforge.evaluate.runner import models_to_run, output_paths
    from embedforge.evaluate.wrapper import task_instruction
    from embedforge.formats import document_text

    _, root = output_paths(cfg)
    _, spec, instructed = models_to_run(cfg)[0]
    fp = spec.fingerprint()
    query_instruction = (task_instruction("SciFact", "Retrieval", "query", cfg.evaluate.task_instructions)
                         if instructed else None)
    doc_cache = EmbeddingCache(root, namespace_key(fp, None))
    query_cache = EmbeddingCache(root, namespace_key(fp, query_instruction))
    corpus, queries, qrels = read_scifact_test()
    doc_ids, qids = list(corpus), list(queries)

    def lookup(cache, texts):
        keys = [text_hash(t) for t in texts]
        found = cache.get_many(keys)
        if len(found) < len(set(keys)):
            return None
        return np.stack([found[k] for k in keys]).astype(np.float32)

    docs = lookup(doc_cache, [document_text(corpus[d]) for d in doc_ids])  # the text mteb hands the encoder
    qv = lookup(query_cache, [queries[q] for q in qids])
    if docs is None or qv is None:
        return None
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    scores = qv @ docs.T
    out_scores = {}
    for i, q in enumerate(qids):
        top = np.argsort(-scores[i])[:10]
        rel = qrels[q]
        dcg = sum(rel.get(doc_ids[j], 0) / np.log2(r + 2) for r, j in enumerate(top))
        idcg = sum(g / np.log2(r + 2) for r, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        out_scores[q] = float(dcg / idcg) if idcg > 0 else 0.0
    return out_scores


def delta_interval(base: dict[str, float], cand: dict[str, float], rounds: int = 2000, seed: int = 0):
    import numpy as np

    qids = sorted(base)
    d = np.array([cand[q] - base[q] for q in qids])
    idx = np.random.default_rng(seed).integers(0, len(d), size=(rounds, len(d)))
    lo, hi = np.percentile(d[idx].mean(1), [2.5, 97.5])
    return float(lo), float(hi)


def table(results: dict[str, dict]) -> str:
    """One row per variant: its score, and its difference from the untouched student and from ``adapted``
    with a 95 % paired-bootstrap interval over the test queries."""

    def delta(r: dict, ref_name: str) -> str:
        ref = results.get(ref_name)
        if ref is None or r is ref:
            return "—"
        d = f"{r['ndcg_at_10'] - ref['ndcg_at_10']:+.4f}"
        if "per_query_ndcg_at_10" in r and "per_query_ndcg_at_10" in ref:
            lo, hi = delta_interval(ref["per_query_ndcg_at_10"], r["per_query_ndcg_at_10"])
            d += f" [{lo:+.4f}, {hi:+.4f}]"
        return d

    lines = ["| variant | train pairs | steps | SciFact nDCG@10 | Δ vs untouched [95% CI] | Δ vs adapted [95% CI] | "
             "first → last loss | train wall (min) | eval wall (min) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in VARIANTS:
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | | | (not run) | | | | | |")
            continue
        loss = f"{r['first_loss']:.3f} → {r['last_loss']:.3f}" if "first_loss" in r else "—"
        lines.append(f"| {name} | {r['train_rows']} | {r['train_steps']} | {r['ndcg_at_10']:.4f} | {delta(r, 'untouched')} | "
                     f"{delta(r, 'adapted')} | {loss} | {r['train_seconds'] / 60:.1f} | {r['eval_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def load_results(out: Path) -> dict[str, dict]:
    return {n: json.loads((out / "results" / f"{n}.json").read_text())
            for n in VARIANTS if (out / "results" / f"{n}.json").is_file()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="the run folder of `embedforge pipeline --config configs/adapt.yaml`")
    ap.add_argument("--out", type=Path, default=Path("/tmp/embedforge-adapt-ablations"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every variant (e.g. train.epochs=3); one --out holds one set")
    ap.add_argument("--only", default="", help="comma-separated variants (default: all, in table order)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    ap.add_argument("--table", action="store_true", help="print the table of finished variants and exit")
    args = ap.parse_args(argv)
    run, out = args.run.resolve(), args.out.resolve()
    (out / "results").mkdir(parents=True, exist_ok=True)
    if args.variant:
        record = run_variant(args.variant, run, out, args.set)
        (out / "results" / f"{args.variant}.json").write_text(json.dumps(record, indent=2))
        print(json.dumps({k: v for k, v in record.items() if k != "per_query_ndcg_at_10"}), flush=True)
        return 0
    if not args.table:
        wanted = [v for v in args.only.split(",") if v] or list(VARIANTS)
        unknown = [v for v in wanted if v not in VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
        recipe = out / "recipe.json"
        if recipe.is_file() and json.loads(recipe.read_text()) != {"run": str(run), "set": args.set}:
            raise SystemExit(f"{out} holds variants of {recipe.read_text()}; pass the same --run/--set or another --out")
        recipe.write_text(json.dumps({"run": str(run), "set": args.set}))
        env = dict(os.environ, RAY_ADDRESS="local")
        for name in wanted:
            if (out / "results" / f"{name}.json").is_file():
                print(f"[{name}] done already", flush=True)
                continue
            print(f"[{name}] starting {time.strftime('%H:%M:%S')}", flush=True)
            cmd = [sys.executable, __file__, "--run", str(run), "--out", str(out), "--variant", name]
            rc = subprocess.call(cmd + [f"--set={o}" for o in args.set], env=env, cwd=REPO)
            print(f"[{name}] exit {rc} {time.strftime('%H:%M:%S')}", flush=True)
    print(table(load_results(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
