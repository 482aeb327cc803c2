"""``embedforge.storage`` on local paths: URI detection and joining, and the copy/list primitives
(the same code paths a URI takes, with a LocalFileSystem on both sides)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embedforge import storage

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "path, expected",
    [
        ("s3://bucket/runs", True),
        ("gs://b/x", True),
        ("S3://bucket", True),
        ("hdfs://namenode:8020/runs", True),
        ("file:///tmp/runs", False),
        ("FILE:///tmp/runs", False),
        ("/tmp/runs", False),
        ("runs/x", False),
        ("C:\\runs", False),
        ("s3:/bucket", False),
    ],
)
def test_is_uri(path, expected):
    assert storage.is_uri(path) is expected


def test_join():
    assert storage.join("s3://b/runs", "x", "y") == "s3://b/runs/x/y"
    assert storage.join("s3://b/runs/", "/x/", "y/") == "s3://b/runs/x/y"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join("s3://b/runs", "", "x") == "s3://b/runs/x"
    # pyarrow reads options from the query string, so it must stay at the end.
    assert storage.join("s3://b/runs?region=eu-west-1", "x") == "s3://b/runs/x?region=eu-west-1"
    assert storage.join("/data/runs", "x", "y") == os.path.join("/data/runs", "x", "y")
    assert storage.join("runs", "x") == os.path.join("runs", "x")


def test_filesystem_local_and_file_uri(tmp_path):
    fs, path = storage.filesystem(str(tmp_path / "a"))
    assert fs.type_name == "local" and path == str(tmp_path / "a")
    fs, path = storage.filesystem("file://" + str(tmp_path / "b c"))
    assert fs.type_name == "local" and path == str(tmp_path / "b c")
    fs, path = storage.filesystem("file://" + str(tmp_path).replace(" ", "%20") + "/d%20e")
    assert path == str(tmp_path / "d e")
    _, path = storage.filesystem("relative/x")
    assert path == os.path.abspath("relative/x")
    assert storage.local_path_or_none("s3://b/x") is None
    assert storage.local_path_or_none("file://" + str(tmp_path)) == tmp_path


def _tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "top.txt").write_text("top\n")
    (root / "a" / "mid.json").write_text('{"k": 1}')
    (root / "a" / "b" / "blob.bin").write_bytes(bytes(range(256)) * 5)
    return root


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_upload_listing_download_round_trip(tmp_path):
    src = _tree(tmp_path / "src")
    dest = str(tmp_path / "storage" / "run" / "x")  # parents do not exist yet
    storage.upload(src, dest)
    assert storage.is_dir(dest) and storage.exists(dest)
    assert storage.listing(dest) == [("a/b/blob.bin", 1280), ("a/mid.json", 8), ("top.txt", 4)]
    assert storage.listing(dest) == storage.listing(str(src))
    back = storage.download(dest, tmp_path / "back" / "x")
    assert back == tmp_path / "back" / "x"
    assert _contents(back) == _contents(src)

    # A single file: listed under its own name, copied to exactly the destination path.
    storage.upload(src / "a" / "b" / "blob.bin", storage.join(str(tmp_path / "storage"), "one", "blob.bin"))
    one = str(tmp_path / "storage" / "one" / "blob.bin")
    assert storage.listing(one) == [("blob.bin", 1280)]
    assert not storage.is_dir(one) and storage.exists(one)
    assert storage.download(one, tmp_path / "f.bin").read_bytes() == bytes(range(256)) * 5


def test_upload_to_itself_is_a_no_op(tmp_path):
    src = _tree(tmp_path / "src")
    contents, before = _contents(src), {p: p.stat().st_mtime_ns for p in src.rglob("*")}
    storage.upload(src, str(src))
    storage.upload(src, "file://" + str(src))
    assert {p: p.stat().st_mtime_ns for p in src.rglob("*")} == before
    assert _contents(src) == contents


def test_missing_paths_raise_naming_them(tmp_path):
    missing = str(tmp_path / "nope")
    assert not storage.exists(missing) and not storage.is_dir(missing)
    for call in (lambda: storage.listing(missing), lambda: storage.read_text(missing),
                 lambda: storage.download(missing, tmp_path / "d"), lambda: storage.upload(missing, str(tmp_path / "u"))):
        with pytest.raises(FileNotFoundError, match="nope"):
            call()
    assert not (tmp_path / "d").exists() and not (tmp_path / "u").exists()


def test_write_text_is_atomic_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "deep" / "dir" / "note.txt"
    storage.write_text(str(path), "first ✓")
    storage.write_text(str(path), "second")
    assert storage.read_text(str(path)) == "second"
    assert os.listdir(path.parent) == ["note.txt"]
    # Readable like any file this process writes (the umask applies, not a private temp-file mode).
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_copy_of_a_local_path_is_the_path(tmp_path):
    cache = tmp_path / "cache"
    assert storage.local_copy(str(tmp_path / "x"), cache_root=cache) == str(tmp_path / "x")
    assert storage.local_copy("relative/x", cache_root=cache) == "relative/x"
    assert storage.local_copy("file://" + str(tmp_path / "x"), cache_root=cache) == str(tmp_path / "x")
    assert not cache.exists()  # nothing was fetched or locked


def test_working_dir_is_the_path_itself_or_a_node_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDFORGE_HOME", str(tmp_path / "home"))
    assert storage.working_dir(str(tmp_path / "run" / "train")) == tmp_path / "run" / "train"
    a, b = storage.working_dir("s3://b/runs/r1/train"), storage.working_dir("s3://b/runs/r2/train")
    assert a.parent == b.parent == tmp_path / "home" / "work"
    assert a != b and a.name.endswith("train")  # one folder per URI, named for its last part
    assert storage.working_dir("s3://b/runs/r1/train") == a  # the same URI, the same folder
