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


def test_markers_need_matching_fingerprint(tmp_path):
    m = Markers(tmp_path)
    assert m.result_if_done("train", "abc") is None
    m.mark("train", "abc", {"merged": "/x"}, 1.0)
    assert m.result_if_done("train", "abc") == {"merged": "/x"}
    assert m.result_if_done("train", "other") is None
    assert json.loads((tmp_path / "train.done.json").read_text())["fingerprint"] == "abc"


def test_pipeline_stage_names_validated():
    from embedforge.config.base import ConfigError

    with pytest.raises(ConfigError, match="pipeline.stages"):
        load_config(None, ["pipeline.stages=[generate, deploy]"])
