"""The training data as Ray Data steps: read Parquet sources, drop invalid rows, mix by ratio,
tokenize, and plan same-group global batches (one record per optimizer step).

Every worker streams the *whole* batch dataset (``DataConfig(datasets_to_split=[])``) in the same
order and takes its rank's slice of each global batch, so all workers agree on every step's batch,
chunk count and negatives.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from embedforge.config.train import TrainConfig
from embedforge.train.batching import (
    REQUIRED_COLUMNS,
    epoch_seed,
    mix_counts,
    pack_leftovers,
    plan_group_batches,
    row_problem,
    tokenize_rows,
)


class DataError(ValueError):
    """Training data that cannot be used; the message names the setting."""


@lru_cache(maxsize=2)
def _tokenizer(backbone: str):
    """The backbone's tokenizer on the node this Ray Data task runs on (it resolves the spec itself; a
    sentence-transformers directory's transformer folder)."""
    import os

    from embedforge.embedders import read_sentence_transformers_settings
    from embedforge.models import is_sentence_transformers_dir, load_tokenizer, resolve_backbone

    path = backbone if os.path.isdir(backbone) else resolve_backbone(backbone, weights=False)
    if is_sentence_transformers_dir(path):
        path = os.path.join(path, read_sentence_transformers_settings(path).transformer_subdir)
    return load_tokenizer(path)


def _rows(df: pd.DataFrame) -> dict:
    return {c: df[c].tolist() for c in df.columns}


def keep_valid(df: pd.DataFrame) -> pd.DataFrame:
    batch = _rows(df)
    n = len(df)
    ok = [row_problem({c: batch[c][i] for c in batch}) is None for i in range(n)]
    return df[ok].reset_index(drop=True)


def tokenize_frame(df: pd.DataFrame, backbone: str, query_max_length: int, passage_max_length: int,
                   instructions: bool = True, append_eos: bool = True, symmetric_groups: tuple[str, ...] = ()):
    batch = _rows(df)
    batch["negatives"] = [list(n) if n is not None else [] for n in batch["negatives"]]
    batch["task"] = [t if isinstance(t, str) else "" for t in batch["task"]]
    out = tokenize_rows(batch, _tokenizer(backbone), query_max_length, passage_max_length, instructions, append_eos,
                        symmetric_groups)
    keep = ("id", "group", "positive_key", "query_ids", "positive_ids", "negative_ids")
    return pd.DataFrame({k: out[k] for k in keep})


BATCH_COLUMNS = ("epoch", "order", "group", "ids", "query_ids", "positive_ids", "negative_ids", "num_negatives")


def plan_frame(df: pd.DataFrame, global_batch_size: int, negatives_per_query: int, seed: int, epochs: int = 1):
    """One group's full batches for each of ``epochs`` epochs (each dealt with its own seed,
    ``epoch_seed``), plus each epoch's leftover rows as one-row records (``leftover`` true) that
    ``pack_epoch_leftovers`` packs with the other groups' leftovers of the same epoch."""
    rows = df.to_dict("records")
    for r in rows:
        r["negative_ids"] = [list(n) for n in r["negative_ids"]]
    frames = []
    for epoch in range(epochs):
        records, leftover = plan_group_batches(rows, global_batch_size, negatives_per_query, epoch_seed(seed, epoch))
        out = pd.DataFrame({c: [r[c] for r in records] for c in BATCH_COLUMNS if c != "epoch"})
        out.insert(0, "epoch", epoch)
        out["leftover"], out["positive_key"] = False, ""
        frames.append(out)
        if leftover:
            frames.append(pd.DataFrame({
                "epoch": epoch, "order": "", "group": [r["group"] for r in leftover],
                "ids": [[r["id"]] for r in leftover],
                "query_ids": [[list(r["query_ids"])] for r in leftover],
                "positive_ids": [[list(r["positive_ids"])] for r in leftover],
                "negative_ids": [r["negative_ids"] for r in leftover],
                "num_negatives": [len(r["negative_ids"]) for r in leftover],
                "leftover": True, "positive_key": [r["positive_key"] for r in leftover],
            }))
    return pd.concat(frames, ignore_index=True)


def pack_epoch_leftovers(leftovers: pd.DataFrame, epochs: int, global_batch_size: int,
                         negatives_per_query: int, seed: int) -> tuple[list[dict], list[int], list[int]]:
    """(mixed batch records, mixed batches per epoch, rows dropped per epoch) from ``plan_frame``'s
    leftover records of every group: each epoch's leftovers are packed with that epoch's seed."""
    packed, batches, dropped = [], [], []
    if not len(leftovers):  # an empty dataset's frame may lack the columns
        return packed, [0] * epochs, [0] * epochs
    for epoch in range(epochs):
        part = leftovers[leftovers["epoch"] == epoch]
        records, n_dropped = pack_leftovers(_leftover_rows(part), global_batch_size, negatives_per_query,
                                            epoch_seed(seed, epoch))
        packed += [dict(r, epoch=epoch) for r in records]
        batches.append(len(records))
        dropped.append(n_dropped)
    return packed, batches, dropped


def _leftover_rows(df: pd.DataFrame) -> list[dict]:
    return [{"id": r["ids"][0], "group": r["group"], "positive_key": r["positive_key"],
             "query_ids": list(r["query_ids"][0]), "positive_ids": list(r["positive_ids"][0]),
             "negative_ids": [list(n) for n in r["negative_ids"]]} for r in df.to_dict("records")]


def source_paths(train: TrainConfig, run_storage: str) -> list[tuple[str, float, str]]:
    """(path, ratio, config key) per source; the run's generated data (in the run's storage) when none
    is configured."""
    from embedforge.storage import join

    if train.data:
        return [(s.path, s.ratio, f"train.data[{i}].path") for i, s in enumerate(train.data)]
    return [(join(run_storage, train.default_data_dir), 1.0, "train.default_data_dir")]


def read_valid_rows(path: str, key: str):
    """A materialized dataset of the valid rows of one source; errors name the setting."""
    import ray.data

    from embedforge import storage

    if storage.is_uri(path):
        # Object storage: Ray Data's read tasks fetch it themselves, on any node.
        if not any(name.endswith(".parquet") for name, _ in (storage.listing(path) if storage.exists(path) else [])):
            raise DataError(f"{key}: no Parquet data at {path!r}")
        ds = ray.data.read_parquet(path)
    else:
        # A local path: read tasks may run on any node, so on a multi-node cluster it must be a mount
        # every node shares (the pipeline hands training the run's storage, a URI when it is one).
        p = Path(path)
        if not p.exists() or (p.is_dir() and not any(p.rglob("*.parquet"))):
            raise DataError(f"{key}: no Parquet data at {path!r}")
        ds = ray.data.read_parquet(str(p))
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.schema().names]
    if missing:
        raise DataError(f"{key}: {path!r} lacks columns {missing} (the row schema is embedforge.schema.COLUMNS)")
    total = ds.count()
    valid = ds.select_columns(list(REQUIRED_COLUMNS)).map_batches(keep_valid, batch_format="pandas").materialize()
    return valid, total, valid.count()


def build_batches(train: TrainConfig, backbone: str, run_storage: str, seed: int,
                  mining_model=None, instructions: bool = True, resource_check: str = "fail",
                  *, lengths: tuple[int, int], append_eos: bool = True):
    """(materialized dataset of global-batch records sorted by step order, every epoch's in turn;
    summary dict, with per-epoch lists ``steps_per_epoch``, ``mixed_batches``, ``rows_dropped_per_epoch``).

    ``mining_model``: the model section hard negatives are mined with (``train.mining.mining_spec``;
    needed when ``train.mine_negatives``). ``instructions`` is ``model.instructions``: False tokenizes
    (and mines) queries without their task. ``lengths``: (query, passage) token limits, from the root
    config's ``training_lengths()``. ``append_eos``: False for an encoder student (its tokenizer's own
    [SEP] ends a sequence; ``embedforge.models.backbone_kind``).
    """
    import ray.data

    sources = source_paths(train, run_storage)
    read = [read_valid_rows(path, key) for path, _, key in sources]
    sizes = [n_valid for _, _, n_valid in read]
    summary = {"sources": [{"path": p, "rows": t, "valid": v} for (p, _, _), (_, t, v) in zip(sources, read, strict=True)]}
    if sum(sizes) == 0:
        detail = "; ".join(f"{key}={path!r}: {t} rows, 0 valid" for (path, _, key), (_, t, _) in zip(sources, read, strict=True))
        raise DataError(f"train.data: no valid training rows ({detail}); rows need id, query, positive and a known group")
    counts = mix_counts(sizes, [r for _, r, _ in sources])
    parts = []
    for (ds, _, n_valid), want in zip(read, counts, strict=True):
        if want == 0 or n_valid == 0:
            continue
        if want <= n_valid:
            parts.append(ds.random_shuffle(seed=seed).limit(want))
        else:
            parts.append(ds.union(*[ds] * (-(-want // n_valid) - 1)).limit(want))
    mixed = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    if train.mine_negatives:
        from embedforge.train.mining import mine_hard_negatives

        if mining_model is None:
            raise ValueError("build_batches: train.mine_negatives needs the mining model (mining_spec)")
        mined = mine_hard_negatives(mixed.to_pandas(), mining_model, train.mining_top_k,
                                    max(1, train.negatives_per_query), seed, instructions=instructions,
                                    resource_check=resource_check,
                                    max_positive_ratio=train.mining_max_positive_ratio, margin=train.mining_margin)
        mixed = ray.data.from_pandas(mined)
    tokenized = mixed.map_batches(
        tokenize_frame, batch_format="pandas",
        fn_kwargs={"backbone": backbone, "query_max_length": lengths[0],
                   "passage_max_length": lengths[1], "instructions": instructions, "append_eos": append_eos,
                   "symmetric_groups": tuple(train.symmetric_groups)},
    )
    # Each epoch is dealt with its own seed, so a row left out of one epoch's batches is trained on in
    # the others. The plan holds every epoch's batches (the steps the workers stream, in order).
    planned = tokenized.groupby("group").map_groups(
        plan_frame, batch_format="pandas",
        fn_kwargs={"global_batch_size": train.global_batch_size,
                   "negatives_per_query": train.negatives_per_query, "seed": seed, "epochs": train.epochs},
    ).materialize()
    # Every step sees a whole global batch: each epoch's leftovers of the groups (fewer than a batch
    # each) are packed into mixed batches here, on the driver (at most global_batch_size - 1 rows per
    # group and epoch); what fills no batch is dropped for that epoch and counted.
    leftovers = planned.filter(lambda r: r["leftover"]).to_pandas()
    packed, mixed_batches, dropped = pack_epoch_leftovers(leftovers, train.epochs, train.global_batch_size,
                                                          train.negatives_per_query, seed)
    full = planned.filter(lambda r: not r["leftover"]).select_columns(list(BATCH_COLUMNS))
    if packed:
        import pyarrow as pa

        # Arrow blocks like the planned ones (Ray Data cannot sort a union of Arrow and pandas blocks).
        full = full.union(ray.data.from_arrow(pa.Table.from_pylist([{c: r[c] for c in BATCH_COLUMNS} for r in packed])))
    batches = full.sort(["epoch", "order"]).materialize()
    epoch_of_step = batches.select_columns(["epoch"]).to_pandas()["epoch"]
    steps = [int((epoch_of_step == e).sum()) for e in range(train.epochs)]
    if steps[0] == 0:
        raise DataError(
            f"train.global_batch_size: {sum(counts)} valid rows fill no global batch of {train.global_batch_size} "
            "rows with distinct positives; lower train.global_batch_size or add data"
        )
    summary.update(mixed_rows=sum(counts), steps_per_epoch=steps, mixed_batches=mixed_batches,
                   rows_dropped_per_epoch=dropped)
    return batches, summary
