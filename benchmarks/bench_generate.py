"""Pipeline overhead against the local llama.cpp teacher: completion tokens/s of the Ray Data
pipeline ÷ a bare asyncio loop over the same requests with the same client and concurrency.

Both send identical requests (same prompts, seeds, max_tokens, JSON schema), so the server does the
same work; passes alternate (bare, pipeline, bare, pipeline, ...) and medians are reported.
Goal: ratio ≥ 0.9.

    python benchmarks/bench_generate.py --requests 16 --max-tokens 64 --concurrency 2 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from embedforge.config.generate import GenerateConfig, LocalTeacherConfig
from embedforge.generate.pipeline import build_dataset
from embedforge.generate.taxonomy import example_request, language_weights, load_template
from embedforge.generate.teachers import LocalTeacherServer, call_teacher, make_client


def make_requests(n: int, max_tokens: int, teacher: str) -> list[dict]:
    t = load_template("sts")
    langs = language_weights({k: 0 for k in language_weights() if k != "English"})
    reqs = []
    for i in range(n):
        r = example_request(t, f"sts-{i:07d}", i, [], 0, langs, 1)
        reqs.append({**r, "teacher": teacher, "max_tokens": max_tokens})
    return reqs


def bare_loop(teacher, requests, concurrency: int) -> tuple[int, float]:
    async def main():
        client = make_client(teacher)
        sem = asyncio.Semaphore(concurrency)

        async def one(r):
            async with sem:
                return await call_teacher(client, teacher, r, r["max_tokens"])

        start = time.perf_counter()
        outs = await asyncio.gather(*(one(r) for r in requests))
        return sum(o["completion_tokens"] for o in outs), time.perf_counter() - start

    return asyncio.run(main())


def pipeline(teacher, requests, cfg: GenerateConfig) -> tuple[int, float]:
    start = time.perf_counter()
    ds = build_dataset(requests, [teacher], "bench", cfg.actors, cfg)
    tokens = sum(int(row["completion_tokens"]) for row in ds.iter_rows())
    return tokens, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from embedforge.ray_utils import init_ray

    ray = init_ray(num_cpus=2)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = GenerateConfig(actors=1, progress=False)
    with LocalTeacherServer(LocalTeacherConfig(enabled=True, n_threads=2, max_concurrency=args.concurrency)) as server:
        teacher = server.teacher()
        requests = make_requests(args.requests, args.max_tokens, teacher.name)
        bare_loop(teacher, requests[:2], args.concurrency)  # warm the server (model pages, grammar cache)
        bare, pipe = [], []
        for rep in range(args.repeats):
            tok_b, wall_b = bare_loop(teacher, requests, args.concurrency)
            tok_p, wall_p = pipeline(teacher, requests, cfg)
            bare.append(tok_b / wall_b)
            pipe.append(tok_p / wall_p)
            print(f"pass {rep}: bare {tok_b} tok in {wall_b:.1f}s = {bare[-1]:.1f} tok/s | "
                  f"pipeline {tok_p} tok in {wall_p:.1f}s = {pipe[-1]:.1f} tok/s", flush=True)
    mb, mp = statistics.median(bare), statistics.median(pipe)
    print(f"requests={args.requests} max_tokens={args.max_tokens} concurrency={args.concurrency} repeats={args.repeats}")
    print(f"bare async-client loop: {mb:.2f} completion tok/s (median)")
    print(f"Ray Data pipeline:      {mp:.2f} completion tok/s (median)")
    print(f"ratio pipeline / bare:  {mp / mb:.3f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
