"""Helpers for tests and benchmarks only; no product module imports this package.

Here: tiny random models and a tokenizer built in memory (or saved as a Hugging Face directory), for
tests that need no real weights.
Beside it: ``fault_proxy`` (an HTTP proxy injecting 429 / 500 / hangs in front of a teacher) and
``loadgen`` (a loopback-only load generator for ``/v1/embeddings``, used by the benchmarks).
"""

from __future__ import annotations

import string

TINY_VOCAB = ["<pad>", "<s>", "</s>", "<unk>"] + list(string.ascii_lowercase + string.digits + " .,:?!\n'-")


def tiny_tokenizer():
    """A character-level fast tokenizer with BOS/EOS/PAD, no files and no hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_model(arch: str = "llama", hidden_size: int = 32, layers: int = 2, seed: int = 0, vocab_size: int | None = None):
    """A randomly initialised decoder (no LM head) of the given architecture, in float32."""
    import torch
    from transformers import AutoModel, LlamaConfig, MistralConfig

    vocab_size = vocab_size or len(TINY_VOCAB)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if arch == "llama":
        cfg = LlamaConfig(**common)
    elif arch == "mistral":
        cfg = MistralConfig(sliding_window=None, **common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; allowed: llama, mistral")
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg)
    return model.eval()


def save_tiny_model(out, arch: str = "llama", hidden_size: int = 32, layers: int = 2, seed: int = 0):
    """``tiny_model`` and ``tiny_tokenizer`` saved as a Hugging Face directory (a backbone path jobs and
    Ray workers load like any other); returns the directory."""
    from pathlib import Path

    out = Path(out)
    tiny_model(arch, hidden_size=hidden_size, layers=layers, seed=seed).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out
