"""Encoding throughput of the evaluation's encoding pool vs. sentence-transformers' own ``encode``.

Same model, same texts, one run: sentence-transformers ``encode`` in this process (the baseline),
then ``embedforge.encode_pool.encode_on_pool`` with 1 actor (goal: ratio >= 0.9) and with 2
actors. Repeats are interleaved (CPU contention hits all variants alike) and medians are quoted.
Ray times are end to end (actor start and model load included); "steady" excludes everything before
the first batch came back.

    python benchmarks/bench_encode.py [--n 2000] [--repeats 3] [--actors 1,2] [--model all-minilm-l6-v2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"


def load_texts(path: Path, n: int) -> list[str]:
    if path.is_file():
        from embedforge.formats import document_text, read_jsonl_texts

        docs = list(read_jsonl_texts(path, "document").values())[:n]
        return [document_text(d) for d in docs]
    # Without the shared data: deterministic texts of varied length.
    words = "the model encodes every sentence into a vector that captures its meaning".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(5 + (i * 37) % 200)) for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--actors", default="1,2")
    ap.add_argument("--batch-size", type=int, default=64, help="sentence-transformers batch size (rows)")
    ap.add_argument("--ray-batch-size", type=int, default=256, help="rows per batch sent to an actor")
    args = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from embedforge.embedders import EmbedderSpec
    from embedforge.encode_pool import encode_on_pool
    from embedforge.models import resolve_backbone
    from embedforge.ray_utils import init_ray

    texts = load_texts(args.data, args.n)
    spec = EmbedderSpec(args.model)
    st = SentenceTransformer(resolve_backbone(args.model), device="cpu")
    tokens = sum(len(ids) for ids in st.tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"])
    init_ray(num_cpus=os.cpu_count())
    actor_counts = [int(a) for a in args.actors.split(",")]
    times: dict[str, list[float]] = {"sentence-transformers": []}
    steady: dict[str, list[float]] = {}
    reference = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        reference = st.encode(texts, batch_size=args.batch_size, show_progress_bar=False)
        times["sentence-transformers"].append(time.perf_counter() - t0)
        for k in actor_counts:
            first: list[float] = []
            done = [0]

            def on_batch(ids, vecs, first=first, done=done):
                if not first:
                    first.append(time.perf_counter())
                    done[0] = len(ids)

            t0 = time.perf_counter()
            vecs = encode_on_pool(spec, texts, None, num_actors=k, batch_size=args.ray_batch_size, on_batch=on_batch)
            t1 = time.perf_counter()
            name = f"ray data, {k} actor{'s' if k > 1 else ''}"
            times.setdefault(name, []).append(t1 - t0)
            steady.setdefault(name, []).append((t1 - first[0]) / max(1, len(texts) - done[0]) * len(texts))
            diff = float(np.abs(vecs - reference).max())
            assert diff < 1e-3, f"{name}: vectors differ from sentence-transformers by {diff}"

    base = statistics.median(times["sentence-transformers"])
    print(f"model={args.model} texts={len(texts)} tokens={tokens} cpus={os.cpu_count()} "
          f"torch_threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'variant':<24} {'median s':>9} {'texts/s':>9} {'tokens/s':>10} {'ratio':>6} {'steady ratio':>12}")
    result = {}
    for name, ts in times.items():
        m = statistics.median(ts)
        s = statistics.median(steady[name]) if name in steady else m
        row = {"median_s": m, "texts_per_s": len(texts) / m, "tokens_per_s": tokens / m,
               "ratio_vs_st": base / m, "steady_ratio_vs_st": base / s}
        result[name] = row
        print(f"{name:<24} {m:>9.2f} {row['texts_per_s']:>9.1f} {row['tokens_per_s']:>10.0f} "
              f"{row['ratio_vs_st']:>6.2f} {row['steady_ratio_vs_st']:>12.2f}")
    print(json.dumps({"bench_encode": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
