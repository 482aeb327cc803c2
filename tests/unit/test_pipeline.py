import json

import pytest

from embedforge.config import load_config
from embedforge.pipeline import Markers, stage_fingerprints


def test_fingerprints_chain_downstream_only():
    base = stage_fingerprints(load_config())
    changed = stage_fingerprints(load_config(None, ["evaluate.task_instructions={STSBenchmark: Retrieve similar sentences}"]))
    assert changed["generate"] == base["generate"] and changed["train"] == base["train"]
    assert changed["evaluate"] != base["evaluate"] and changed["report"] != base["report"]
    upstream = stage_fingerprints(load_config(None, ["train.lr=0.001"]))
    assert upstream["split"] == base["split"] and upstream["train"] != base["train"]
    assert upstream["serve"] != base["serve"]


def test_generate_depends_on_the_model_with_a_corpus_and_on_the_tasks_with_contamination_against_them(repo_root):
    corpus = f"generate.corpus={{path: {repo_root / 'tests/fixtures/corpus/beir'}}}"
    plain = stage_fingerprints(load_config(None, []))
    moved = stage_fingerprints(load_config(None, ["model.max_length=64"]))
    assert moved["generate"] == plain["generate"]  # taxonomy rows do not read the model
    with_corpus = stage_fingerprints(load_config(None, [corpus]))
    assert with_corpus["generate"] != stage_fingerprints(load_config(None, [corpus, "model.max_length=64"]))["generate"]
    guarded = ["generate.contamination.against_evaluation=true"]
    assert (stage_fingerprints(load_config(None, guarded))["generate"]
            != stage_fingerprints(load_config(None, [*guarded, "evaluate.tasks=[SciFact]"]))["generate"])
    assert plain["generate"] == stage_fingerprints(load_config(None, ["evaluate.tasks=[SciFact]"]))["generate"]


def _split_result(tmp_path):
    from embedforge.split import SplitResult

    return SplitResult(train_rows=10, heldout_queries=4, heldout_corpus=9, train_data=str(tmp_path / "t"),
                       heldout_dir=str(tmp_path / "h"))


def test_a_marker_gives_back_the_typed_result_only_for_the_same_fingerprint(tmp_path):
    from embedforge.split import SplitResult

    m = Markers(tmp_path)
    assert m.result_if_done("split", "abc") is None
    m.mark("split", "abc", _split_result(tmp_path), 1.0)
    back = m.result_if_done("split", "abc")
    assert isinstance(back, SplitResult) and back == _split_result(tmp_path)
    assert m.result_if_done("split", "other") is None
    assert json.loads((tmp_path / "split.done.json").read_text())["fingerprint"] == "abc"


def test_a_marker_whose_result_does_not_read_as_the_stage_type_reruns_the_stage(tmp_path):
    # e.g. written by an older version (the split used to record {"heldout": {"queries": ...}})
    (tmp_path / "split.done.json").write_text(json.dumps({"fingerprint": "abc", "result": {"heldout": {}}}))
    assert Markers(tmp_path).result_if_done("split", "abc") is None


def test_report_reads_typed_results_and_leaves_out_stages_that_did_not_run(tmp_path):
    from embedforge.generate.runner import GenerateResult
    from embedforge.report import write_report
    from embedforge.serving.smoke import ServeSmokeResult

    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    gen = GenerateResult(run_dir=str(tmp_path), data_dir=str(tmp_path / "data"), labeled={"stsb-train": 12})
    smoke = ServeSmokeResult(model="m", inputs=2, dim=576, prompt_tokens=17, min_cosine_vs_offline=0.99999,
                             latency_s=0.2)
    out = write_report(cfg, tmp_path, {"generate": gen, "split": _split_result(tmp_path), "serve": smoke})
    text = open(out.markdown).read()
    assert "Labeled set `stsb-train`: 12 rows" in text
    assert "Training rows: 10; held-out retrieval task: 4 queries over 9 documents." in text
    assert "dim 576, 17 prompt tokens" in text
    assert "## Training" not in text and "## Evaluation" not in text and "## Data" not in text
    assert out.loss_png is None and out.scores_png is None


def test_report_shows_the_loss_per_batch_group_when_there_are_several(tmp_path):
    from embedforge.report import write_report
    from embedforge.train.runner import TrainResult

    cfg = load_config(None, [f"run.output_dir={tmp_path}"])
    per_group = {"retrieval": {"steps": 2, "first": 2.4, "median": 2.15, "last": 1.9},
                 "sts_pairs": {"steps": 3, "first": 0.9, "median": 0.5, "last": 0.5}}
    train = TrainResult(sources=[], mixed_rows=0, steps_per_epoch=[5], mixed_batches=[0], rows_dropped_per_epoch=[0],
                        total_steps=5, final_metrics={"step": 5, "loss": 0.5}, checkpoint=None, adapter=None,
                        merged="m", sentence_transformers="st", metrics="metrics.jsonl", loss_curve="none.png",
                        loss_by_group=per_group)
    text = open(write_report(cfg, tmp_path, {"train": train}).markdown).read()
    assert "| retrieval | 2 | 2.4 | 2.15 | 1.9 |" in text and "| sts_pairs | 3 | 0.9 | 0.5 | 0.5 |" in text
    one = train.model_copy(update={"loss_by_group": {"retrieval": per_group["retrieval"]}})
    assert "batch group" not in open(write_report(cfg, tmp_path, {"train": one}).markdown).read()
    # A summary written before groups were logged still reads.
    old = json.loads(train.model_dump_json())
    del old["loss_by_group"]
    assert TrainResult.model_validate(old).loss_by_group == {}


def test_pipeline_stage_names_validated():
    from embedforge.config.base import ConfigError

    with pytest.raises(ConfigError, match="pipeline.stages"):
        load_config(None, ["pipeline.stages=[generate, deploy]"])


def test_without_a_split_stage_training_takes_all_the_runs_data(tmp_path):
    from embedforge.pipeline import training_sources
    from embedforge.split import SplitResult

    run_dir = tmp_path / "run"
    split = SplitResult(train_data=str(run_dir / "pipeline" / "train_data"), heldout_dir=str(run_dir / "heldout"),
                        train_rows=10, heldout_queries=4, heldout_corpus=8)
    with_split = load_config(None, [f"run.output_dir={tmp_path}", "train.data=[{path: /data/seed}]"])
    assert [s["path"] for s in training_sources(with_split, run_dir, {"split": split})] == [
        "/data/seed", split.train_data]
    # paper.yaml: no split stage; a split marker left by another run is not used.
    paper = load_config("configs/paper.yaml", [f"run.output_dir={tmp_path}", "run.name=run"])
    assert "split" not in paper.pipeline.stages and paper.pipeline.compare_with_backbone is False
    assert [s["path"] for s in training_sources(paper, run_dir, {"split": split})] == [str(run_dir / "data")]


def test_a_run_in_object_storage_trains_from_the_storage_copy(tmp_path):
    """Training's Ray Data read tasks may run on any node: they get the run's published data (a URI),
    not the driver's working copy."""
    from embedforge.pipeline import training_sources
    from embedforge.split import SplitResult

    cfg = load_config(None, ["run.output_dir=s3://bucket/runs", "run.name=r1"])
    assert cfg.run.storage == "s3://bucket/runs/r1"
    work = cfg.run.dir
    assert "s3:" not in str(work) and work.name.endswith("r1")  # a folder in this node's cache
    split = SplitResult(train_data=str(work / "pipeline" / "train_data"), heldout_dir=str(work / "heldout"),
                        train_rows=10, heldout_queries=4, heldout_corpus=8)
    assert [s["path"] for s in training_sources(cfg, work, {"split": split})] == ["s3://bucket/runs/r1/pipeline/train_data"]


def test_the_held_out_task_is_scored_only_when_the_split_held_queries_out(tmp_path, capsys):
    """A run of labeled sets alone (cpu-quality.yaml with generate.num_rows=0) holds nothing out: its
    evaluation scores the configured tasks instead of failing on an empty held-out folder after training."""
    from embedforge.pipeline import run_local_tasks

    cfg = load_config(None, ["pipeline.stages=[generate,split,train,evaluate]"])
    held = _split_result(tmp_path)
    assert [t["name"] for t in run_local_tasks(cfg, {"split": held})] == ["HeldoutRetrieval"]
    assert run_local_tasks(cfg, {"split": held})[0]["path"] == str(tmp_path / "h")
    none_held = held.model_copy(update={"heldout_queries": 0, "heldout_corpus": 0})
    assert run_local_tasks(cfg, {"split": none_held}) == []
    assert "no held-out queries" in capsys.readouterr().out
    no_split = load_config(None, ["pipeline.stages=[generate,train,evaluate]"])
    assert run_local_tasks(no_split, {"split": held}) == []
