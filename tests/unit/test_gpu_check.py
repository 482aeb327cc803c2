"""benchmarks/gpu_check.py: the FLOPs arithmetic, the card table, the model shape, the OOM fallback.

The end-to-end CPU run of the script is tests/integration/test_gpu_check.py.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_check  # noqa: E402

MISTRAL_7B_TOTAL = 7_241_732_096  # Mistral-7B-v0.1's published parameter count (with the LM head)
MISTRAL_EMBEDDING = 32000 * 4096


@pytest.fixture(scope="module")
def meta_mistral():
    """The full shape on the meta device: the module tree and parameter shapes, no memory."""
    return gpu_check.build_backbone("mistral-7b", 32, torch.bfloat16, torch.device("meta"))


def test_mistral_shape_has_mistral_7b_parameter_count(meta_mistral):
    model = meta_mistral
    body, embedding = gpu_check.count_parameters(model)
    assert embedding == MISTRAL_EMBEDDING
    # The backbone has no LM head: the published total minus the (untied) embedding and head.
    assert body == MISTRAL_7B_TOTAL - 2 * MISTRAL_EMBEDDING
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (32, 8, 14336)


def test_lora_on_the_mistral_shape_has_the_papers_42m_parameters(meta_mistral):
    from embedforge.config.train import LoraSettings
    from embedforge.train.model import add_lora

    # A copy: add_lora wraps the module in place, and the fixture is shared.
    peft_model = add_lora(copy.deepcopy(meta_mistral), LoraSettings(r=16, alpha=32, dropout=0.0, target_modules="all-linear"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # r x (in + out) per linear layer: q, k, v, o, gate, up, down; x 32 layers ("42M", paper App. A).
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)
    assert trainable == 32 * per_layer == 41_943_040


def test_forward_flops_is_two_per_parameter_token_plus_attention():
    n, layers, d = 1000, 2, 8
    assert gpu_check.forward_flops(n, layers, d, [3]) == 2 * n * 3 + 4 * layers * d * 9
    assert gpu_check.forward_flops(n, layers, d, [3, 5]) == (gpu_check.forward_flops(n, layers, d, [3])
                                                             + gpu_check.forward_flops(n, layers, d, [5]))
    assert gpu_check.forward_flops(n, layers, d, [3], n_lora=10) == 2 * 1010 * 3 + 4 * layers * d * 9


def test_train_step_flops_add_a_forward_for_gradient_cache_and_one_for_checkpointing():
    n, lora, layers, d, lengths = 10_000, 100, 4, 16, [7, 11]
    fwd = gpu_check.forward_flops(n, layers, d, lengths, lora)
    model, hardware = gpu_check.train_step_flops(n, lora, layers, d, lengths, gradient_cache=False,
                                                 checkpointing=False)
    assert model == hardware == sum((4 * n + 6 * lora) * s + 12 * layers * d * s * s for s in lengths)
    _, with_both = gpu_check.train_step_flops(n, lora, layers, d, lengths, gradient_cache=True, checkpointing=True)
    assert with_both == pytest.approx(model + 2 * fwd)
    _, cache_only = gpu_check.train_step_flops(n, lora, layers, d, lengths, gradient_cache=True,
                                               checkpointing=False)
    assert cache_only == pytest.approx(model + fwd)


def test_mistral_7b_model_flops_per_token_at_512_are_4n_plus_attention():
    body = MISTRAL_7B_TOTAL - 2 * MISTRAL_EMBEDDING
    model, _ = gpu_check.train_step_flops(body, 0, 32, 4096, [512], gradient_cache=True, checkpointing=True)
    per_token = model / 512
    assert per_token == pytest.approx(4 * body + 12 * 32 * 4096 * 512)
    assert 28.7e9 < per_token < 28.8e9  # ~4 x 6.98 B + attention 0.8 GFLOP


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None),
])
def test_peak_tflops_is_the_dense_bf16_figure_by_card_name_or_none_when_unknown(name, peak):
    assert gpu_check.peak_tflops(name) == peak


def test_synthetic_batch_is_a_trainer_record():
    from embedforge.train.batching import count_tokens

    local = gpu_check.synthetic_batch(5, 4, 9, vocab=100, seed=0)
    assert [len(local[k]) for k in ("query_ids", "positive_ids", "negative_ids")] == [5, 5, 5]
    assert local["num_negatives"] == 1
    assert count_tokens(local) == 5 * (4 + 9 + 9)
    assert all(3 <= t < 100 for seq in local["positive_ids"] for t in seq)  # no pad/BOS/EOS ids
    assert gpu_check.synthetic_batch(5, 4, 9, 100, 0) == local
    assert gpu_check.synthetic_batch(5, 4, 9, 100, 1) != local


def _oom_above(limit, calls):
    def attempt(layers):
        calls.append(layers)
        if layers > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"layers": layers}
    return attempt


def test_fallback_takes_the_largest_size_that_fits():
    calls, freed = [], []
    result, attempts = gpu_check.largest_that_fits((32, 24, 16, 8), _oom_above(16, calls), deadline=float("inf"),
                                                   on_oom=lambda: freed.append(1))
    assert result == {"layers": 16}
    assert calls == [32, 24, 16]
    assert len(freed) == 2
    assert [a.get("out_of_memory", "").startswith("CUDA out of memory") for a in attempts] == [True, True, False]
    assert attempts[-1] == {"layers": 16, "ok": True}


def test_fallback_reports_when_nothing_fits_or_time_is_spent():
    result, attempts = gpu_check.largest_that_fits((32, 8), _oom_above(4, []), float("inf"), lambda: None)
    assert result is None and [a["layers"] for a in attempts] == [32, 8]
    result, attempts = gpu_check.largest_that_fits((32, 8), _oom_above(4, []), deadline=0.0, on_oom=lambda: None)
    assert result is None and attempts[1] == {"layers": 8, "skipped": "time budget spent"}


def test_fallback_does_not_swallow_other_errors():
    def attempt(layers):
        raise ValueError("a real bug")

    with pytest.raises(ValueError, match="a real bug"):
        gpu_check.largest_that_fits((32, 8), attempt, float("inf"), lambda: None)


def test_args_need_a_batch_larger_than_one_chunk():
    args = gpu_check.parse_args(["--shape", "tiny", "--out", "x"])
    assert (args.batch, args.chunk, args.dtype) == (8, 4, "fp32")
    assert 3 * args.batch > args.chunk
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--shape", "tiny", "--out", "x", "--batch", "2", "--chunk", "6"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_full_shape_is_refused_on_the_cpu(tmp_path):
    with pytest.raises(SystemExit, match="needs a GPU; on the CPU use --shape tiny"):
        gpu_check.main(["--out", str(tmp_path)])
