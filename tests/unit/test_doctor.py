"""The doctor's pure parts: what a config needs (extras, paths, disk and memory) and how a verdict reads."""

from __future__ import annotations

from embedforge.config import load_config
from embedforge.doctor import FAIL, OK, Check, check_data, config_paths, estimate_needs, needed_extras


def test_tiny_needs_every_stage_the_local_teacher_and_minilm(repo_root):
    cfg = load_config(repo_root / "configs" / "tiny.yaml")
    assert needed_extras(cfg) == {"generate", "train", "evaluate", "serve", "tiny", "baseline"}
    needs = estimate_needs(cfg)
    # 135M fp32 parameters, 0.54 GB a copy. Memory: 2 workers x 3 copies + 1 evaluation actor + the
    # driver's copy + 1 replica + 2 GB = 6.8 GB. Disk: 5 copies + 1 GB = 3.7 GB.
    assert needs["params"] == 134_515_008
    assert 6.7 < needs["memory_gb"] < 6.9 and 3.6 < needs["disk_gb"] < 3.8


def test_serve_only_config_needs_no_teacher(repo_root):
    cfg = load_config(repo_root / "configs" / "tiny.yaml", ["pipeline.stages=[serve]", "model.backbone=all-minilm-l6-v2",
                                                          "evaluate.baselines={}"])
    assert needed_extras(cfg) == {"serve", "baseline"}


def test_missing_data_path_fails_naming_the_key(repo_root, tmp_path):
    cfg = load_config(repo_root / "configs" / "tiny.yaml",
                      [f"generate.contamination.eval_files=[{tmp_path / 'absent.tsv'}]"])
    keys = [k for k, _ in config_paths(cfg)]
    assert keys == ["generate.labeled[0].path", "generate.contamination.eval_files[0]"]
    check = check_data(cfg)
    assert check.status == FAIL and "generate.contamination.eval_files[0]" in check.detail
    assert "1 of 2 paths missing" in check.detail


def test_the_corpus_a_run_adapts_to_is_checked(repo_root, tmp_path):
    cfg = load_config(repo_root / "configs" / "adapt.yaml", [f"generate.corpus.path={tmp_path / 'my-docs'}"])
    assert [k for k, _ in config_paths(cfg)] == ["generate.corpus.path"]
    check = check_data(cfg)
    assert check.status == FAIL and f"generate.corpus.path = {tmp_path / 'my-docs'}" in check.detail
    (tmp_path / "my-docs").mkdir()
    assert check_data(cfg).status == OK


def test_verdict_line_shows_the_fix_only_when_something_is_wrong():
    assert Check("cpu", OK, "2 threads", "never shown").line() == "  ok    cpu                2 threads"
    line = Check("llama.cpp build", FAIL, "crashed", "reinstall it\nthen rerun").line()
    assert line.splitlines()[1].strip() == "fix: reinstall it" and line.splitlines()[2].strip() == "then rerun"
