"""generate/labeled.py: public labeled data sets (BEIR, STS pairs, pair classification, classification) as rows."""

from __future__ import annotations

import pytest

from embedforge.formats import FormatError, write_beir


def test_labeled_loaders_read_each_kind_sample_by_seed_and_write_the_shared_schema(shared_data, tmp_path):
    import pyarrow.parquet as pq

    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import load_labeled, write_labeled
    from embedforge.schema import arrow_schema

    beir = load_labeled(LabeledDatasetConfig(kind="beir", name="scifact", path=str(shared_data / "scifact"),
                                             task="Given a scientific claim, retrieve documents that support or refute the claim"))
    assert 800 <= len(beir) <= 919 and beir[0].group == "retrieval" and len(beir[0].positive) > 100
    sts = load_labeled(LabeledDatasetConfig(kind="sts_pairs", name="stsb", path=str(shared_data / "stsb" / "train.tsv"),
                                            task="Retrieve semantically similar text.", score_threshold=4.0))
    assert 1000 < len(sts) < 3000 and sts[0].query == "A plane is taking off."
    msrp = load_labeled(LabeledDatasetConfig(kind="pair_classification", name="msrp", task="Retrieve paraphrases.",
                                             path=str(shared_data / "msrp" / "train.tsv")))
    assert 2000 < len(msrp) < 3000
    cls_cfg = LabeledDatasetConfig(kind="classification", name="banking77", path=str(shared_data / "banking77" / "train.tsv"),
                                   task="Given an online banking query, find the corresponding intents", sample_ratio=0.1)
    cls = load_labeled(cls_cfg, seed=3)
    assert 800 < len(cls) < 1200
    assert all(r.negatives and r.negatives[0] != r.positive for r in cls)
    assert [r.id for r in load_labeled(cls_cfg, seed=3)] == [r.id for r in cls]  # seeded sample
    counts = write_labeled([cls_cfg], tmp_path, seed=3)
    table = pq.read_table(tmp_path / "labeled-banking77.parquet")
    assert table.schema == arrow_schema() and table.num_rows == counts["banking77"] == len(cls)
    with pytest.raises(FormatError, match=r"missing file: .*stsb/qrels/train.tsv"):
        load_labeled(LabeledDatasetConfig(kind="beir", name="x", path=str(shared_data / "stsb"), task="t"))


def test_labeled_beir_keeps_positive_judgements_as_title_and_text(tmp_path):
    from embedforge.config.generate import LabeledDatasetConfig
    from embedforge.generate.labeled import load_labeled

    corpus = {"d1": {"title": "Cats", "text": "Cats purr."}, "d2": {"title": "", "text": "Stocks fell."}}
    folder = write_beir(tmp_path / "b", corpus, {"q1": "what sound do cats make"}, {"q1": {"d1": 1, "d2": 0}},
                        split="train")
    rows = load_labeled(LabeledDatasetConfig(kind="beir", name="b", path=str(folder), task="t"))
    assert [(r.query, r.positive) for r in rows] == [("what sound do cats make", "Cats Cats purr.")]
    # One strictness for every reader of BEIR: a judgement naming an unknown document is an error.
    write_beir(folder, corpus, {"q1": "q"}, {"q1": {"d9": 1}}, split="train")
    with pytest.raises(FormatError, match=r"qrels/train.tsv:2: corpus-id 'd9' is not in corpus.jsonl"):
        load_labeled(LabeledDatasetConfig(kind="beir", name="b", path=str(folder), task="t"))
