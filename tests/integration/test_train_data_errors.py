"""Bad training data fails before any worker starts, naming the setting."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedforge.config import load_config
from embedforge.schema import arrow_schema
from embedforge.train.dataset import DataError
from embedforge.train.runner import train_model


def _cfg(tmp_path, data):
    return load_config("configs/tiny.yaml", [f"run.output_dir={tmp_path}", f"train.data=[{{path: {data}}}]"])


def test_all_invalid_rows_fail_naming_the_source(ray_cluster, tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    row = {"id": "a", "group": "not-a-group", "task": "", "query": "q", "positive": "p", "negatives": [],
           "language": "English", "teacher": "", "source": "x", "prompt_tokens": 0, "completion_tokens": 0}
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.Table.from_pylist([row, dict(row, id="b", group="sts", query=" ")], schema=arrow_schema()),
                   tmp_path / "bad" / "part-0.parquet")
    with pytest.raises(DataError, match=r"train\.data.*2 rows, 0 valid"):
        train_model(_cfg(tmp_path, tmp_path / "bad"))


def test_missing_data_dir_fails_naming_the_setting(ray_cluster, tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    with pytest.raises(DataError, match=r"train\.data\[0\]\.path: no Parquet data"):
        train_model(_cfg(tmp_path, tmp_path / "nothing"))
