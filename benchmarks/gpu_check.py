"""One-GPU check: LoRA + DeepSpeed ZeRO-3 + gradient caching and encoding at the Mistral-7B shape.

A randomly initialised model with e5-mistral-7b's backbone shape (hidden 4096, 32 layers, 32 heads,
8 KV heads, MLP 14336, vocabulary 32000) is built directly on the device in bf16: no weights are
downloaded, and none are needed for throughput and memory. The script then

1. encodes pre-tokenised sequences of mixed lengths with the platform ``Encoder`` (bf16, eval mode)
   and reports tokens/s;
2. wraps the same backbone in LoRA (r=16, all linear layers) with ``embedforge.train.model.add_lora``,
   builds the DeepSpeed ZeRO-3 engine with ``embedforge.train.engine.init_engine`` (the trainer's own
   config generator), checks that the gradient-cached loss of one global batch equals its loss
   computed in one uncached forward, and runs a few optimizer steps with ``train_step`` (the Ray
   Train worker's step: cross-worker InfoNCE, gradient caching, ``engine.step()``), reporting
   tokens/s, peak GPU memory, MFU and HFU.

If the full shape does not fit the card, the model is rebuilt with fewer layers (same width) and the
report says so. Single process: torch.distributed is initialised here with world size 1 (NCCL on a
GPU, gloo on the CPU). ``--shape tiny`` runs the same code on the CPU in fp32 in seconds (the tests).

    python benchmarks/gpu_check.py --out runs/gpu_check                          # H100/H200, < 10 min
    python benchmarks/gpu_check.py --shape tiny --device cpu --no-smoke --out /tmp/gpu_check  # CPU, seconds

Before the measurement it runs ``gpu_smoke.py``'s paths once on the device (the platform's own
Ray Train + export, Ray Data encoding and Serve code; PASS/FAIL per path, in the report as "smoke").

FLOPs (``FLOPS_FORMULA``; N = backbone parameters without the token embedding, N_lora = LoRA
parameters, L layers, d hidden size, s a sequence's real tokens, 2 FLOPs per multiply-add, attention
counted without causal halving):

    forward(s)      = 2 (N + N_lora) s + 4 L d s^2
    model FLOPs     = sum over sequences of (4 N + 6 N_lora) s + 12 L d s^2
                      (forward + input gradients through the frozen base, LoRA weight gradients;
                       no base weight gradients, recomputation not counted)
    hardware FLOPs  = model FLOPs + sum forward(s) x (1 gradient-cache no-graph pass
                                                      + 1 activation-checkpoint recompute)
    MFU = model FLOPs / step time / peak;  HFU = hardware FLOPs / step time / peak
    encoding: forward(s) with N_lora = 0, over real tokens

Peak bf16 dense tensor-core throughput assumed per card: H100 SXM 989 TFLOP/s, H200 989, H100 NVL 835,
H100 PCIe 756, A100 312 (``--peak-tflops`` overrides; unknown cards and the CPU get no MFU).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # gpu_smoke

import torch  # noqa: E402

FLOPS_FORMULA = (
    "forward(s) = 2(N+N_lora)s + 4Lds^2; model FLOPs/step = sum_s (4N+6N_lora)s + 12Lds^2 "
    "(frozen base: no base weight gradients; recomputation not counted); hardware FLOPs = model FLOPs "
    "+ forward x (gradient-cache no-graph pass + checkpoint recompute); N = backbone parameters without "
    "the token embedding, L layers, d hidden, s real tokens of a sequence; attention without causal halving"
)

# Backbone shapes (MistralConfig keys). mistral-7b is e5-mistral-7b-instruct's backbone.
SHAPES = {
    "mistral-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       intermediate_size=14336, vocab_size=32000),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1000),
}
# Layer counts tried in order when the card runs out of memory (same width, fewer layers).
FALLBACK_LAYERS = {"mistral-7b": (32, 24, 16, 8), "tiny": (2,)}

# Workload per shape. mistral-7b: 64 queries x (query 64 + positive 512 + 1 hard negative 512 tokens)
# = 192 sequences, 69,632 tokens per optimizer step, in chunks of 32 sequences (6 chunks).
DEFAULTS = {
    "mistral-7b": dict(batch=64, chunk=32, query_length=64, doc_length=512, steps=3, encode_texts=2048,
                       encode_batch_tokens=65536, dtype="bf16"),
    "tiny": dict(batch=8, chunk=4, query_length=8, doc_length=24, steps=2, encode_texts=64,
                 encode_batch_tokens=512, dtype="fp32"),
}

# Dense bf16 tensor-core peak per card, TFLOP/s (NVIDIA data sheets, without sparsity).
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0))

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PAD_ID = 0
TEMPERATURE = 0.02


def peak_tflops(device_name: str) -> float | None:
    """The assumed bf16 dense peak for a CUDA device name, or None for unknown cards."""
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def forward_flops(n_params: int, layers: int, hidden: int, lengths: list[int], n_lora: int = 0) -> float:
    """FLOPs of one forward over sequences of the given real lengths (see FLOPS_FORMULA)."""
    return float(sum(2 * (n_params + n_lora) * s + 4 * layers * hidden * s * s for s in lengths))


def train_step_flops(n_params: int, n_lora: int, layers: int, hidden: int, lengths: list[int],
                     gradient_cache: bool, checkpointing: bool) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one optimizer step over the given sequences."""
    model = float(sum((4 * n_params + 6 * n_lora) * s + 12 * layers * hidden * s * s for s in lengths))
    extra_forwards = int(gradient_cache) + int(checkpointing)
    return model, model + extra_forwards * forward_flops(n_params, layers, hidden, lengths, n_lora)


def synthetic_batch(queries: int, query_length: int, doc_length: int, vocab: int, seed: int) -> dict:
    """One global batch in the trainer's record layout: a positive and one hard negative per query."""
    g = torch.Generator().manual_seed(seed)

    def seqs(n, length):
        return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(n)]

    return {"query_ids": seqs(queries, query_length), "positive_ids": seqs(queries, doc_length),
            "negative_ids": seqs(queries, doc_length), "num_negatives": 1}


def encode_lengths(n: int, low: int, high: int, seed: int = 1) -> list[int]:
    """Mixed sequence lengths, uniform in [low, high] (a corpus of short and long passages)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (n,), generator=g).tolist()


def init_single_process(device: torch.device) -> str:
    """torch.distributed (and DeepSpeed's view of it) with world size 1 on a free local port."""
    import deepspeed
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        from embedforge.ray_utils import free_port

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                          LOCAL_RANK="0")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend)
    return backend


def build_backbone(shape: str, layers: int, dtype: torch.dtype, device: torch.device):
    """A random-init decoder without LM head, built in place on the device (no weights travel)."""
    from transformers import AutoModel, MistralConfig

    config = MistralConfig(**{**SHAPES[shape], "num_hidden_layers": layers}, sliding_window=None,
                           max_position_embeddings=4096, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model


def count_parameters(model) -> tuple[int, int]:
    """(parameters without the token embedding, token embedding parameters)."""
    embedding = model.get_input_embeddings().weight.numel()
    return sum(p.numel() for p in model.parameters()) - embedding, embedding


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_encoding(model, device: torch.device, lengths: list[int], vocab: int, batch_tokens: int,
                     n_params: int, peak: float | None) -> dict:
    """Tokens/s of ``Encoder.encode_ids`` (pre-tokenised: tokenisation is not part of the figure)."""
    from embedforge.encoder import Encoder, token_budget_batches
    from embedforge.testing import tiny_tokenizer

    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(3, vocab, (s,), generator=g).tolist() for s in lengths]
    # The tokenizer only supplies the pad id here: the ids above are generated directly.
    encoder = Encoder(model.eval(), tiny_tokenizer(), pooling="last_token", normalize=True,
                      max_length=max(lengths) + 1, batch_tokens=batch_tokens, device=device)
    encoder.encode_ids(seqs[: max(1, len(seqs) // 16)], show_progress=False)  # warm-up (kernels, allocator)
    synchronize(device)
    t0 = time.perf_counter()
    vectors = encoder.encode_ids(seqs, show_progress=False)
    synchronize(device)
    seconds = time.perf_counter() - t0
    tokens = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in token_budget_batches(lengths, batch_tokens))
    flops = forward_flops(n_params, model.config.num_hidden_layers, model.config.hidden_size, lengths)
    return {
        "texts": len(seqs), "tokens": tokens, "padded_tokens": padded, "batch_tokens": batch_tokens,
        "seconds": seconds, "tokens_per_s": tokens / seconds, "texts_per_s": len(seqs) / seconds,
        "tflops_per_s": flops / seconds / 1e12, "mfu": flops / seconds / (peak * 1e12) if peak else None,
        "embedding_dim": int(vectors.shape[1]), "finite": bool(torch.from_numpy(vectors).isfinite().all()),
    }


class _NoBackward:
    """Hooks for a loss-only pass of ``contrastive_backward`` (no gradient, no accumulation)."""

    def before_chunk(self, is_last: bool) -> None:
        pass

    def backward(self, tensor: torch.Tensor) -> None:
        pass


def measure_training(model, device: torch.device, args, n_params: int, peak: float | None) -> dict:
    """LoRA + ZeRO-3 + gradient caching through the trainer's engine and step; loss check first."""
    from embedforge.config.train import LoraSettings, TrainConfig
    from embedforge.train.batching import count_tokens
    from embedforge.train.engine import init_engine, train_step
    from embedforge.train.gradcache import contrastive_backward
    from embedforge.train.model import add_lora

    # Dropout 0: the uncached reference pass must see the same network as the cached step.
    lora = LoraSettings(r=16, alpha=32, dropout=0.0, target_modules="all-linear")
    train = TrainConfig(
        temperature=TEMPERATURE, lora=lora, global_batch_size=args.batch, chunk_size=args.chunk,
        negatives_per_query=1, lr=1e-4, warmup_steps=0, num_workers=1, use_gpu=device.type == "cuda",
        gradient_checkpointing=True,
        deepspeed={"stage": 3, "offload": "none", "precision": args.dtype, "gradient_clipping": 1.0},
    )
    peft_model = add_lora(model, lora, gradient_checkpointing=train.gradient_checkpointing)
    n_lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    engine, _ = init_engine(peft_model, train, total_steps=args.steps + 1)
    engine.train()
    cfg = model.config
    vocab, layers, hidden = cfg.vocab_size, cfg.num_hidden_layers, cfg.hidden_size
    batches = [synthetic_batch(args.batch, args.query_length, args.doc_length, vocab, seed)
               for seed in range(args.steps + 1)]
    # The same global batch, same weights: one uncached forward vs. the gradient-cached step's loss.
    with torch.no_grad():
        plain_loss = float(contrastive_backward(engine, batches[0], PAD_ID, TEMPERATURE, None, _NoBackward(),
                                                device=device))
    if device.type == "cuda":  # the peak of the training steps alone (weights and optimizer state included)
        torch.cuda.reset_peak_memory_stats(device)
    steps = []
    for i, local in enumerate(batches):
        synchronize(device)
        t0 = time.perf_counter()
        metrics = train_step(engine, local, PAD_ID, train)
        synchronize(device)
        steps.append({"step": i + 1, "seconds": time.perf_counter() - t0, **metrics})
    cached_loss = steps[0]["loss"]
    timed = steps[1:]  # the first step also warms up kernels and ZeRO-3's parameter trace
    seconds = statistics.median(s["seconds"] for s in timed)
    lengths = [len(s) for key in ("query_ids", "positive_ids", "negative_ids") for s in batches[0][key]]
    tokens = count_tokens(batches[0])
    model_flops, hardware_flops = train_step_flops(n_params, n_lora, layers, hidden, lengths,
                                                   gradient_cache=args.chunk is not None,
                                                   checkpointing=train.gradient_checkpointing)
    memory = {}
    if device.type == "cuda":
        memory = {"peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                  "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}
    tolerance = loss_tolerance(args.dtype, plain_loss)
    result = {
        "global_batch_queries": args.batch, "sequences_per_step": len(lengths), "chunk_sequences": args.chunk,
        "chunks_per_step": -(-len(lengths) // args.chunk) if args.chunk else 1,
        "query_tokens": args.query_length, "document_tokens": args.doc_length, "tokens_per_step": tokens,
        "lora_r": lora.r, "lora_parameters": n_lora, "zero_stage": 3, "precision": args.dtype,
        "gradient_checkpointing": train.gradient_checkpointing,
        "step_seconds_median": seconds, "tokens_per_s": tokens / seconds, "queries_per_s": args.batch / seconds,
        "model_tflops_per_step": model_flops / 1e12, "hardware_tflops_per_step": hardware_flops / 1e12,
        "mfu": model_flops / seconds / (peak * 1e12) if peak else None,
        "hfu": hardware_flops / seconds / (peak * 1e12) if peak else None,
        "loss_uncached": plain_loss, "loss_gradcache": cached_loss,
        "loss_abs_diff": abs(plain_loss - cached_loss), "loss_tolerance": tolerance,
        "loss_check_passed": bool(abs(plain_loss - cached_loss) <= tolerance
                                  and torch.isfinite(torch.tensor(cached_loss))),
        "steps": steps, **memory,
    }
    if hasattr(engine, "destroy"):
        engine.destroy()
    return result


def loss_tolerance(dtype: str, loss: float) -> float:
    """How far the chunked and the one-pass loss may differ: rounding only.

    fp32 agrees to ~1e-6. In bf16 the two passes take different kernels (padded full batch vs
    chunks), and 32 layers of bf16 rounding move cosines by ~1e-3, i.e. logits by ~0.05 at τ = 0.02;
    a caching bug (misaligned chunks or gradients) moves the loss by whole units.
    """
    return 1e-4 if dtype == "fp32" else 0.02 * max(1.0, abs(loss))


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_that_fits(ladder, attempt, deadline: float, on_oom) -> tuple[dict | None, list[dict]]:
    """Run ``attempt(layers)`` down the ladder until one fits; only out-of-memory moves on.

    Returns the first result (None if every size ran out of memory) and a record of every try. No
    smaller size starts after ``deadline`` (``time.perf_counter()`` seconds).
    """
    attempts: list[dict] = []
    for layers in ladder:
        if attempts and time.perf_counter() > deadline:
            attempts.append({"layers": layers, "skipped": "time budget spent"})
            continue
        try:
            result = attempt(layers)
            attempts.append({"layers": layers, "ok": True})
            return result, attempts
        except Exception as error:  # noqa: BLE001 - re-raised unless it is out-of-memory
            if not is_oom(error):
                raise
            attempts.append({"layers": layers, "out_of_memory": str(error).splitlines()[0][:300]})
        on_oom()  # outside the handler: the traceback no longer holds the model
    return None, attempts


def run_attempt(args, layers: int, device: torch.device, peak: float | None) -> dict:
    model = build_backbone(args.shape, layers, DTYPES[args.dtype], device)
    n_params, n_embedding = count_parameters(model)
    cfg = model.config
    result = {"layers": layers, "parameters_without_embedding": n_params, "embedding_parameters": n_embedding}
    lengths = encode_lengths(args.encode_texts, max(2, args.doc_length // 16), args.doc_length)
    result["encode"] = measure_encoding(model, device, lengths, cfg.vocab_size, args.encode_batch_tokens,
                                        n_params, peak)
    result["train"] = measure_training(model, device, args, n_params, peak)
    return result


def markdown(report: dict) -> str:
    def fmt(x, digits=1):
        return "n/a" if x is None else f"{x:,.{digits}f}"

    tr, enc = report.get("train", {}), report.get("encode", {})
    shape = report["model"]
    lines = [
        f"GPU check on **{report['device_name']}** ({report['device']}), {report['timestamp']}",
        "",
        "| what | value |",
        "|---|---|",
        f"| model | random-init {report['shape']} shape, {shape['layers']} layers (full shape "
        f"{shape['layers_full_shape']}), "
        f"hidden {shape['hidden_size']}, {fmt(shape['parameters_without_embedding'] / 1e6, 1)} M params "
        f"w/o embedding, {report['dtype']} |",
    ]
    if report.get("fallback"):
        lines.append(f"| fallback | {report['fallback']} |")
    if tr:
        lines += [
            f"| train: LoRA r={tr['lora_r']} all-linear ({tr['lora_parameters']:,} params), ZeRO-{tr['zero_stage']}, "
            f"gradient caching | {tr['global_batch_queries']} queries x (q {tr['query_tokens']} + pos "
            f"{tr['document_tokens']} + neg {tr['document_tokens']} tokens) = {tr['tokens_per_step']:,} tokens/step, "
            f"{tr['chunks_per_step']} chunks of {tr['chunk_sequences']} sequences |",
            f"| train: step time (median of {len(tr['steps']) - 1}) | {fmt(tr['step_seconds_median'], 2)} s |",
            f"| train: tokens/s | {fmt(tr['tokens_per_s'])} |",
            f"| train: peak GPU memory (allocated / reserved) | "
            f"{fmt(tr.get('peak_gpu_memory_gib'), 1)} / {fmt(tr.get('peak_gpu_reserved_gib'), 1)} GiB |",
            f"| train: MFU / HFU (peak {fmt(report['peak_tflops'], 0)} TFLOP/s) | "
            f"{fmt(None if tr['mfu'] is None else 100 * tr['mfu'])} % / "
            f"{fmt(None if tr['hfu'] is None else 100 * tr['hfu'])} % |",
            f"| train: loss gradient-cached vs uncached (same batch) | {tr['loss_gradcache']:.4f} vs "
            f"{tr['loss_uncached']:.4f} (abs. difference {tr['loss_abs_diff']:.1e}, "
            f"{'passed' if tr['loss_check_passed'] else 'FAILED'}) |",
        ]
    if enc:
        lines += [
            f"| encode: Encoder, eval, {enc['texts']} texts, {enc['tokens']:,} tokens, "
            f"batch budget {enc['batch_tokens']:,} | {fmt(enc['tokens_per_s'])} tokens/s, "
            f"{fmt(enc['texts_per_s'])} texts/s, MFU {fmt(None if enc['mfu'] is None else 100 * enc['mfu'])} % |",
        ]
    lines += [f"| wall time | {fmt(report['wall_seconds'])} s |", "", f"FLOPs: {FLOPS_FORMULA}."]
    if report.get("error"):
        lines.insert(0, f"**FAILED: {report['error']}**\n")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="mistral-7b")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--out", required=True, help="directory for gpu_check.json and gpu_check.md")
    p.add_argument("--layers", type=int, help="start with this many layers (default: the shape's)")
    p.add_argument("--batch", type=int, help="queries per global batch (each with a positive and a negative)")
    p.add_argument("--chunk", type=int, help="sequences per gradient-cache chunk")
    p.add_argument("--query-length", type=int)
    p.add_argument("--doc-length", type=int)
    p.add_argument("--steps", type=int, help="timed optimizer steps (one warm-up step runs before them)")
    p.add_argument("--encode-texts", type=int)
    p.add_argument("--encode-batch-tokens", type=int)
    p.add_argument("--dtype", choices=sorted(DTYPES))
    p.add_argument("--peak-tflops", type=float, help="override the assumed per-card bf16 dense peak")
    p.add_argument("--threads", type=int, help="CPU threads (default: 1 on the CPU, where more threads "
                   "contend on a shared machine; torch's default with a GPU)")
    p.add_argument("--max-minutes", type=float, default=9.0, help="no smaller fallback starts after this")
    p.add_argument("--smoke", action=argparse.BooleanOptionalAction, default=True,
                   help="first run the platform's own paths once on the device (benchmarks/gpu_smoke.py: "
                        "Ray Train + export, Ray Data encoding, a Serve replica); --no-smoke skips them")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.shape].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.chunk >= 3 * args.batch:
        p.error(f"--chunk ({args.chunk}) must be smaller than the {3 * args.batch} sequences of a global batch "
                "(--batch x 3), or gradient caching is not exercised")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch sees no CUDA device (use --device cpu --shape tiny)")
    if args.device == "cpu" and args.shape != "tiny":
        raise SystemExit(f"gpu_check: --shape {args.shape} needs a GPU; on the CPU use --shape tiny")
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or (peak_tflops(device_name) if device.type == "cuda" else None)
    smoke = run_smoke_first(args.device) if args.smoke else []
    backend = init_single_process(device)

    ladder = [n for n in FALLBACK_LAYERS[args.shape] if n <= (args.layers or SHAPES[args.shape]["num_hidden_layers"])]
    if args.layers and args.layers not in ladder:
        ladder.insert(0, args.layers)
    report = {
        "timestamp": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "shape": args.shape,
        "device": args.device, "device_name": device_name, "backend": backend, "world_size": 1,
        "torch": torch.__version__, "dtype": args.dtype, "peak_tflops": peak, "flops_formula": FLOPS_FORMULA,
    }
    result, report["attempts"] = largest_that_fits(
        ladder, lambda layers: run_attempt(args, layers, device, peak),
        deadline=start + 60 * args.max_minutes, on_oom=lambda: free_memory(device))
    requested = ladder[0]
    if result is None:
        report["error"] = "out of memory at every model size tried"
        result = {"layers": ladder[-1], "parameters_without_embedding": 0}
    elif result["layers"] != requested:
        report["fallback"] = (f"out of memory with {requested} layers; measured with {result['layers']} layers "
                              f"(same width): figures are NOT the full {args.shape} shape")
    report["model"] = {**{k: SHAPES[args.shape][k] for k in ("hidden_size", "num_attention_heads",
                                                             "num_key_value_heads", "intermediate_size",
                                                             "vocab_size")},
                       "layers": result["layers"], "layers_requested": requested,
                       "layers_full_shape": SHAPES[args.shape]["num_hidden_layers"],
                       "parameters_without_embedding": result["parameters_without_embedding"],
                       "embedding_parameters": result.get("embedding_parameters", 0)}
    report["smoke"] = smoke
    report["encode"] = result.get("encode", {})
    report["train"] = result.get("train", {})
    report["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report["wall_seconds"] = time.perf_counter() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "gpu_check.md").write_text(table)
    print(json.dumps(report, indent=2))
    print(table)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    ok = (not report.get("error") and report["train"].get("loss_check_passed", False)
          and all(r["pass"] for r in smoke))
    return 0 if ok else 1


def run_smoke_first(device: str) -> list[dict]:
    """gpu_smoke.py's paths on a Ray instance of their own, shut down before the throughput run so
    the device's memory is free again."""
    import ray

    from gpu_smoke import run_smoke

    records = run_smoke(device)
    ray.shutdown()
    free_memory(torch.device("cuda", 0) if device == "cuda" else torch.device("cpu"))
    return records


if __name__ == "__main__":
    sys.exit(main())
