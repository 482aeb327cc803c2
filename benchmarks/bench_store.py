"""The evaluation's embedding store at 1 M documents: driver memory and time, before and after.

One million synthetic documents (random words, 8–40 each) go through the evaluation's real encode
path — ``EmbedforgeModel.encode_texts`` with its embedding cache — in chunks of 50,000, as mteb's
retrieval search asks for a corpus, with a small random encoder of dimension 384 in the driver (a
hashed bag of words through a fixed random matrix: cheap, so the store's cost is what is measured).
Then the same run again in a fresh process: every vector comes from the store, nothing is encoded.

Two stores, each in its own fresh processes (peak RSS only grows):

* old (the baseline, kept here verbatim in spirit): the cache before this change — ``.npz`` shards,
  and every vector of the namespace loaded into a dict in the driver on first use;
* new: ``embedforge.evaluate.cache.EmbeddingCache`` — ``.npy`` shards and a SQLite index; a lookup
  reads only the rows asked for (memory-mapped).

Prints, per store and pass: wall seconds, texts encoded, driver peak RSS (``VmHWM``); then the
new ÷ old ratios and a JSON summary.

    python benchmarks/bench_store.py                 # 1,000,000 documents
    python benchmarks/bench_store.py --n 100000      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PLATFORM = Path(__file__).resolve().parents[1] / "platform"
sys.path.insert(0, str(PLATFORM))

DIM = 384
CHUNK = 50_000  # mteb's corpus_chunk_size


class OldNpzCache:
    """The store before this change (the baseline): every vector of a namespace in a dict."""

    def __init__(self, root, namespace: str):
        import numpy as np

        self.np = np
        self.dir = Path(root) / namespace if root else None
        self._mem = None

    def _load(self):
        if self._mem is None:
            self._mem = {}
            if self.dir is not None and self.dir.is_dir():
                for shard in sorted(p for p in self.dir.glob("*.npz") if not p.name.startswith(".")):
                    with self.np.load(shard) as z:
                        for k, v in zip(z["keys"].tolist(), z["vecs"], strict=True):
                            self._mem[k] = v
        return self._mem

    def get_many(self, keys):
        mem = self._load()
        return {k: mem[k] for k in keys if k in mem}

    def put_many(self, keys, vecs):
        mem = self._load()
        vecs = self.np.asarray(vecs, dtype=self.np.float32)
        for k, v in zip(keys, vecs, strict=True):
            mem[k] = v
        self.dir.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            self.np.savez(fh, keys=self.np.asarray(list(keys)), vecs=vecs)
        os.replace(tmp, self.dir / f"{name}.npz")


class RandomHashingEncoder:
    """A small random encoder: each word hashed into 2^16 rows of a fixed random (2^16, 384) matrix,
    summed and normalised. Deterministic, so the rerun's vectors can be checked against the first."""

    max_length = 512

    def __init__(self, dim: int = DIM):
        import numpy as np

        self.np = np
        self.dim = dim
        self.table = np.random.default_rng(0).standard_normal((1 << 16, dim)).astype(np.float32)

    def encode(self, texts, instruction=None, *, show_progress=None):
        np = self.np
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            ids = [hash(w) & 0xFFFF for w in t.split()]
            out[i] = self.table[ids].sum(0)
        out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-9
        return out


def documents(n: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(1)
    vocab = [f"w{i}" for i in range(50_000)]
    lengths = rng.integers(8, 41, size=n)
    words = rng.integers(0, len(vocab), size=int(lengths.sum()))
    out, at = [], 0
    for i, k in enumerate(lengths):
        out.append(f"doc{i} " + " ".join(vocab[j] for j in words[at:at + k]))
        at += k
    return out


def peak_rss_mb() -> int:
    """This process's peak RSS (VmHWM): unlike ``ru_maxrss`` it does not carry the launcher's peak
    across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_pass(store: str, n: int, cache_dir: str, model_dir: str) -> dict:
    """One pass in this process: encode the corpus chunk by chunk through the evaluation's wrapper."""
    import numpy as np

    from embedforge.evaluate import wrapper
    from embedforge.evaluate.spec import ModelSpec

    if store == "old":
        wrapper.EmbeddingCache = OldNpzCache  # the baseline store, on the same path
    texts = documents(n)
    model = wrapper.EmbedforgeModel(ModelSpec(backbone=model_dir, max_length=64), "bench/store",
                                    encoder=RandomHashingEncoder(), cache_dir=cache_dir, batch_size=5_000)
    t0 = time.time()
    checksum = 0.0
    for start in range(0, n, CHUNK):
        vecs = model.encode_texts(texts[start:start + CHUNK], None)
        checksum += float(np.abs(vecs[:, :8]).sum())
        del vecs  # mteb keeps only each chunk's top-k scores
    return {"store": store, "seconds": round(time.time() - t0, 1), "encoded": model.stats.encoded,
            "cache_hits": model.stats.cache_hits, "peak_rss_mb": peak_rss_mb(),
            "checksum": round(checksum, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--pass", dest="one_pass", nargs=4, metavar=("STORE", "N", "CACHE", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_pass:
        store, n, cache_dir, model_dir = args.one_pass
        print("RESULT " + json.dumps(run_pass(store, int(n), cache_dir, model_dir)), flush=True)
        return

    from embedforge.testing import tiny_model

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        model_dir = Path(tmp) / "model"  # a model folder for the cache's fingerprint only
        tiny_model("llama").save_pretrained(model_dir)
        for store in ("old", "new"):
            cache_dir = Path(tmp) / f"cache-{store}"
            for label in ("first", "rerun"):
                proc = subprocess.run([sys.executable, __file__, "--pass", store, str(args.n), str(cache_dir), str(model_dir)],
                                      capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
                if proc.returncode != 0:
                    sys.exit(proc.stderr[-3000:])
                res = json.loads(proc.stdout.split("RESULT ", 1)[1])
                res["pass"] = label
                size = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
                res["store_mb"] = round(size / 2**20)
                results.append(res)
                print(f"{store:>3} {label:>5}: {res['seconds']:7.1f} s  encoded {res['encoded']:>9,}  "
                      f"peak RSS {res['peak_rss_mb']:>6,} MB  on disk {res['store_mb']:>6,} MB", flush=True)
    by = {(r["store"], r["pass"]): r for r in results}
    for label in ("first", "rerun"):
        old, new = by[("old", label)], by[("new", label)]
        assert abs(old["checksum"] - new["checksum"]) < 1e-3 * max(1.0, abs(old["checksum"])), (old, new)
        print(f"{label}: peak RSS new/old = {new['peak_rss_mb'] / old['peak_rss_mb']:.2f}, "
              f"time new/old = {new['seconds'] / max(old['seconds'], 1e-9):.2f}")
    print(json.dumps({"n": args.n, "dim": DIM, "chunk": CHUNK, "results": results}))


if __name__ == "__main__":
    main()
