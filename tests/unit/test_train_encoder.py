"""Encoder students (issue #15): a BERT-family backbone (all-MiniLM-L6-v2) trained and exported by the
same trainer as a decoder: its kind decided by the one loader, its tokenizer's own [CLS] … [SEP] (no EOS
appended), its own pooling, LoRA or full fine-tuning, and a sentence-transformers export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embedforge.config.train import LoraSettings, TrainConfig
from embedforge.embedders import EmbedderSpec, load_embedder, resolve
from embedforge.models import DECODER, ENCODER, backbone_kind, kind_of_config, load_tokenizer
from embedforge.prompts import tokenize_with_eos
from embedforge.testing import tiny_model

TEXTS = ["A man is playing a guitar.", "", "The stock market crashed today, again.", "word " * 400]


def tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer BERT with random weights (MiniLM's vocabulary size, so its tokenizer fits), saved."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    return path


# -- the kind, in one place --------------------------------------------------------------------------

def test_kind_of_a_config_built_bert_llama_and_a_bert_built_as_a_decoder():
    from transformers import BertConfig, LlamaConfig, MistralConfig, T5Config

    assert kind_of_config(BertConfig()) == ENCODER  # no weights: the config alone decides
    assert kind_of_config(BertConfig(is_decoder=True)) == DECODER
    assert kind_of_config(LlamaConfig()) == DECODER and kind_of_config(MistralConfig()) == DECODER
    with pytest.raises(ValueError, match="encoder-decoder"):
        kind_of_config(T5Config())


def test_kind_of_saved_directories_and_of_the_installed_minilm(tmp_path, minilm_dir):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64).save_pretrained(tmp_path / "bert")
    assert backbone_kind(str(tmp_path / "bert")) == ENCODER
    tiny_model("llama").save_pretrained(tmp_path / "llama")
    assert backbone_kind(str(tmp_path / "llama")) == DECODER
    assert backbone_kind(minilm_dir) == ENCODER
    used = resolve(EmbedderSpec(backbone="all-minilm-l6-v2", pooling="last_token", normalize=False))
    # The sentence-transformers folder's own settings: mean pooling, Normalize, max_seq_length 256 (+1).
    assert (used.kind, used.pooling, used.normalize, used.max_length) == (ENCODER, "mean", True, 257)
    assert used.sentence_transformers and not used.append_eos
    assert resolve(EmbedderSpec(backbone=str(tmp_path / "llama"))).append_eos


# -- tokenisation and pooling ------------------------------------------------------------------------

def test_an_encoder_gets_no_eos_appended(tiny_tokenizer, minilm_dir):
    # The character tokenizer adds BOS only: a decoder gets EOS (2) appended, an encoder nothing.
    dec = tokenize_with_eos(tiny_tokenizer, ["abc", "a" * 50], 8)
    enc = tokenize_with_eos(tiny_tokenizer, ["abc", "a" * 50], 8, append_eos=False)
    assert dec == [[1, 4, 5, 6, 2], [1] + [4] * 6 + [2]]
    assert enc == [[1, 4, 5, 6], [1] + [4] * 6]
    # MiniLM: the tokenizer's own [CLS] … [SEP], truncated to max_length - 1 tokens, [SEP] kept once.
    tok = load_tokenizer(minilm_dir)
    assert tok.eos_token_id is None
    ids = load_embedder(EmbedderSpec(backbone="all-minilm-l6-v2", max_length=16)).tokenize(TEXTS)
    assert ids == [tok(t, truncation=True, max_length=15)["input_ids"] for t in TEXTS]
    assert all(s[0] == tok.cls_token_id and s[-1] == tok.sep_token_id and s.count(tok.sep_token_id) == 1 for s in ids)
    assert ids[1] == [tok.cls_token_id, tok.sep_token_id] and len(ids[3]) == 15


def test_training_rows_of_an_encoder_are_tokenized_like_its_encoder(minilm_dir):
    from embedforge.train.batching import tokenize_rows

    tok = load_tokenizer(minilm_dir)
    batch = {"group": ["retrieval"], "query": ["what is a cat?"], "task": ["Given a question, retrieve a passage"], "positive": ["Cats purr."],
             "negatives": [["Dogs bark.", "word " * 100]]}
    out = tokenize_rows(batch, tok, 16, 32, instructions=False, append_eos=False)
    enc = load_embedder(EmbedderSpec(backbone="all-minilm-l6-v2", max_length=32))
    assert out["positive_ids"] == enc.tokenize(["Cats purr."])
    assert out["negative_ids"] == [enc.tokenize(["Dogs bark.", "word " * 100])]
    assert out["query_ids"] == [tok("what is a cat?", truncation=True, max_length=15)["input_ids"]]  # no instruction
    with_instruction = tokenize_rows(batch, tok, 64, 32, instructions=True, append_eos=False)["query_ids"][0]
    assert tok.decode(with_instruction, skip_special_tokens=True).startswith("instruct : given a question")
    assert with_instruction[-1] == tok.sep_token_id and with_instruction.count(tok.sep_token_id) == 1


def test_the_projects_encoder_gives_sentence_transformers_vectors_for_minilm(minilm_dir):
    from sentence_transformers import SentenceTransformer

    enc = load_embedder(EmbedderSpec(backbone="all-minilm-l6-v2"))
    assert enc.pooling == "mean" and enc.normalize and not enc.append_eos
    ref = SentenceTransformer(minilm_dir, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(enc.encode(TEXTS), ref, atol=1e-5)
    # Its own pooling matters: the [SEP] state (last-token pooling) is another vector.
    enc.pooling = "last_token"
    assert not np.allclose(enc.encode(TEXTS), ref, atol=1e-3)


# -- full fine-tuning and LoRA on an encoder --------------------------------------------------------

def _batch(seed=0, n=4, k=1):
    g = torch.Generator().manual_seed(seed)

    def seq():
        return [101] + torch.randint(1000, 5000, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g).tolist() + [102]

    return {"query_ids": [seq() for _ in range(n)], "positive_ids": [seq() for _ in range(n)],
            "negative_ids": [seq() for _ in range(n * k)], "num_negatives": k}


def _one_step(model, weight_decay=0.01):
    from embedforge.train.gradcache import contrastive_backward
    from embedforge.train.model import optimizer_param_groups

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(optimizer_param_groups(model, weight_decay), lr=1e-3)
    loss = contrastive_backward(model, _batch(), pad_id=0, temperature=0.05, chunk_size=3, pooling="mean")
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    return loss, changed, set(before)


def test_a_full_finetuning_step_changes_every_weight_but_the_unused_pooler(tmp_path):
    from embedforge.train.model import load_full_model

    model = load_full_model(str(tiny_bert(tmp_path / "bert")))
    assert model.training  # the backbone's dropout is on, as in sentence-transformers' training
    loss, changed, names = _one_step(model)
    assert torch.isfinite(loss)
    pooler = {n for n in names if n.startswith("pooler.")}
    assert pooler and not any(model.get_parameter(n).requires_grad for n in pooler)
    assert changed == names - pooler, sorted(names - pooler - changed)


def test_a_lora_step_on_an_encoder_changes_only_the_adapters(tmp_path):
    from embedforge.train.model import load_lora_model

    model = load_lora_model(str(tiny_bert(tmp_path / "bert")), LoraSettings(r=4, alpha=8, dropout=0.0))
    names = {n for n, _ in model.named_parameters()}
    lora = {n for n in names if "lora_" in n}
    # all-linear on BERT: query, key, value and the dense layers of every block, not the pooler.
    targeted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in lora}
    assert {"query", "key", "value", "dense"} <= targeted
    assert not any("pooler" in n for n in lora)
    loss, changed, _ = _one_step(model)
    assert torch.isfinite(loss)
    assert changed and changed <= lora
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


def test_weight_decay_spares_biases_and_norms():
    from embedforge.train.model import optimizer_param_groups, prepare_full_finetuning

    model = prepare_full_finetuning(tiny_model("llama"))
    decay, no_decay = optimizer_param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_gathered_full_weights_save_as_a_directory_that_loads_back(tmp_path, minilm_dir):
    from transformers import AutoModel

    from embedforge.train.model import gathered_full_state_dict, load_full_model, save_full_model

    model = load_full_model(minilm_dir)
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight.add_(1.0)  # "trained"
    state = gathered_full_state_dict(model)
    assert gathered_full_state_dict(model, keep=False) == {}
    out = save_full_model(model, state, minilm_dir, tmp_path / "merged")
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    loaded = AutoModel.from_pretrained(out)
    for name, p in loaded.state_dict().items():
        torch.testing.assert_close(p, model.state_dict()[name], rtol=0, atol=0, msg=name)
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()


# -- export ------------------------------------------------------------------------------------------

def test_an_encoder_exports_as_a_sentence_transformers_folder_that_loads_like_the_encoder(tmp_path, minilm_dir):
    """MiniLM exported as a trained student (no training: the vectors must be MiniLM's own): mean
    pooling + Normalize, its tokenizer as it is (no EOS post-processor), max_seq_length = max_length - 1,
    and both sentence-transformers and the project's loader encode it as they encode MiniLM."""
    import shutil

    from sentence_transformers import SentenceTransformer

    from embedforge.train.model import save_sentence_transformers

    merged = tmp_path / "merged"
    shutil.copytree(minilm_dir, merged, ignore=shutil.ignore_patterns("modules.json", "1_Pooling", "*.md"))
    out = save_sentence_transformers(merged, tmp_path / "st", max_length=257, instructions={}, pooling="mean",
                                     normalize=True, kind=ENCODER)
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 256 and not any(st.prompts.values())
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "embedforge.json").read_text())["kind"] == ENCODER
    reference = SentenceTransformer(minilm_dir, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(st.encode(TEXTS), reference, atol=1e-5)
    ours = load_embedder(EmbedderSpec(backbone=str(out)))
    assert (ours.pooling, ours.normalize, ours.max_length, ours.append_eos) == ("mean", True, 257, False)
    np.testing.assert_allclose(ours.encode(TEXTS), reference, atol=1e-5)
    # With instructions: the prompts' prefix is the Encoder's query template.
    out2 = save_sentence_transformers(merged, tmp_path / "st2", max_length=257, instructions={"SciFact": "Find it"},
                                      pooling="mean", kind=ENCODER)
    st2 = SentenceTransformer(str(out2), device="cpu")
    np.testing.assert_allclose(st2.encode(TEXTS[:3], prompt_name="SciFact-query"),
                               load_embedder(EmbedderSpec(backbone=str(out2))).encode(TEXTS[:3], instruction="Find it"),
                               atol=1e-5)


# -- config and early checks ------------------------------------------------------------------------

def test_finetune_setting_defaults_to_lora_and_refuses_others():
    from embedforge.config import ConfigError, load_config

    assert TrainConfig().finetune == "lora"
    assert load_config(None, ["train.finetune=full"]).train.finetune == "full"
    with pytest.raises(ConfigError, match=r"train\.finetune.*'lora' or 'full'"):
        load_config(None, ["train.finetune=partial"])


def test_an_encoder_student_is_checked_before_training(tmp_path):
    from embedforge.config import load_config
    from embedforge.train.runner import validate_before_training

    minilm = ["model.backbone=all-minilm-l6-v2", "model.max_length=257", f"run.output_dir={tmp_path}"]
    student = validate_before_training(load_config(None, [*minilm, "model.pooling=mean", "train.finetune=full"]))
    assert (student.kind, student.pooling, student.sentence_transformers, student.append_eos) == (ENCODER, "mean", True, False)
    with pytest.raises(ValueError, match=r"model\.pooling: 'last_token'.*pooled with 'mean'.*set model\.pooling: mean"):
        validate_before_training(load_config(None, minilm))
    with pytest.raises(ValueError, match=r"model\.max_length \(600\).*512 positions"):
        validate_before_training(load_config(None, [*minilm, "model.pooling=mean", "model.max_length=600"]))
    # LoRA targets are checked with LoRA only; BERT's names work, a decoder's do not.
    lora = [*minilm, "model.pooling=mean", "train.finetune=lora"]
    validate_before_training(load_config(None, [*lora, "train.lora.target_modules=[query,value]"]))
    with pytest.raises(ValueError, match=r"train\.lora\.target_modules.*q_proj"):
        validate_before_training(load_config(None, [*lora, "train.lora.target_modules=[q_proj]"]))
    validate_before_training(load_config(None, [*minilm, "model.pooling=mean", "train.finetune=full",
                                                "train.lora.target_modules=[q_proj]"]))
