"""Leaderboard-ready output: the trained model's mteb ``ModelMeta`` and its results in the layout of
MTEB's results repository (``results/<org__name>/<revision>/<Task>.json`` + ``model_meta.json``),
written by mteb's own ``ResultCache``, so a user can copy the folder into a pull request.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path


def count_parameters(model_dir: str) -> int | None:
    """Parameters in a model directory's safetensors files, from their headers (no weights loaded);
    None when it holds none (a hub id, a .bin checkpoint)."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).rglob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def training_datasets(labeled_names: list[str]) -> set[str]:
    """The labeled sets the run trained on that are MTEB tasks (what the leaderboard's zero-shot
    column needs); synthetic data is not an MTEB data set."""
    import mteb

    known = set()
    for name in labeled_names:
        try:
            known.add(mteb.get_task(name).metadata.name)
        except (KeyError, ValueError):
            continue
    return known


def leaderboard_meta(base, model_dir: str | None, labeled_names: list[str], instructions: bool):
    """``base`` (the evaluation wrapper's ModelMeta: name, revision = the vectors' fingerprint, dim,
    max tokens, cosine) completed with what the leaderboard shows."""
    return base.model_copy(update={
        "n_parameters": count_parameters(model_dir) if model_dir else None,
        "training_datasets": training_datasets(labeled_names),
        "use_instructions": instructions,
        "release_date": datetime.date.today().isoformat(),
        "open_weights": True,
        "public_training_code": None,
        "public_training_data": None,
    })


def save_result(results_root: Path, task_result, meta) -> Path:
    """One task's result under ``results_root`` in the results repository's layout (with
    ``model_meta.json`` beside it); returns the model's revision folder."""
    from mteb.cache import ResultCache

    cache = ResultCache(results_root)
    cache.save_to_cache(task_result, meta)
    return cache.cache_path / "results" / meta.model_name_as_path() / meta.revision


def load_saved_meta(revision_dir: Path):
    """The ModelMeta saved beside the results, validated by mteb."""
    from mteb.models.model_meta import ModelMeta

    return ModelMeta.model_validate(json.loads((Path(revision_dir) / "model_meta.json").read_text()))
