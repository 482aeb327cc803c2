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
