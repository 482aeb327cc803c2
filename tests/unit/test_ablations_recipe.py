"""benchmarks/ablations.py: every variant of one table shares one recipe, and the recipe is the config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ablations  # noqa: E402


def test_an_out_dir_refuses_variants_of_another_recipe(tmp_path):
    ablations.check_recipe(tmp_path, {"steps": 40, "lr": 2e-3, "batch": 32})
    ablations.check_recipe(tmp_path, {"steps": 40, "lr": 2e-3, "batch": 32})  # same recipe: resumes
    with pytest.raises(SystemExit, match=r"'lr': 0.0002"):
        ablations.check_recipe(tmp_path, {"steps": 40, "lr": 2e-4, "batch": 32})


def test_recipe_overrides_load_and_set_the_learning_rate_and_batch(tmp_path, repo_root):
    from embedforge.config import load_config

    cfg = load_config(repo_root / "configs" / "tiny.yaml", ablations.recipe(tmp_path, 40, lr=5e-4, batch=24))
    assert cfg.train.lr == 5e-4 and cfg.train.global_batch_size == 24 and cfg.train.max_steps == 40
    assert cfg.train.num_workers == 1 and cfg.evaluate.dtype == "bfloat16"


def test_every_adapt_ablation_variant_loads_on_adapt_yaml(repo_root):
    """benchmarks/adapt_ablations.py: each variant's overrides are valid keys and values of adapt.yaml."""
    import adapt_ablations
    from embedforge.config import load_config

    for overrides in adapt_ablations.VARIANTS.values():
        if overrides:
            load_config(repo_root / "configs" / "adapt.yaml", overrides)
    cfg = load_config(repo_root / "configs" / "adapt.yaml", adapt_ablations.VARIANTS["three_negatives"])
    assert cfg.train.negatives_per_query == 3 and cfg.train.chunk_size == 16


def test_human_pairs_reads_scifact_train_split_only(shared_data, tmp_path):
    """The human_pairs reference trains on SciFact's train claims only (two claim texts are in both of
    SciFact's splits under different ids: those are the only test texts it may hold)."""
    import pyarrow.parquet as pq

    import adapt_ablations
    from embedforge.formats import read_beir

    if adapt_ablations.SCIFACT != (shared_data / "scifact").resolve():
        pytest.skip("the script reads SciFact beside the repository, not at EMBEDFORGE_SHARED_DATA")
    (source,) = adapt_ablations.variant_data("human_pairs", tmp_path / "no-run", tmp_path / "out")
    rows = [r for f in Path(source["path"]).glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert len(rows) == 919 and {r["group"] for r in rows} == {"retrieval"}
    claims = {r["query"] for r in rows}
    train_texts, test_texts = ({q.strip() for q in read_beir(shared_data / "scifact", split)["queries"].values()}
                               for split in ("train", "test"))
    assert claims == train_texts
    assert claims & test_texts == train_texts & test_texts and len(train_texts & test_texts) == 2


def test_best_document_ranks_takes_the_best_chunk_of_the_document():
    """human_filtered ranks a claim's abstract where its best-matching chunk ranks among every chunk."""
    import numpy as np

    import adapt_ablations

    chunks = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8]])  # chunks 2 and 3: one document
    queries = np.array([[0.0, 1.0], [1.0, 0.0]])
    ranks = adapt_ablations.best_document_ranks(queries, chunks, [[2, 3], [1]])
    # query 0: chunk 1 (1.0) first, chunk 3 (0.8) second, chunk 2 (0.6) third -> the document ranks 2;
    # query 1: chunk 0 (1.0), 2 (0.8), 3 (0.6), then chunk 1 (0.0) -> 4.
    assert ranks.tolist() == [2, 4]
