"""Pure training pieces: row checks, tokenisation, mixing, batch planning, DeepSpeed config, config errors."""

from __future__ import annotations

import pandas as pd
import pytest

from embedforge.config import ConfigError, load_config
from embedforge.config.train import TrainConfig
from embedforge.prompts import eos_token_id, tokenize_with_eos
from embedforge.train.batching import (
    mix_counts,
    plan_group_batches,
    positive_key,
    row_problem,
    tokenize_rows,
    worker_slice,
)
from embedforge.train.ds_config import backbone_loading, deepspeed_config, lr_at


def _row(i, positive=None, negs=1, group="short_long"):
    positive = positive if positive is not None else f"doc {i}"
    return {
        "id": f"r{i}", "group": group, "positive_key": positive_key(positive),
        "query_ids": [1, 5 + i % 20, 2], "positive_ids": [1, 6, 2],
        "negative_ids": [[1, 7, j, 2] for j in range(negs)],
    }


def test_row_problem_names_the_bad_field():
    good = {"id": "a", "group": "sts", "task": "", "query": "q", "positive": "p", "negatives": []}
    assert row_problem(good) is None
    assert "query" in row_problem(dict(good, query="  "))
    assert "group" in row_problem(dict(good, group="nope"))
    assert "negatives" in row_problem(dict(good, negatives=[1]))


def test_tokenize_rows_formats_queries_and_ends_in_eos(tiny_tokenizer):
    batch = {"id": ["a", "b"], "group": ["sts", "sts"], "task": ["find it", ""], "query": ["hi there", "yo"],
             "positive": ["a doc", "b doc"], "negatives": [["neg one", "neg two"], []]}
    out = tokenize_rows(batch, tiny_tokenizer, query_max_length=64, passage_max_length=6)
    eos = eos_token_id(tiny_tokenizer)
    assert out["query_ids"][0] == tokenize_with_eos(tiny_tokenizer, ["Instruct: find it\nQuery: hi there"], 64)[0]
    assert out["query_ids"][1] == tokenize_with_eos(tiny_tokenizer, ["yo"], 64)[0]  # empty task: no template
    assert all(ids[-1] == eos for ids in out["query_ids"] + out["positive_ids"])
    assert [len(n) for n in out["negative_ids"]] == [2, 0]
    assert all(len(ids) <= 6 and ids[-1] == eos for ids in out["negative_ids"][0])
    assert out["positive_key"][0] != out["positive_key"][1]


def test_symmetric_groups_format_documents_like_their_query(tiny_tokenizer):
    batch = {"id": ["a", "b", "c"], "group": ["classification", "retrieval", "classification"],
             "task": ["find the intent", "find the paper", ""], "query": ["lost card", "q", "yo"],
             "positive": ["card lost", "a paper", "hey"], "negatives": [["top up failed"], ["other paper"], []]}

    def ids(texts, limit=64):
        return tokenize_with_eos(tiny_tokenizer, texts, limit)

    out = tokenize_rows(batch, tiny_tokenizer, 64, 64, symmetric_groups=("classification",))
    assert out["positive_ids"][0] == ids(["Instruct: find the intent\nQuery: card lost"])[0]
    assert out["negative_ids"][0] == ids(["Instruct: find the intent\nQuery: top up failed"])
    # Another group's documents, and a row with no task, stay bare.
    assert out["positive_ids"][1:] == ids(["a paper", "hey"]) and out["negative_ids"][1] == ids(["other paper"])
    # Default: documents bare in every group; model.instructions off: nothing instructed anywhere.
    assert tokenize_rows(batch, tiny_tokenizer, 64, 64)["positive_ids"][0] == ids(["card lost"])[0]
    off = tokenize_rows(batch, tiny_tokenizer, 64, 64, instructions=False, symmetric_groups=("classification",))
    assert off["positive_ids"][0] == ids(["card lost"])[0] and off["query_ids"][0] == ids(["lost card"])[0]


def test_the_dataset_step_passes_symmetric_groups(tmp_path, tiny_tokenizer):
    from embedforge.train.dataset import tokenize_frame

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    df = pd.DataFrame({"id": ["a"], "group": ["sts_pairs"], "task": ["match it"], "query": ["q"], "positive": ["p"],
                       "negatives": [["n"]]})
    out = tokenize_frame(df, str(tmp_path / "tok"), 64, 64, symmetric_groups=("sts_pairs",))
    assert list(out["positive_ids"][0]) == tokenize_with_eos(tiny_tokenizer, ["Instruct: match it\nQuery: p"], 64)[0]


def test_symmetric_groups_must_be_row_groups():
    assert load_config(None, ["train.symmetric_groups=[sts_pairs,classification]"]).train.symmetric_groups == [
        "sts_pairs", "classification"]
    with pytest.raises(ConfigError, match="train.symmetric_groups.*intents.*allowed: short_long"):
        load_config(None, ["train.symmetric_groups=[sts,intents]"])


def test_mix_counts_follow_ratios_and_keep_total():
    assert mix_counts([100, 100], [3, 1]) == [150, 50]
    assert mix_counts([10, 0], [1, 1]) == [10, 0]
    assert sum(mix_counts([7, 13, 5], [1, 1, 1])) == 25


def test_every_batch_is_whole_with_unique_positives_and_the_rest_is_handed_back():
    rows = [_row(i, positive=f"doc {i % 7}") for i in range(40)]
    batches, leftover = plan_group_batches(rows, global_batch_size=6, negatives_per_query=1, seed=3)
    assert batches, "no batch planned"
    used = [i for b in batches for i in b["ids"]]
    assert len(used) == len(set(used))  # a row is used at most once per epoch
    assert sorted(used + [r["id"] for r in leftover]) == sorted(r["id"] for r in rows)  # none lost
    for b in batches:
        keys = [positive_key(f"doc {int(i[1:]) % 7}") for i in b["ids"]]
        assert len(keys) == len(set(keys)), "a positive appears twice in a batch"
        assert len(b["ids"]) == 6  # never a short batch
        assert len(b["negative_ids"]) == len(b["ids"]) * b["num_negatives"]
    assert len(leftover) < 6 or len({r["positive_key"] for r in leftover}) < 6


@pytest.mark.parametrize("seed", range(5))
def test_queries_sharing_a_chunk_fill_every_batch_the_positives_allow(seed):
    # The SmolLM2 ablation's rows (three queries asked per chunk): 50 chunks with one kept query, 21
    # with two, 2 with three = 98 rows over 73 positives. Three batches of 32 need at most 3 copies of
    # a positive, so 96 rows fit; a first-come greedy fill planned 2 batches and dropped 34 rows.
    counts = [1] * 50 + [2] * 21 + [3] * 2
    positives = [f"chunk {k}" for k, c in enumerate(counts) for _ in range(c)]
    rows = [_row(i, positive=p) for i, p in enumerate(positives)]
    assert len(rows) == 98
    batches, leftover = plan_group_batches(rows, 32, negatives_per_query=1, seed=seed)
    assert [len(b["ids"]) for b in batches] == [32, 32, 32] and len(leftover) == 2
    by_id = {r["id"]: r["positive_key"] for r in rows}
    for b in batches:
        assert len({by_id[i] for i in b["ids"]}) == 32
    used = [i for b in batches for i in b["ids"]] + [r["id"] for r in leftover]
    assert sorted(used) == sorted(by_id)


def test_no_more_batches_are_planned_than_the_positives_allow():
    # 44 rows fill 11 batches of 4 by count, but only 4 positives: docs 1-3 have 10 copies each, so
    # at most 10 batches hold 4 distinct positives; doc 0's 4 extra copies are left over.
    rows = [_row(i, positive=f"doc {i % 4}") for i in range(40)] + [_row(40 + i, positive="doc 0") for i in range(4)]
    batches, leftover = plan_group_batches(rows, 4, negatives_per_query=1, seed=0)
    assert len(batches) == 10 and len(leftover) == 4
    assert {r["positive_key"] for r in leftover} == {positive_key("doc 0")}


def test_small_groups_and_remainders_are_packed_into_whole_mixed_batches():
    from embedforge.train.batching import pack_leftovers

    # The tiny run's shape: one big group with a remainder, and groups of 2-4 rows.
    groups = {"seed": 30, "sts": 3, "bitext": 2, "short_long": 4}
    leftovers, full = [], []
    n = 0
    for group, size in groups.items():
        rows = [dict(_row(n + i), group=group) for i in range(size)]
        n += size
        batches, rest = plan_group_batches(rows, 8, negatives_per_query=1, seed=0)
        full += batches
        leftovers += rest
    assert [len(b["ids"]) for b in full] == [8, 8, 8]  # 30 = 3 x 8 + 6; the small groups fill none
    packed, dropped = pack_leftovers(leftovers, 8, negatives_per_query=1, seed=0)
    assert [len(b["ids"]) for b in packed] == [8] and all(b["group"] == "mixed" for b in packed)
    assert dropped == len(leftovers) - 8 == 7  # 6 + 3 + 2 + 4 = 15 leftovers: one batch, 7 dropped


def test_batch_negatives_are_the_minimum_available():
    rows = [_row(0, negs=3), _row(1, negs=1), _row(2, negs=2), _row(3, negs=3)]
    (b,), _ = plan_group_batches(rows, 4, negatives_per_query=2, seed=0)
    assert b["num_negatives"] == 1 and len(b["negative_ids"]) == 4


def test_planning_is_deterministic_and_seeded():
    rows = [_row(i) for i in range(30)]
    a, _ = plan_group_batches(rows, 8, 1, seed=1)
    assert a == plan_group_batches(rows, 8, 1, seed=1)[0]
    assert [b["ids"] for b in a] != [b["ids"] for b in plan_group_batches(rows, 8, 1, seed=2)[0]]


def test_each_epoch_is_dealt_anew_so_no_row_is_left_out_every_epoch():
    from embedforge.train.dataset import pack_epoch_leftovers, plan_frame

    # 98 rows over 73 positives (the SmolLM2 ablation's shape): 3 batches of 32 per epoch, 2 rows left.
    counts = [1] * 50 + [2] * 21 + [3] * 2
    rows = [_row(i, positive=f"chunk {k}") for i, k in enumerate(k for k, c in enumerate(counts) for _ in range(c))]
    plan = plan_frame(pd.DataFrame(rows), 32, negatives_per_query=1, seed=0, epochs=4)
    full = plan[~plan["leftover"]]
    assert full.groupby("epoch").size().tolist() == [3, 3, 3, 3]
    ids_by_epoch = [sorted(i for ids in full[full["epoch"] == e]["ids"] for i in ids) for e in range(4)]
    assert all(len(ids) == len(set(ids)) == 96 for ids in ids_by_epoch)  # a row at most once per epoch
    left_by_epoch = [set(plan[plan["leftover"] & (plan["epoch"] == e)]["ids"].str[0]) for e in range(4)]
    assert all(len(left) == 2 for left in left_by_epoch)
    assert not set.intersection(*left_by_epoch), "the same rows were left out of every epoch"
    batches_by_epoch = [{tuple(sorted(ids)) for ids in full[full["epoch"] == e]["ids"]} for e in range(4)]
    assert batches_by_epoch[0] != batches_by_epoch[1]  # new batch compositions, not a reordering
    # Epoch 0 plans exactly as a one-epoch run does.
    one = plan_frame(pd.DataFrame(rows), 32, negatives_per_query=1, seed=0, epochs=1)
    assert one["ids"].tolist() == plan[plan["epoch"] == 0]["ids"].tolist()
    # The leftovers of each epoch are packed with that epoch's seed: 2 rows fill no batch of 32.
    packed, mixed, dropped = pack_epoch_leftovers(plan[plan["leftover"]], 4, 32, 1, seed=0)
    assert packed == [] and mixed == [0, 0, 0, 0] and dropped == [2, 2, 2, 2]


def test_leftovers_are_packed_per_epoch_and_tagged_with_it():
    from embedforge.train.dataset import pack_epoch_leftovers, plan_frame

    groups = {"sts": 5, "bitext": 6}  # 11 rows, no group fills a batch of 8: one mixed batch an epoch
    plans, n = [], 0
    for group, size in groups.items():
        plans.append(plan_frame(pd.DataFrame([dict(_row(n + i), group=group) for i in range(size)]), 8, 1, seed=5, epochs=3))
        n += size
    leftovers = pd.concat(plans, ignore_index=True)
    assert leftovers["leftover"].all() and len(leftovers) == 33
    packed, mixed, dropped = pack_epoch_leftovers(leftovers, 3, 8, 1, seed=5)
    assert mixed == [1, 1, 1] and dropped == [3, 3, 3]
    assert [b["epoch"] for b in packed] == [0, 1, 2] and all(len(b["ids"]) == 8 for b in packed)
    assert len({tuple(sorted(b["ids"])) for b in packed}) > 1  # each epoch packs its own batch


def test_worker_slices_partition_the_global_batch():
    rows = [_row(i, negs=2) for i in range(8)]
    (b,), _ = plan_group_batches(rows, 8, 2, seed=0)
    slices = [worker_slice(b, r, 4) for r in range(4)]
    assert sum((s["query_ids"] for s in slices), []) == b["query_ids"]
    assert sum((s["negative_ids"] for s in slices), []) == b["negative_ids"]
    assert all(len(s["negative_ids"]) == 2 * len(s["query_ids"]) for s in slices)


def test_deepspeed_config_follows_train_settings_and_lr_warms_up_then_decays_to_zero():
    cfg = TrainConfig(global_batch_size=64, num_workers=4, warmup_steps=10, lr=2e-4)
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["gradient_accumulation_steps"] == 1
    assert ds["optimizer"]["params"]["weight_decay"] == 0.1 and ds["gradient_clipping"] == 1.0
    off = deepspeed_config(cfg.model_copy(update={"deepspeed": cfg.deepspeed.model_copy(
        update={"offload": "cpu", "precision": "fp32", "gradient_clipping": 0.0})}))
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "bf16" not in off and "gradient_clipping" not in off
    assert lr_at(5, 1e-4, 10, 100) == pytest.approx(5e-5)
    assert lr_at(55, 1e-4, 10, 100) == pytest.approx(5e-5)
    assert lr_at(100, 1e-4, 10, 100) == 0.0


@pytest.mark.parametrize("stage, precision, dtype", [
    (3, "bf16", "bfloat16"), (3, "fp32", "float32"), (2, "bf16", "float32"), (0, "fp32", "float32"),
])
def test_zero3_workers_load_partitioned_in_the_training_precision_other_stages_whole_in_fp32(stage, precision, dtype):
    cfg = TrainConfig(global_batch_size=8, num_workers=2, deepspeed={"stage": stage, "precision": precision})
    got_dtype, zero3_config = backbone_loading(cfg)
    assert got_dtype == dtype
    # ZeRO-3 loading partitions under the engine's own config (same stage, precision and batch sizes).
    assert zero3_config == (deepspeed_config(cfg) if stage == 3 else None)


@pytest.mark.parametrize("override, key", [
    ("train.temperature=0", "train.temperature"),
    ("train.global_batch_size=1", "train.global_batch_size"),
    ("train.deepspeed.stage=4", "train.deepspeed.stage"),
])
def test_bad_train_settings_fail_at_load_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override, "train.num_workers=2"])
    assert key in str(err.value)


def test_fp16_on_cpu_is_refused_at_load_naming_the_setting():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.deepspeed.precision=fp16", "train.use_gpu=false"])
    assert "train.deepspeed.precision=fp16" in str(err.value) and "'bf16', 'fp32'" in str(err.value)
    assert load_config(None, ["train.deepspeed.precision=fp16", "train.use_gpu=true"]).train.deepspeed.precision == "fp16"


def test_shipped_configs_train_sections_load(repo_root):
    tiny = load_config(str(repo_root / "configs/tiny.yaml"), [])
    assert tiny.train.num_workers == 2 and tiny.train.deepspeed.stage == 3
    paper = load_config(str(repo_root / "configs/paper.yaml"), [])
    assert paper.train.global_batch_size == 2048 and paper.train.lora.r == 16
    assert paper.train.deepspeed.precision == "bf16" and paper.train.temperature == 0.02


def test_mined_negatives_come_from_the_top_k_and_skip_positives():
    import numpy as np

    from embedforge.train.mining import select_negatives, top_k_indices

    corpus = np.eye(4, dtype=np.float32)
    queries = np.array([[0.9, 0.4, 0.1, 0.0], [0.0, 0.1, 0.2, 0.9]], dtype=np.float32)
    ranked = top_k_indices(queries, corpus, k=2, chunk=1)
    assert ranked.tolist() == [[0, 1], [3, 2]]
    texts = ["a", "b", "c", "d"]
    assert select_negatives(ranked, texts, [{"a"}, {"d"}], num_negatives=1, seed=0) == [["b"], ["c"]]
    assert select_negatives(ranked, texts, [{"a", "b"}, set()], num_negatives=5, seed=0)[0] == []


def test_positive_aware_mining_skips_candidates_too_close_to_the_positive():
    import numpy as np

    from embedforge.train.mining import likely_false_negatives, select_negatives

    # Query 0: positive scores 0.80; candidates 0.79 (98.8% of it: a likely unlabeled positive), 0.70, 0.30.
    # Query 1: positive scores 0.50; candidates 0.49, 0.46, 0.10.
    scores = np.array([[0.79, 0.70, 0.30], [0.49, 0.46, 0.10]])
    positives = np.array([0.80, 0.50])
    assert likely_false_negatives(scores, positives, max_positive_ratio=0.95).tolist() == [
        [True, False, False], [True, False, False]]  # 0.95 x 0.80 = 0.76; 0.95 x 0.50 = 0.475
    assert likely_false_negatives(scores, positives, margin=0.05).tolist() == [
        [True, False, False], [True, True, False]]  # above 0.75 / 0.45
    assert not likely_false_negatives(scores, positives).any()  # off
    ranked = np.array([[1, 2, 3], [1, 2, 3]])
    texts = ["pos", "near", "hard", "easy"]
    skip = likely_false_negatives(scores, positives, max_positive_ratio=0.95)
    picked = select_negatives(ranked, texts, [{"pos"}, {"pos"}], num_negatives=2, seed=0, skip=skip)
    assert [sorted(p) for p in picked] == [["easy", "hard"], ["easy", "hard"]]
