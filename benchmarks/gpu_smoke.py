"""The platform's GPU code paths, each run once for real on one device (``gpu_check.py`` runs this first).

Every path is the product's own entry point, not a stand-in, on a small random Llama (built here,
saved with a tokenizer, so nothing is downloaded):

  train     ``train_model``: Ray Train's ``TorchTrainer`` with one worker (NCCL on a GPU, gloo on the
            CPU) runs ``train_loop_per_worker`` for 3 steps — LoRA, DeepSpeed ZeRO-3 (partitioned
            loading), gradient caching — then the export task merges and writes the
            sentence-transformers directory;
  encode    the evaluation stage's encoding pool (``encode_on_pool``) on one actor holding the
            device, over the trained model;
  serve     ``serve_endpoint``: a Ray Serve replica on the device answers one request from the
            official ``openai`` client.

Each prints ``PASS``/``FAIL  <path>  <seconds>  <detail>``; ``run_smoke`` returns the records. On the
CPU (``--device cpu``) it is the rehearsal CI runs (tests/integration/test_gpu_smoke.py).

    python benchmarks/gpu_smoke.py --device cpu --out /tmp/gpu_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

PATHS = ("train", "encode", "serve")
TEXTS = ["A man is playing a guitar.", "A woman slices an onion.", "Stock markets fell sharply today.",
         "The cat sleeps on the sofa.", "Two dogs run across a field.", "Someone is cooking dinner.",
         "A plane takes off from the runway.", "Children play soccer in the park."]


def build_random_llama(out: Path) -> Path:
    """A 2-layer random Llama (hidden 64) with the character-level test tokenizer, saved as a Hugging Face directory."""
    from embedforge.testing import save_tiny_model

    return save_tiny_model(out, "llama", hidden_size=64, layers=2)


def write_pairs(path: Path, n: int = 24) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedforge.schema import TrainingRow, arrow_schema

    rows = [TrainingRow(id=f"s{i}", group="short_long", task="Given a question, retrieve a passage that answers it",
                        query=f"question {i} about {TEXTS[i % len(TEXTS)]}", positive=f"passage {i}: {TEXTS[i % len(TEXTS)]}",
                        negatives=[f"unrelated note {i} on {TEXTS[(i + 3) % len(TEXTS)]}"]).to_dict() for i in range(n)]
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow_schema()), path / "part-0.parquet")
    return path


def smoke_config(work: Path, backbone: Path, data: Path, gpu: bool):
    from embedforge.config import load_config

    device = "cuda" if gpu else "cpu"
    return load_config(None, [
        f"run.output_dir={work / 'runs'}", "run.name=gpu-smoke",
        f"model.backbone={backbone}", "model.max_length=64", f"model.device={device}", "model.pooling=last_token",
        f"train.data=[{{path: {data}}}]", "train.num_workers=1", f"train.use_gpu={str(gpu).lower()}",
        "train.cpus_per_worker=1", "train.global_batch_size=8", "train.chunk_size=4", "train.max_steps=3",
        "train.epochs=1", "train.checkpoint_every=3", "train.warmup_steps=0", "train.lr=1e-3",
        "train.query_max_length=32", "train.passage_max_length=32",
        f"train.deepspeed.precision={'bf16' if gpu else 'fp32'}",
        "serve.model_name=smoke", "serve.app_name=gpu-smoke", "serve.allow_anonymous=true", "serve.api_key_env=",
        "serve.torch_threads=1", "serve.ray_actor_options.num_cpus=0.5",
        f"serve.ray_actor_options.num_gpus={1 if gpu else 0}",
    ])


def _record(name: str, fn) -> dict:
    t0 = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as exc:  # a failing path is reported and the next one still runs
        ok, detail = False, f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    seconds = time.perf_counter() - t0
    print(f"{'PASS' if ok else 'FAIL'}  {name:7s} {seconds:6.1f} s  {detail}", flush=True)
    return {"path": name, "pass": ok, "seconds": round(seconds, 1), "detail": detail}


def run_smoke(device: str) -> list[dict]:
    """Every path, in a scratch directory, on a local Ray instance of its own unless RAY_ADDRESS names one."""
    os.environ.setdefault("RAY_ADDRESS", "local")
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as work:
        return _run_paths(device, Path(work))


def _run_paths(device: str, work: Path) -> list[dict]:
    import numpy as np

    from embedforge.ray_utils import free_port, init_ray, serve_ingress_env

    gpu = device == "cuda"
    backbone = build_random_llama(work / "random-llama")
    cfg = smoke_config(work, backbone, write_pairs(work / "pairs"), gpu)
    # One local instance for all three paths, started as `embedforge serve` starts it (HAProxy ingress).
    # If it cannot start (a package or the embedforge-haproxy command missing on a fresh GPU node), every
    # path fails with the reason and gpu_check.py still runs its measurement.
    try:
        init_ray(local_env=lambda: serve_ingress_env(cfg.serve))
    except Exception as exc:
        traceback.print_exc()
        reason = f"skipped: Ray did not start: {type(exc).__name__}: {exc}"
        return [_record(name, lambda: _raise(reason)) for name in PATHS]
    state: dict = {}

    def train():
        from embedforge.train.runner import train_model

        result = train_model(cfg)
        steps = [json.loads(x) for x in Path(result.metrics).read_text().splitlines()]
        assert [m["step"] for m in steps] == [1, 2, 3], steps
        assert all(np.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in steps), steps
        assert (Path(result.sentence_transformers) / "modules.json").is_file()
        state["st"] = result.sentence_transformers
        return f"3 steps, loss {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}; exported by {result.exported_by}"

    def encode():
        from embedforge.embedders import EmbedderSpec
        from embedforge.encode_pool import encode_on_pool

        spec = EmbedderSpec(backbone=state["st"], max_length=64, device=device)
        vecs = encode_on_pool(spec, TEXTS * 4, "Retrieve semantically similar text", num_actors=1, cpus_per_actor=1,
                              gpus_per_actor=1.0 if gpu else 0.0, batch_size=16, stage="smoke")
        assert vecs.shape[0] == len(TEXTS) * 4 and np.isfinite(vecs).all()
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
        return f"{vecs.shape[0]} texts on 1 actor ({'GPU' if gpu else 'CPU'}), dim {vecs.shape[1]}"

    def serve():
        from openai import OpenAI
        from ray import serve as ray_serve

        from embedforge.config import with_values
        from embedforge.serving.runner import serve_endpoint

        port = free_port()
        info = serve_endpoint(with_values(cfg, **{"model.backbone": state["st"], "serve.port": port}), block=False)
        try:
            client = OpenAI(base_url=info.url, api_key="unused", max_retries=0, timeout=120)
            out = client.embeddings.create(model="smoke", input=TEXTS[:3])
            vecs = np.array([d.embedding for d in out.data])
            assert vecs.shape[0] == 3 and np.isfinite(vecs).all()
            return f"replica answered 3 inputs through the openai client, dim {vecs.shape[1]}"
        finally:
            ray_serve.shutdown()

    records = [_record("train", train)]
    for name, fn in (("encode", encode), ("serve", serve)):
        if "st" not in state:  # both need the trained model
            fn = lambda: _raise("skipped: training did not export a model")  # noqa: E731
        records.append(_record(name, fn))
    return records


def _raise(reason: str):
    raise RuntimeError(reason)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--out", required=True, help="directory for gpu_smoke.json")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = run_smoke(args.device)
    (out / "gpu_smoke.json").write_text(json.dumps({"device": args.device, "paths": records}, indent=2))
    return 0 if all(r["pass"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
