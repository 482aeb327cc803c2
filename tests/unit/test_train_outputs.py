"""Training outputs: adapter, merged model, and a sentence-transformers dir that encodes like Encoder.
Also the checks that must fail before training (LoRA targets absent from the backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embedforge.config.train import LoraSettings
from embedforge.encoder import Encoder
from embedforge.models import load_backbone
from embedforge.testing import save_tiny_model, tiny_model, tiny_tokenizer
from embedforge.train.export import ExportPlan, export_trained_model
from embedforge.train.model import (
    add_lora,
    check_target_modules,
    gathered_lora_state_dict,
    meta_backbone,
    save_adapter,
    save_sentence_transformers,
)
from embedforge.train.runner import plot_loss_curve, read_step_metrics

TEXTS = ["a cat sits on the mat", "stock markets fell today", "x"]
INSTRUCTION = "find a related sentence"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    base = tiny_model("llama")
    base.save_pretrained(root / "base")
    tok = tiny_tokenizer()
    # An instruct backbone's chat template must not reach the sentence-transformers directory.
    tok.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
    tok.save_pretrained(root / "base")
    torch.manual_seed(0)
    peft = add_lora(tiny_model("llama"), LoraSettings(r=4, alpha=8, dropout=0.0), init_lora_weights=False)
    adapter = save_adapter(peft, gathered_lora_state_dict(peft), root / "adapter")
    # What the export task runs after training (in-process here: the same function, no Ray).
    done = export_trained_model(ExportPlan(backbone=str(root / "base"), out_dir=str(root), max_length=16,
                                           prompts={"Demo": INSTRUCTION}, pooling="last_token", normalize=True))
    return root, adapter, Path(done.merged), Path(done.sentence_transformers)


def test_the_training_workers_only_write_the_adapter(repo_root):
    """Merging loads the whole backbone: it belongs to the export task, never to a training worker."""
    loop = Path(repo_root, "platform", "embedforge", "train", "loop.py").read_text()
    assert "save_adapter" in loop
    assert "save_merged" not in loop and "save_sentence_transformers" not in loop


def test_adapter_is_non_empty_and_changes_the_model(exported):
    root, adapter, merged, _ = exported
    plain, tok = load_backbone(str(root / "base"))
    tuned, _ = load_backbone(str(root / "base"), adapter=str(adapter))
    a = Encoder(plain, tok, max_length=16).encode(TEXTS)
    b = Encoder(tuned, tok, max_length=16).encode(TEXTS)
    assert not np.allclose(a, b, atol=1e-4)
    m, _ = load_backbone(str(merged))
    np.testing.assert_allclose(Encoder(m, tok, max_length=16).encode(TEXTS), b, atol=1e-5)


def test_sentence_transformers_dir_encodes_like_the_encoder(exported):
    from sentence_transformers import SentenceTransformer

    root, adapter, _, st_dir = exported
    model, tok = load_backbone(str(root / "base"), adapter=str(adapter))
    enc = Encoder(model, tok, max_length=16)
    st = SentenceTransformer(str(st_dir), device="cpu")
    assert st.prompts["Demo"] == f"Instruct: {INSTRUCTION}\nQuery: "
    long_text = "a much longer sentence that will certainly be truncated by the limit"
    docs = TEXTS + [long_text]
    np.testing.assert_allclose(st.encode(docs), enc.encode(docs), atol=1e-5)
    np.testing.assert_allclose(st.encode(docs, prompt_name="Demo"), enc.encode(docs, instruction=INSTRUCTION), atol=1e-5)
    assert json.loads((st_dir / "embedforge.json").read_text())["max_length"] == 16


def test_the_exported_folder_is_read_back_with_its_own_max_length(exported):
    """sentence-transformers 6 keeps max_seq_length as the tokenizer's model_max_length: loading the
    folder (evaluation, serving) must truncate where sentence-transformers does (16 here), not at the
    model section's default 512."""
    from embedforge.embedders import EmbedderSpec, read_sentence_transformers_settings, resolve

    _, _, _, st_dir = exported
    assert read_sentence_transformers_settings(str(st_dir)).max_seq_length == 16
    assert resolve(EmbedderSpec(backbone=str(st_dir))).max_length == 17  # + the EOS the Encoder counts


def test_empty_adapter_is_refused(tmp_path):
    peft = add_lora(tiny_model("llama"), LoraSettings(r=2))
    state = {k: torch.zeros(0) for k in gathered_lora_state_dict(peft)}
    with pytest.raises(RuntimeError, match="empty LoRA adapter"):
        save_adapter(peft, state, tmp_path / "a")


def test_absent_lora_target_module_names_the_setting(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    model = meta_backbone(str(tmp_path))
    check_target_modules(model, ["q_proj", "down_proj"])
    with pytest.raises(ValueError, match=r"train\.lora\.target_modules.*query_key_value.*q_proj"):
        check_target_modules(model, ["q_proj", "query_key_value"])


def test_loss_curve_keeps_the_latest_value_of_a_rerun_step(tmp_path):
    lines = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "loss": 2.4}, {"step": 3, "loss": 2.0}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    plot_loss_curve(read_step_metrics(tmp_path / "m.jsonl"), tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_loss_by_group_reads_each_groups_own_curve(tmp_path):
    from embedforge.train.runner import loss_by_group

    # Same-task batches: the overall curve zigzags (0.9, 2.4, 0.1, 2.0, ...); each group's falls.
    lines = [{"step": 1, "loss": 0.9, "group": "sts_pairs"}, {"step": 2, "loss": 2.4, "group": "retrieval"},
             {"step": 3, "loss": 0.1, "group": "sts_pairs"}, {"step": 4, "loss": 2.0, "group": "retrieval"},
             {"step": 4, "loss": 1.9, "group": "retrieval"},  # step 4 re-run after a restart: the latest counts
             {"step": 5, "loss": 0.5, "group": "sts_pairs"}, {"step": 6, "loss": 1.0}]  # no group: an older line
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    steps = read_step_metrics(tmp_path / "m.jsonl")
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5, 6] and steps[3]["loss"] == 1.9
    assert loss_by_group(steps) == {
        "retrieval": {"steps": 2, "first": 2.4, "median": 2.15, "last": 1.9},
        "sts_pairs": {"steps": 3, "first": 0.9, "median": 0.5, "last": 0.5},
    }
    plot_loss_curve(steps, tmp_path / "loss.png")  # one series per group, and "all"
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_run_fails_before_ray_when_a_lora_target_is_absent(tmp_path):
    from embedforge.config import load_config
    from embedforge.train.runner import train_model

    save_tiny_model(tmp_path / "base")
    cfg = load_config(None, [f"model.backbone={tmp_path / 'base'}", f"run.output_dir={tmp_path}",
                             "train.lora.target_modules=[c_attn]"])
    with pytest.raises(ValueError, match=r"train\.lora\.target_modules.*c_attn"):
        train_model(cfg)


@pytest.mark.parametrize("pooling", ["mean", "weighted_mean"])
def test_sentence_transformers_dir_keeps_the_models_pooling(exported, tmp_path, pooling):
    """A mean- or weighted-mean-pooled model exports that pooling (not last-token), so the directory
    still encodes exactly like the platform's Encoder."""
    from sentence_transformers import SentenceTransformer

    root, adapter, merged, _ = exported
    st_dir = save_sentence_transformers(merged, tmp_path / "st", max_length=16, instructions={}, pooling=pooling)
    model, tok = load_backbone(str(root / "base"), adapter=str(adapter))
    enc = Encoder(model, tok, pooling=pooling, max_length=16)
    st = SentenceTransformer(str(st_dir), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS), enc.encode(TEXTS), atol=1e-5)
    last = Encoder(model, tok, pooling="last_token", max_length=16).encode(TEXTS)
    assert not np.allclose(st.encode(TEXTS), last, atol=1e-3)
