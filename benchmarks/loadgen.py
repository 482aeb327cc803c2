"""Bounded, loopback-only load against an OpenAI-style /v1/embeddings endpoint.

    python benchmarks/loadgen.py --url http://127.0.0.1:8000/minilm/v1/embeddings --model all-minilm-l6-v2 \
        --stsb ../shared/data/stsb/test.tsv --requests 300 --per-request 8 --concurrency 8 --max-seconds 120

Prints one JSON line: requests/s, inputs/s, tokens/s, p50/p95/p99 latency (s), errors by kind.
The key (if the server needs one) comes from $EMBEDFORGE_API_KEY, never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from embedforge.testing.loadgen import MAX_REQUESTS, MAX_SECONDS, run_load, stsb_batches


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="full .../v1/embeddings URL on a loopback host")
    p.add_argument("--model", required=True)
    p.add_argument("--stsb", help="STSB TSV to take sentences from (default: a fixed synthetic set)")
    p.add_argument("--requests", type=int, default=300, help=f"at most {MAX_REQUESTS}")
    p.add_argument("--per-request", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-seconds", type=float, default=120.0, help=f"at most {MAX_SECONDS:.0f}")
    p.add_argument("--encoding-format", choices=["float", "base64"], default="float")
    args = p.parse_args(argv)
    if args.stsb:
        batches = stsb_batches(args.stsb, args.per_request, min(args.requests, 1000))
    else:
        batches = [[f"sentence {i}.{j} about topic {j % 7}" for j in range(args.per_request)] for i in range(50)]
    payloads = [{"model": args.model, "input": b, "encoding_format": args.encoding_format} for b in batches]
    report = asyncio.run(run_load(args.url, payloads, args.concurrency, args.requests, args.max_seconds,
                                  api_key=os.environ.get("EMBEDFORGE_API_KEY")))
    out = report.as_dict()
    out["error_times"] = out["error_times"][:20]
    print(json.dumps(out))
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
