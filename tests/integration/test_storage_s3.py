"""``embedforge.storage`` against a real S3 protocol: moto's server on loopback (``local_s3``), reached
through the environment exactly as a deployment reaches MinIO or AWS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedforge import storage
from embedforge.testing.s3 import local_s3

pytestmark = pytest.mark.integration

BLOB = bytes(range(256)) * 40 + b"\x00\xff"


@pytest.fixture
def s3():
    with local_s3() as server:
        yield server


def _tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "top.txt").write_text("top\n")
    (root / "a" / "mid.json").write_text(json.dumps({"k": [1, 2]}))
    (root / "a" / "b" / "blob.bin").write_bytes(BLOB)
    return root


def _contents(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_upload_read_write_download_round_trip(s3, tmp_path):
    src = _tree(tmp_path / "src")
    run = s3.uri("run", "x")
    assert not storage.exists(run)
    storage.upload(src, run)
    assert storage.exists(run) and storage.is_dir(run)
    assert storage.listing(run) == [("a/b/blob.bin", len(BLOB)), ("a/mid.json", 13), ("top.txt", 4)]
    assert storage.read_text(storage.join(run, "a", "mid.json")) == '{"k": [1, 2]}'

    note = storage.join(run, "notes", "n.txt")
    storage.write_text(note, "héllo")
    assert storage.exists(note) and not storage.is_dir(note)
    assert storage.read_text(note) == "héllo"
    storage.write_text(note, "rewritten")
    assert storage.read_text(note) == "rewritten"

    back = storage.download(run, tmp_path / "back")
    assert _contents(back) == {**_contents(src), "notes/n.txt": b"rewritten"}
    # A single object downloads to exactly the path given.
    one = storage.download(storage.join(run, "a", "b", "blob.bin"), tmp_path / "one" / "blob.bin")
    assert one.read_bytes() == BLOB


def test_missing_uri_raises_naming_it(s3, tmp_path):
    missing = s3.uri("run", "nope")
    assert not storage.exists(missing)
    for call in (lambda: storage.read_text(missing), lambda: storage.listing(missing),
                 lambda: storage.local_copy(missing, cache_root=tmp_path / "cache")):
        with pytest.raises(FileNotFoundError, match=missing):
            call()
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_local_copy_downloads_once_and_again_after_a_change(s3, tmp_path):
    src = _tree(tmp_path / "src")
    run = s3.uri("run", "model")
    storage.upload(src, run)
    cache = tmp_path / "cache"

    first = Path(storage.local_copy(run, cache_root=cache))
    assert first.name == "model" and _contents(first) == _contents(src)
    record = first.parent / storage.LISTING_FILE
    stamp = (first.stat().st_ino, record.stat().st_mtime_ns, record.stat().st_ino)

    # Unchanged remote: the same folder, not fetched again (a fetch renames a fresh folder in).
    again = Path(storage.local_copy(run, cache_root=cache))
    assert again == first
    assert (again.stat().st_ino, record.stat().st_mtime_ns, record.stat().st_ino) == stamp

    # A rerun rewrote a file with another size: fetched again, the old copy replaced.
    storage.write_text(storage.join(run, "a", "mid.json"), '{"k": [1, 2, 3]}')
    third = Path(storage.local_copy(run, cache_root=cache))
    assert third == first
    assert (third / "a" / "mid.json").read_text() == '{"k": [1, 2, 3]}'
    assert third.stat().st_ino != stamp[0]
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.parent.name, first.parent.name + ".lock"])

    # Same size, rewritten later: the modification time (S3 keeps seconds) reveals it.
    time.sleep(1.1)
    storage.write_text(storage.join(run, "a", "mid.json"), '{"k": [4, 5, 6]}')
    assert (Path(storage.local_copy(run, cache_root=cache)) / "a" / "mid.json").read_text() == '{"k": [4, 5, 6]}'


def test_local_copy_of_a_single_object_and_a_half_download_is_not_complete(s3, tmp_path):
    cache = tmp_path / "cache"
    uri = s3.uri("models", "w.bin")
    storage.upload(_tree(tmp_path / "src") / "a" / "b" / "blob.bin", uri)
    path = Path(storage.local_copy(uri, cache_root=cache))
    assert path.name == "w.bin" and path.read_bytes() == BLOB

    # A download killed midway: the copy has no listing record and a temporary sibling is left behind.
    # Neither counts as complete: the object is fetched again and the leftover removed.
    (path.parent / storage.LISTING_FILE).unlink()
    path.write_bytes(b"truncated")
    leftover = cache / (path.parent.name + ".tmp-killed")
    leftover.mkdir()
    (leftover / "w.bin").write_bytes(b"trunc")
    assert Path(storage.local_copy(uri, cache_root=cache)).read_bytes() == BLOB
    assert not leftover.exists()


def test_server_is_loopback_only_and_environment_restored(tmp_path):
    before = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_REGION")}
    with local_s3("other-bucket") as s3:
        port = int(s3.endpoint.rsplit(":", 1)[1])
        assert s3.endpoint == f"http://127.0.0.1:{port}"
        assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint and s3.env["AWS_ACCESS_KEY_ID"] == "testing"
        assert s3.uri("a", "b") == "s3://other-bucket/a/b"
        assert storage.is_dir(s3.uri())  # the bucket exists
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        # Bound to 127.0.0.1 itself, not 0.0.0.0: another loopback address is refused.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
    assert {k: os.environ.get(k) for k in before} == before
    with pytest.raises(ConnectionRefusedError):  # stopped
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_a_separate_process_reaches_it_with_the_env_alone(s3):
    uri = s3.uri("shared", "msg.txt")
    storage.write_text(uri, "from the driver")
    # Nothing AWS-related inherited: only what s3.env carries (as a Ray worker's runtime env would).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3.env
    code = "import sys; from embedforge.storage import read_text; print(read_text(sys.argv[1]), end='')"
    out = subprocess.run([sys.executable, "-c", code, uri], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "from the driver"


def test_a_flat_folder_comes_back_into_a_fresh_place(s3, tmp_path):
    """A folder of files only (a LoRA adapter): the object store lists no directory entry for it, and
    the download must still make the folder (the export task's first run failed on exactly this)."""
    flat = tmp_path / "adapter"
    flat.mkdir()
    (flat / "adapter_config.json").write_text("{}")
    (flat / "adapter_model.safetensors").write_bytes(BLOB)
    storage.upload(flat, s3.uri("run", "train", "adapter"))
    copy = Path(storage.local_copy(s3.uri("run", "train", "adapter"), cache_root=tmp_path / "cache"))
    assert copy.name == "adapter" and _contents(copy) == _contents(flat)
    again = storage.download(s3.uri("run", "train", "adapter"), tmp_path / "fresh" / "deeper" / "adapter")
    assert _contents(again) == _contents(flat)


def test_a_model_in_the_bucket_is_inspected_without_its_weights(s3, tmp_path, monkeypatch):
    """What the driver does with a trained model in object storage: its config and tokenizer only
    (no weight file lands on the head), its identity from the stored files, its parameter count from
    the safetensors headers read in place."""
    from embedforge.evaluate.cache import model_fingerprint
    from embedforge.evaluate.leaderboard import count_parameters
    from embedforge.models import resolve_backbone
    from embedforge.testing import tiny_model

    monkeypatch.setenv("EMBEDFORGE_HOME", str(tmp_path / "home"))
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "merged")
    uri = s3.uri("run", "train", "merged")
    storage.upload(tmp_path / "merged", uri)

    inspected = Path(resolve_backbone(uri, weights=False))
    assert (inspected / "config.json").is_file() and not list(inspected.rglob("*.safetensors"))
    whole = Path(resolve_backbone(uri))
    assert list(whole.rglob("*.safetensors")) and whole != inspected
    n = sum(p.numel() for p in model.state_dict().values())
    assert count_parameters(uri) == count_parameters(str(tmp_path / "merged")) == n

    before = model_fingerprint(uri, pooling="last_token")
    time.sleep(1.1)  # S3 keeps whole seconds
    (tmp_path / "merged" / "config.json").write_text((tmp_path / "merged" / "config.json").read_text() + " ")
    storage.upload(tmp_path / "merged", uri)
    assert model_fingerprint(uri, pooling="last_token") != before
