"""The real tiny backbone: GGUF import is faithful, cached, and encodes text."""

import json

import numpy as np
import pytest
import torch

from embedforge.models import IMPORT_MARKER, ensure_imported, packaged_gguf, resolve_backbone


@pytest.fixture(scope="module")
def gguf_path():
    return packaged_gguf("smollm2-135m")


def test_imported_directory_gives_the_gguf_models_logits(gguf_path, smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = tok(["The capital of France is", "Embeddings map text to vectors"], return_tensors="pt", padding=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).eval()
    imported = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    with torch.no_grad():
        a = gguf_model(**ids).logits
        b = imported(**ids).logits
    assert a.shape == b.shape and a.shape[-1] == 49152
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the GGUF's own tokenizer matches the saved one
    gguf_tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    assert gguf_tok("hello world, 123").input_ids == tok("hello world, 123").input_ids


def test_import_is_cached_and_marked(smollm2_dir, gguf_path):
    marker = json.loads((resolve_backbone("smollm2-135m") and (__import__("pathlib").Path(smollm2_dir) / IMPORT_MARKER)).read_text())
    assert marker["source"] == str(gguf_path.resolve())
    assert str(ensure_imported(gguf_path)) == smollm2_dir  # second call: same dir, no re-import


def test_cli_import_model_writes_a_loadable_directory(tmp_path, gguf_path):
    from transformers import AutoConfig

    from embedforge.cli import main

    out = tmp_path / "smol"
    assert main(["import-model", str(gguf_path), str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    cfg = AutoConfig.from_pretrained(out)
    assert cfg.model_type == "llama" and not hasattr(cfg, "quantization_config")


def test_smollm2_encoder_ends_in_eos_ranks_paraphrases_closer_and_ignores_padding_side(smollm2_dir):
    from embedforge.config import load_config
    from embedforge.encoder import Encoder
    from embedforge.prompts import tokenize_with_eos

    enc = Encoder.from_config(load_config(None, ["model.max_length=32"]).model)
    # EOS guard on the real tokenizer: every sequence, truncated or not, ends in <|im_end|>
    ids = tokenize_with_eos(enc.tokenizer, ["short", "long " * 100], 32)
    assert [s[-1] for s in ids] == [enc.tokenizer.eos_token_id] * 2 and len(ids[1]) == 32
    v = enc.encode(["A man is playing a guitar.", "A man plays the guitar.", "The stock market crashed."])
    assert v.shape == (3, 576)
    assert v[0] @ v[1] > v[0] @ v[2]
    left = Encoder(enc.model, enc.tokenizer, max_length=32, padding_side="left").encode(["a", "a longer sentence here"])
    right = enc.encode(["a", "a longer sentence here"])
    np.testing.assert_allclose(left, right, atol=1e-4)


def test_encoder_on_a_bert_style_model_matches_sentence_transformers(minilm_dir):
    """A tokenizer without EOS ([SEP]-terminated) still encodes; mean pooling equals ST's own output."""
    from sentence_transformers import SentenceTransformer

    from embedforge.encoder import Encoder
    from embedforge.models import load_backbone

    model, tok = load_backbone(minilm_dir)
    enc = Encoder(model, tok, pooling="mean", max_length=256)
    texts = ["A man is playing a guitar.", "", "The stock market crashed today, again."]
    ours = enc.encode(texts)
    theirs = SentenceTransformer(minilm_dir, device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
