"""Leaderboard-ready output: the trained model's mteb ``ModelMeta`` and its results in the layout of
MTEB's results repository (``results/<org__name>/<revision>/<Task>.json`` + ``model_meta.json``),
written by mteb's own ``ResultCache``, so a user can copy the folder into a pull request.
"""

from __future__ import annotations

import datetime
import json
import math
import struct
from pathlib import Path


def _parameters_in_header(fh) -> int:
    """Tensor elements listed in a safetensors header (8-byte little-endian length, then JSON)."""
    size = struct.unpack("<Q", fh.read(8))[0]
    header = json.loads(fh.read(size))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def count_parameters(model_dir: str) -> int | None:
    """Parameters in a model directory's safetensors files, from their headers (no weights read) —
    a local folder or one in object storage; None when it holds none (a hub id, a .bin checkpoint)."""
    from embedforge import storage

    if storage.is_uri(model_dir):
        names = [n for n, _ in storage.listing(model_dir) if n.endswith(".safetensors")] if storage.exists(model_dir) else []
        fs, inner = storage.filesystem(model_dir)
        paths = [(fs, f"{inner.rstrip('/')}/{n}") for n in sorted(names)]
    else:
        paths = [(None, str(p)) for p in (sorted(Path(model_dir).rglob("*.safetensors")) if Path(model_dir).is_dir() else [])]
    if not paths:
        return None
    total = 0
    for fs, path in paths:
        with (fs.open_input_file(path) if fs is not None else open(path, "rb")) as fh:
            total += _parameters_in_header(fh)
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
