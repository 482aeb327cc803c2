"""Host memory of loading the training backbone on 2 ZeRO-3 workers: whole in fp32 vs partitioned.

A random Llama of ~0.5 B parameters (hidden 1536, 18 layers, MLP 4096, vocabulary 32000) is saved in
fp32 (``--checkpoint-dtype``) to a temporary directory. Then 2 CPU worker processes (a gloo group,
initialised like the training loop: ``deepspeed.init_distributed(dist_backend="gloo")``) load it and
build the DeepSpeed engine (``init_engine``) two ways, each in its own fresh pair of processes (peak RSS only grows).
The launcher imports no torch and builds nothing itself (a subprocess writes the model): Linux
carries a parent's peak RSS into a child's ``ru_maxrss`` across fork + exec, so a large launcher
would raise every worker's figure.

* old: ``load_lora_model(path, lora, "float32", ...)``: the whole backbone in fp32 on every worker,
  partitioned and cast by ``deepspeed.initialize``;
* new: the loop's ``backbone_loading(train)`` + ``load_lora_model``: built partitioned under
  ``deepspeed.zero.Init`` in the training precision.

Per worker: RSS before loading, peak RSS (``ru_maxrss``, which counts the checkpoint's file pages a
worker maps as well as its own allocations), the peak of anonymous RSS (sampled every 20 ms: the
allocations alone), and the seconds of load + engine set-up. Prints one line per way, the ratio of
the worst workers' peaks new/old, and a JSON summary.

    python benchmarks/bench_load.py
    python benchmarks/bench_load.py --layers 2 --hidden 256 --intermediate 512 --vocab 1000   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PLATFORM = Path(__file__).resolve().parents[1] / "platform"
sys.path.insert(0, str(PLATFORM))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from embedforge.ray_utils import free_port  # noqa: E402  (no torch: the launcher stays small)

WORLD_SIZE = 2
GB = 1e9
WAYS = {"old": "whole fp32 backbone, then deepspeed.initialize",
        "new": "partitioned while loading, in the training precision"}


def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``RssAnon``) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakSampler:
    """The largest value of a ``/proc/self/status`` field seen every ``interval`` seconds."""

    def __init__(self, field: str, interval: float = 0.02):
        self.field, self.interval, self.peak = field, interval, status_bytes(field)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, status_bytes(self.field))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_bytes(self.field))


def train_config(precision: str):
    from embedforge.config.train import TrainConfig

    # The trainer's defaults (LoRA r=16 on all linear layers, ZeRO-3, checkpointing) on 2 workers.
    return TrainConfig(global_batch_size=WORLD_SIZE, num_workers=WORLD_SIZE, warmup_steps=0,
                       deepspeed={"stage": 3, "precision": precision})


def run_worker(rank: int, port: int, way: str, backbone_dir: str, precision: str, out_dir: str) -> None:
    """One worker of one way, in a fresh process: load, build the engine, write its figures."""
    import deepspeed
    import torch
    import torch.distributed as dist

    from embedforge.train.ds_config import backbone_loading
    from embedforge.train.engine import init_engine
    from embedforge.train.model import load_lora_model

    torch.set_num_threads(1)  # 2 workers on 2 cores, like train.cpus_per_worker=1
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    deepspeed.init_distributed(dist_backend="gloo")
    train = train_config(precision)
    rss_before = status_bytes("VmRSS")
    t0 = time.perf_counter()
    with PeakSampler("RssAnon") as anon:
        if way == "old":  # what the training loop did before partitioned loading
            model = load_lora_model(backbone_dir, train.lora, "float32", train.gradient_checkpointing)
        else:
            dtype, zero3_config = backbone_loading(train)
            model = load_lora_model(backbone_dir, train.lora, dtype, train.gradient_checkpointing, zero3_config)
        engine, _ = init_engine(model, train, total_steps=1)
        dist.barrier()
    seconds = time.perf_counter() - t0
    params = list(engine.module.parameters())
    result = {
        "rank": rank, "rss_before": rss_before, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "vm_hwm": status_bytes("VmHWM"), "peak_anon": anon.peak, "seconds": seconds, "param_dtype": str(params[0].dtype),
        "partitioned": all(hasattr(p, "ds_id") for p in params),
        "local_param_bytes": sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params),
    }
    (Path(out_dir) / f"{way}-rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def save_random_llama(out_dir: Path, hidden: int, layers: int, intermediate: int, vocab: int,
                      dtype: str = "float32") -> int:
    """A random Llama (no LM head, like the trainer's backbone) saved in ``dtype``; returns its parameter count."""
    import torch
    from transformers import AutoModel, LlamaConfig

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 128,
                         num_key_value_heads=max(1, hidden // 512), max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModel.from_config(config, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    model.to(getattr(torch, dtype)).save_pretrained(out_dir)
    return n_params


def run_self(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def measure(way: str, backbone_dir: Path, precision: str, work: Path) -> list[dict]:
    """Both workers of one way, each a fresh process started by this small launcher."""
    port = str(free_port())
    workers = [subprocess.Popen(run_self("--worker", way, "--rank", str(rank), "--port", port, "--backbone",
                                         str(backbone_dir), "--precision", precision, "--out", str(work)))
               for rank in range(WORLD_SIZE)]
    codes = [w.wait() for w in workers]
    if any(codes):
        raise RuntimeError(f"{way}: workers exited with {codes}")
    return [json.loads((work / f"{way}-rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


def per_worker(results: list[dict], key: str, scale: float = GB, fmt: str = "{:.2f}") -> str:
    return " / ".join(fmt.format(r[key] / scale) for r in results)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--layers", type=int, default=18)
    p.add_argument("--intermediate", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="train.deepspeed.precision")
    p.add_argument("--checkpoint-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="how the backbone is stored (published 7B checkpoints are mostly bfloat16)")
    # Internal: the launcher runs itself with these to build the model or be one worker.
    p.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=list(WAYS), help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--backbone", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build:
        n_params = save_random_llama(args.build, args.hidden, args.layers, args.intermediate, args.vocab,
                                     args.checkpoint_dtype)
        (args.build / "n_params.json").write_text(json.dumps(n_params))
        return 0
    if args.worker:
        run_worker(args.rank, args.port, args.worker, args.backbone, args.precision, args.out)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_load.") as tmp:
        tmp = Path(tmp)
        backbone_dir = tmp / "backbone"
        subprocess.run(run_self("--build", str(backbone_dir), "--hidden", str(args.hidden), "--layers",
                                str(args.layers), "--intermediate", str(args.intermediate), "--vocab",
                                str(args.vocab), "--checkpoint-dtype", args.checkpoint_dtype), check=True)
        n_params = json.loads((backbone_dir / "n_params.json").read_text())
        checkpoint_bytes = sum(f.stat().st_size for f in backbone_dir.glob("*.safetensors"))
        print(f"backbone: random Llama, {n_params / 1e9:.3f} B parameters, {checkpoint_bytes / GB:.2f} GB "
              f"{args.checkpoint_dtype} checkpoint; {WORLD_SIZE} workers (gloo), ZeRO-3, "
              f"precision {args.precision}", flush=True)
        results = {way: measure(way, backbone_dir, args.precision, tmp) for way in WAYS}

    for way, description in WAYS.items():
        rs = results[way]
        print(f"{way} ({description}): peak RSS per worker {per_worker(rs, 'peak_rss')} GB "
              f"(before loading {per_worker(rs, 'rss_before')} GB; peak anonymous {per_worker(rs, 'peak_anon')} GB; "
              f"weights held after set-up {per_worker(rs, 'local_param_bytes')} GB {rs[0]['param_dtype']}); "
              f"load + engine {per_worker(rs, 'seconds', 1, '{:.1f}')} s", flush=True)
    worst = {way: max(r["peak_rss"] for r in rs) for way, rs in results.items()}
    worst_anon = {way: max(r["peak_anon"] for r in rs) for way, rs in results.items()}
    ratio, ratio_anon = worst["new"] / worst["old"], worst_anon["new"] / worst_anon["old"]
    per_rank = " / ".join(f"{new['peak_rss'] / old['peak_rss']:.2f}"
                          for new, old in zip(results["new"], results["old"], strict=True))
    print(f"ratio new/old, worst worker's peak RSS: {ratio:.2f} (per rank {per_rank}); "
          f"peak anonymous RSS: {ratio_anon:.2f}")
    launcher_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary = {"bench_load": {
        "launcher_peak_rss": launcher_peak, "params": n_params, "checkpoint_bytes": checkpoint_bytes,
        "world_size": WORLD_SIZE, "precision": args.precision, "checkpoint_dtype": args.checkpoint_dtype,
        "shape": {"hidden": args.hidden, "layers": args.layers, "intermediate": args.intermediate,
                  "vocab": args.vocab},
        **results, "ratio_peak_rss_new_old": ratio, "ratio_peak_anon_new_old": ratio_anon,
    }}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
