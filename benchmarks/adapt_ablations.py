"""Issue #15's ablations: what each part of corpus adaptation (configs/adapt.yaml) adds on SciFact.

Every trained variant fully fine-tunes all-MiniLM-L6-v2 with adapt.yaml's own train section (the real
``embedforge train`` runner: Ray Train + DeepSpeed ZeRO-3, mining included) on the queries a finished
``embedforge pipeline --config configs/adapt.yaml`` run generated — the split stage's training part, so
the held-out documents stay unseen — and is scored on the SciFact test split (its human queries and
qrels; nothing from SciFact's train split is used anywhere) through the real ``embedforge evaluate``
runner. Variants differ from ``adapted`` (the config as shipped) in one thing each:

    untouched         no training: all-MiniLM-L6-v2 as published
    adapted           configs/adapt.yaml: consistency-filtered pairs, positive-aware mining (0.95 rule)
    no_consistency    + the pairs the consistency filter rejected (rebuilt from the run's reject log:
                      the teacher's answer, re-validated, with the chunk it was written for)
    plain_mining      train.mining_max_positive_ratio=null: the student's top-30 taken as they come
    masking           train.guide_model=all-minilm-l6-v2: GISTEmbed-style false-negative masking

Each variant runs in its own subprocess (its own local Ray: ``RAY_ADDRESS=local``) and leaves
``<out>/results/<variant>.json``; a rerun skips finished variants. The table adds a 95 % paired-bootstrap
interval of each variant's nDCG@10 minus ``adapted``'s over the 300 test queries (per-query nDCG@10
computed from the evaluation's embedding cache, checked against mteb's mean).

    python benchmarks/adapt_ablations.py --run runs/adapt --out /tmp/embedforge-adapt-ablations
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
    "plain_mining": ["train.mining_max_positive_ratio=null"],
    "masking": ["train.guide_model=all-minilm-l6-v2"],
}


def pipeline_cfg(run: Path):
    """adapt.yaml as the pipeline run used it (its output folder and name)."""
    from embedforge.config import load_config

    return load_config(CONFIG, [f"run.output_dir={run.parent}", f"run.name={run.name}"])


def rebuilt_consistency_rejects(run: Path, train_keys_excluded: set[str]) -> list[dict]:
    """The pairs the consistency filter rejected, rebuilt as training rows: request i's chunk comes from
    the seeded planner (the id names i), the answer is re-validated with today's rules. Rows of held-out
    documents are left out (the split's rule: whole documents)."""
    from embedforge.generate.corpus import CorpusPlanner, load_chunks
    from embedforge.generate.validation import Rejected, parse_corpus_answer
    from embedforge.split import is_heldout, split_key

    cfg = pipeline_cfg(run)
    planner = CorpusPlanner(cfg.generate.corpus, load_chunks(cfg), cfg.run.seed)
    import pyarrow.parquet as pq

    from embedforge.schema import chunk_id_of

    # The rebuild trusts that request i still maps to the chunk it was written for: check it on the kept rows.
    for f in sorted((run / "data").glob("*.parquet")):
        for r in pq.read_table(f, columns=["id", "source"]).to_pylist()[:20]:
            req = planner.requests(int(r["id"].rsplit("-", 1)[1]), 1, {"t": 1.0})[0]
            if json.loads(req["values"])["chunk_id"] != chunk_id_of(r):
                raise SystemExit(f"{r['id']}: the planner maps it to another chunk than the run did "
                                 "(corpus or chunking changed since): cannot rebuild the rejects")
    rows, seen = [], set()
    for f in sorted((run / "generate" / "rejects").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("reason") != "consistency" or rec["id"] in seen:
                continue
            seen.add(rec["id"])
            index = int(rec["id"].rsplit("-", 1)[1])
            request = planner.requests(index, 1, {rec["teacher"]: 1.0})[0]
            assert request["id"] == rec["id"], (request["id"], rec["id"])
            try:
                row = parse_corpus_answer(request, rec["raw"], rec["teacher"], (0, 0))
            except Rejected:
                continue
            key = split_key(row)
            if key in train_keys_excluded or is_heldout(key, cfg.pipeline.heldout_fraction):
                continue
            rows.append(row)
    return rows


def variant_data(name: str, run: Path, out: Path) -> list[dict]:
    """train.data for a variant: the pipeline's training part (+ the rebuilt rejects for no_consistency)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedforge.schema import arrow_schema
    from embedforge.split import split_key

    train_dir = run / "pipeline" / "train_data"
    if not (train_dir / "rows.parquet").is_file():
        raise SystemExit(f"{train_dir}/rows.parquet not found: run `embedforge pipeline --config configs/adapt.yaml` "
                         "(at least its generate and split stages) first and pass its run folder as --run")
    sources = [{"path": str(train_dir), "ratio": 1.0}]
    if name == "no_consistency":
        extra_dir = out / "data" / "consistency_rejects"
        if not (extra_dir / "rows.parquet").is_file():
            train_rows = pq.read_table(train_dir / "rows.parquet").to_pylist()
            all_rows = [r for f in sorted((run / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
            train_ids = {r["id"] for r in train_rows}
            held_keys = {split_key(r) for r in all_rows if r["id"] not in train_ids}
            rows = rebuilt_consistency_rejects(run, held_keys)
            extra_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), extra_dir / "rows.parquet")
        sources.append({"path": str(extra_dir), "ratio": 1.0})
    return sources


def variant_config(name: str, run: Path, out: Path, model: str | None = None):
    from embedforge.config import load_config

    overrides = [
        f"run.output_dir={out / 'runs'}", f"run.name={name}",
        f"train.data={json.dumps(variant_data(name, run, out)) if VARIANTS[name] is not None else '[]'}",
        "evaluate.tasks=[]", "evaluate.baselines={}",
        f"evaluate.local_tasks=[{{kind: beir, path: {SCIFACT}, name: SciFact}}]",
    ] + (VARIANTS[name] or [])
    if model:
        overrides.append(f"model.backbone={model}")
    return load_config(CONFIG, overrides)


def run_variant(name: str, run: Path, out: Path) -> dict:
    from embedforge.evaluate.runner import evaluate_model
    from embedforge.train.runner import train_model

    record: dict = {"variant": name, "overrides": VARIANTS[name]}
    model = None
    if VARIANTS[name] is not None:
        cfg = variant_config(name, run, out)
        done = cfg.run.dir / "train" / "summary.json"
        if done.is_file():
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
        model = summary["merged"]
    else:
        record.update(train_rows=0, train_steps=0, train_seconds=0.0)
    cfg = variant_config(name, run, out, model)
    t0 = time.time()
    result = evaluate_model(cfg)
    record["eval_seconds"] = round(time.time() - t0, 1)
    record["model"] = cfg.model.backbone
    record["ndcg_at_10"] = float(next(iter(result.scores.values()))["SciFact"])
    per_query = per_query_ndcg(out, name)
    if per_query is not None:
        record["per_query_ndcg_at_10"] = per_query
        record["per_query_mean"] = sum(per_query.values()) / len(per_query)
    return record


# ------------------------------------------------------------------- per-query scores, bootstrap


def read_scifact_test():
    from embedforge.formats import read_json_lines

    corpus = {r["_id"]: r for r in read_json_lines(SCIFACT / "corpus.jsonl")}
    queries = {r["_id"]: r["text"] for r in read_json_lines(SCIFACT / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return corpus, {q: queries[q] for q in qrels}, qrels


def per_query_ndcg(out: Path, name: str) -> dict[str, float] | None:
    """nDCG@10 per test query from the variant's embedding cache (MiniLM runs without instructions, so
    queries and documents share one namespace); None when the cache does not hold every text."""
    import numpy as np

    from embedforge.evaluate.cache import EmbeddingCache, text_hash

    root = out / "runs" / name / "embedding_cache"
    spaces = [d.name for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    if len(spaces) != 1:
        return None
    cache = EmbeddingCache(root, spaces[0])
    corpus, queries, qrels = read_scifact_test()
    doc_ids = list(corpus)
    # mteb joins title and text for a retrieval corpus; take whichever form the cache holds.
    for form in (lambda d: f"{d['title']} {d['text']}".strip(), lambda d: d["text"], lambda d: f"{d['title']}\n{d['text']}"):
        keys = [text_hash(form(corpus[d])) for d in doc_ids]
        found = cache.get_many(keys)
        if len(found) == len(set(keys)):
            break
    else:
        return None
    docs = np.stack([found[k] for k in keys]).astype(np.float32)
    qids = list(queries)
    qfound = cache.get_many([text_hash(queries[q]) for q in qids])
    if len(qfound) < len({text_hash(queries[q]) for q in qids}):
        return None
    qv = np.stack([qfound[text_hash(queries[q])] for q in qids]).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    scores = qv @ docs.T
    out_scores = {}
    for i, q in enumerate(qids):
        top = np.argsort(-scores[i])[:10]
        rel = qrels[q]
        dcg = sum(rel.get(doc_ids[j], 0) / np.log2(r + 2) for r, j in enumerate(top))
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal))
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
    ref = results.get("adapted", {})
    lines = ["| variant | train pairs | steps | SciFact nDCG@10 | Δ vs adapted | Δ 95% CI | first → last loss | "
             "train wall (min) | eval wall (min) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in VARIANTS:
        r = results.get(name)
        if r is None:
            lines.append(f"| {name} | | | (not run) | | | | | |")
            continue
        delta = f"{r['ndcg_at_10'] - ref['ndcg_at_10']:+.4f}" if ref and name != "adapted" else "—"
        ci = "—"
        if ref and name != "adapted" and "per_query_ndcg_at_10" in r and "per_query_ndcg_at_10" in ref:
            lo, hi = delta_interval(ref["per_query_ndcg_at_10"], r["per_query_ndcg_at_10"])
            ci = f"[{lo:+.4f}, {hi:+.4f}]"
        loss = f"{r['first_loss']:.3f} → {r['last_loss']:.3f}" if "first_loss" in r else "—"
        lines.append(f"| {name} | {r['train_rows']} | {r['train_steps']} | {r['ndcg_at_10']:.4f} | {delta} | {ci} | "
                     f"{loss} | {r['train_seconds'] / 60:.1f} | {r['eval_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def load_results(out: Path) -> dict[str, dict]:
    return {n: json.loads((out / "results" / f"{n}.json").read_text())
            for n in VARIANTS if (out / "results" / f"{n}.json").is_file()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="the run folder of `embedforge pipeline --config configs/adapt.yaml`")
    ap.add_argument("--out", type=Path, default=Path("/tmp/embedforge-adapt-ablations"))
    ap.add_argument("--only", default="", help="comma-separated variants (default: all, in table order)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    ap.add_argument("--table", action="store_true", help="print the table of finished variants and exit")
    args = ap.parse_args(argv)
    run, out = args.run.resolve(), args.out.resolve()
    (out / "results").mkdir(parents=True, exist_ok=True)
    if args.variant:
        record = run_variant(args.variant, run, out)
        (out / "results" / f"{args.variant}.json").write_text(json.dumps(record, indent=2))
        print(json.dumps({k: v for k, v in record.items() if k != "per_query_ndcg_at_10"}), flush=True)
        return 0
    if not args.table:
        wanted = [v for v in args.only.split(",") if v] or list(VARIANTS)
        unknown = [v for v in wanted if v not in VARIANTS]
        if unknown:
            ap.error(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
        env = dict(os.environ, RAY_ADDRESS="local")
        for name in wanted:
            if (out / "results" / f"{name}.json").is_file():
                print(f"[{name}] done already", flush=True)
                continue
            print(f"[{name}] starting {time.strftime('%H:%M:%S')}", flush=True)
            rc = subprocess.call([sys.executable, __file__, "--run", str(run), "--out", str(out), "--variant", name],
                                 env=env, cwd=REPO)
            print(f"[{name}] exit {rc} {time.strftime('%H:%M:%S')}", flush=True)
    print(table(load_results(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
