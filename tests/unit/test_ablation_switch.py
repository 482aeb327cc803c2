"""``model.instructions`` (the paper's "w/o instruction" ablation) is honoured everywhere a query is
encoded: training batches, hard-negative mining, evaluation, and the exported sentence-transformers
prompts. Off means queries are encoded exactly like documents."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from embedforge.config import ConfigError, load_config
from embedforge.prompts import format_query, tokenize_with_eos

BATCH = {"id": ["a", "b"], "group": ["sts", "sts"], "task": ["find it", "match it"], "query": ["hi there", "yo"],
         "positive": ["a doc", "b doc"], "negatives": [["neg one"], []]}


def test_switch_defaults_on_and_rejects_non_booleans():
    assert load_config(None).model.instructions is True
    assert load_config(None, ["model.instructions=false"]).model.instructions is False
    with pytest.raises(ConfigError, match="model.instructions"):
        load_config(None, ["model.instructions=sometimes"])


def test_training_queries_without_instructions_tokenize_like_documents(tiny_tokenizer):
    from embedforge.train.batching import tokenize_rows

    on = tokenize_rows(dict(BATCH), tiny_tokenizer, 64, 64)
    off = tokenize_rows(dict(BATCH), tiny_tokenizer, 64, 64, instructions=False)
    assert on["query_ids"][0] == tokenize_with_eos(tiny_tokenizer, [format_query("hi there", "find it")], 64)[0]
    # Off: a query's ids are those the same text gets as a document (positive).
    as_documents = tokenize_rows(dict(BATCH, positive=BATCH["query"]), tiny_tokenizer, 64, 64)["positive_ids"]
    assert off["query_ids"] == as_documents
    assert off["positive_ids"] == on["positive_ids"] and off["negative_ids"] == on["negative_ids"]


def test_dataset_step_passes_the_switch(tmp_path, tiny_tokenizer):
    from embedforge.train.dataset import tokenize_frame

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    df = pd.DataFrame(BATCH)
    on = tokenize_frame(df, str(tmp_path / "tok"), 64, 64)
    off = tokenize_frame(df, str(tmp_path / "tok"), 64, 64, instructions=False)
    assert list(off["query_ids"][1]) == tokenize_with_eos(tiny_tokenizer, ["yo"], 64)[0]
    assert list(on["query_ids"][1]) == tokenize_with_eos(tiny_tokenizer, [format_query("yo", "match it")], 64)[0]


@pytest.mark.parametrize("instructions", [True, False])
def test_mining_embeds_queries_as_training_will(monkeypatch, tiny_tokenizer, instructions):
    """The Ray Data step is replaced by the same embedding done in-process (no cluster in the unit
    tier); what it is asked to embed is the real mining code's choice."""
    import embedforge.train.mining as mining
    from embedforge.encoder import Encoder
    from embedforge.testing import tiny_model

    encoder = Encoder(tiny_model("llama"), tiny_tokenizer, max_length=32)
    asked = []

    def embed_in_process(texts, instructions, model, replicas, resource_check):
        asked.append(list(instructions))
        return encoder.encode([format_query(t, i or None) for t, i in zip(texts, instructions, strict=True)])

    monkeypatch.setattr(mining, "_embed", embed_in_process)
    rows = pd.DataFrame({"query": ["cats purr", "stocks fell", "rain today"], "task": ["find it"] * 3,
                         "positive": ["a cat", "the market", "weather"], "negatives": [[], [], []]})
    mined = mining.mine_hard_negatives(rows, "unused", top_k=3, num_negatives=1, instructions=instructions)
    corpus_tasks, query_tasks = asked
    assert set(corpus_tasks) == {""}
    assert query_tasks == (["find it"] * 3 if instructions else [""] * 3)
    assert all(len(n) == 1 and n[0] != p for n, p in zip(mined["negatives"], mined["positive"], strict=True))


def test_evaluation_uses_instructions_only_when_the_model_has_them(tmp_path):
    from embedforge.evaluate.runner import models_to_run
    from embedforge.testing import save_tiny_model

    d = save_tiny_model(tmp_path / "tiny")
    baselines = f"evaluate.baselines={{b: {{model: {d}, instructions: true}}}}"
    on = load_config(None, [f"model.backbone={d}", baselines])
    off = load_config(None, [f"model.backbone={d}", "model.instructions=false", baselines])
    assert [u for _, _, u in models_to_run(on)] == [True, True]
    # The switch follows the evaluated model; a baseline is another model and keeps its own setting.
    assert [u for _, _, u in models_to_run(off)] == [False, True]
    # One switch per meaning: evaluation has no second on/off key (the old one is an unknown key now).
    with pytest.raises(ConfigError, match="unknown key 'evaluate.use_instructions'"):
        load_config(None, ["evaluate.use_instructions=false"])


def test_wrapper_without_instructions_encodes_sts_plainly(tmp_path):
    import mteb
    from mteb._create_dataloaders import _create_dataloader_from_texts

    from embedforge.evaluate.spec import ModelSpec
    from embedforge.evaluate.wrapper import EmbedforgeModel
    from embedforge.testing import save_tiny_model

    d = save_tiny_model(tmp_path / "tiny")
    spec = ModelSpec(backbone=str(d), max_length=32)
    texts = ["a man plays a flute", "a plane takes off"]
    meta = mteb.get_task("STSBenchmark").metadata
    vecs = {}
    for use in (True, False):
        model = EmbedforgeModel(spec, "test/tiny", instructions=use, cache_dir="")
        vecs[use] = model.encode(_create_dataloader_from_texts(texts), task_metadata=meta, hf_split="test",
                                 hf_subset="default", prompt_type="query")
    plain = model.encoder.encode(texts)
    np.testing.assert_allclose(vecs[False], plain, atol=1e-5)
    assert not np.allclose(vecs[True], plain, atol=1e-3)


def test_export_has_no_prompts_for_a_model_trained_without_instructions(tmp_path, tiny_tokenizer):
    from sentence_transformers import SentenceTransformer

    from embedforge.testing import tiny_model
    from embedforge.train.model import save_sentence_transformers
    from embedforge.train.runner import export_instructions

    assert export_instructions(load_config(None).model)  # on: the paper's table
    assert export_instructions(load_config(None, ["model.instructions=false"]).model) == {}
    tiny_model("llama").save_pretrained(tmp_path / "merged")
    tiny_tokenizer.save_pretrained(tmp_path / "merged")
    st_dir = save_sentence_transformers(tmp_path / "merged", tmp_path / "st", max_length=16, instructions={})
    st = SentenceTransformer(str(st_dir), device="cpu")
    assert not any(p.startswith("Instruct:") for p in st.prompts.values())
    assert json.loads((st_dir / "embedforge.json").read_text())["instructions"] is False
