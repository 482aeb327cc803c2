"""Run storage: where a run's artifacts live canonically, as a local path, a shared mount or a URI.

A run's storage may be a plain local path, a mount every node shares (NFS, Lustre), or an object
store URI (``s3://bucket/runs``, or anything else ``pyarrow.fs.FileSystem.from_uri`` understands:
``gs://``, ``abfs://``, ``hdfs://``). The canonical copy of every artifact lives there; each node
works in a local copy: stages write locally and ``upload`` the result, and readers call
``local_copy``, which returns local paths unchanged and fetches a URI once per node into a cache
(later calls, from any process of that node, reuse it until the remote copy changes).

A ``file://`` URI is not a URI here: it is treated as the local path it names.

Credentials and endpoints come from the environment, exactly as the AWS SDK reads them:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``), ``AWS_DEFAULT_REGION``
/ ``AWS_REGION``, and ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for an S3-compatible store
such as MinIO. pyarrow honours the endpoint variables natively, but only in ``FileSystem.from_uri``
(``AWS_ENDPOINT_URL`` since Arrow 13, ``AWS_ENDPOINT_URL_S3``, preferred, since 15; checked with
pyarrow 26), which is the only constructor used here; a bare ``pyarrow.fs.S3FileSystem()`` does *not*
read them. An endpoint, scheme or region can also be given in the URI itself
(``s3://bucket/runs?endpoint_override=host:9000&scheme=http&region=eu-west-1``). On a Ray cluster these
variables must reach every worker (e.g. through the runtime environment).

No Ray here: these are the primitives the stages build on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

LISTING_FILE = ".embedforge-listing.json"

# RFC 3986 scheme followed by "://"; a Windows drive ("C:\\") or a relative path never matches.
_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Object stores have no real directories: creating one only writes an empty marker object.
_OBJECT_STORES = {"s3", "gcs", "abfs"}


def cache_home() -> Path:
    """This node's embedforge cache: imported models, fetched storage copies, runs' working copies."""
    return Path(os.environ.get("EMBEDFORGE_HOME", Path.home() / ".cache" / "embedforge"))


@contextlib.contextmanager
def file_lock(lock_path: Path):
    """An exclusive lock across the processes of one node (Ray workers, actors and tasks that fetch or
    import the same model take turns: the first does the work, the others find it done)."""
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def working_dir(path: str) -> Path:
    """Where this node writes what belongs at ``path`` in the run's storage: ``path`` itself when it
    is local (or a shared mount); for a URI a folder in this node's cache, named from the URI, from
    which the writer publishes with ``upload``. Created if missing."""
    if is_uri(path):
        tail = posixpath.basename(urlparse(path).path.rstrip("/")) or "root"
        folder = cache_home() / "work" / _cache_name(path, tail)
    else:
        folder = Path(_local(path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def is_uri(path: str) -> bool:
    """True for ``scheme://…`` other than ``file://`` (a file URI is just a local path)."""
    m = _URI_RE.match(str(path))
    return bool(m) and m.group(1).lower() != "file"


def _local(path: str | os.PathLike) -> str:
    """The absolute local path of a plain path or a ``file://`` URI."""
    path = str(path)
    m = _URI_RE.match(path)
    if m and m.group(1).lower() == "file":
        parsed = urlparse(path)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{path!r} names a file on another host; only local file:// URIs are supported")
        path = unquote(parsed.path)
    return os.path.abspath(os.path.expanduser(path))


def local_path_or_none(path: str | os.PathLike) -> Path | None:
    """The local ``Path`` for a local path or ``file://`` URI; None for a remote URI."""
    return None if is_uri(str(path)) else Path(_local(path))


def join(root: str, *parts: str) -> str:
    """Join path parts onto a storage root: ``/`` for URIs (query string kept last), else os.path.join."""
    if not is_uri(root):
        return os.path.join(root, *parts)
    # pyarrow reads options (region, endpoint_override) from the query, so parts go before it.
    base, sep, query = root.partition("?")
    pieces = [base.rstrip("/")] + [p.strip("/") for p in parts if p and p.strip("/")]
    return "/".join(pieces) + sep + query


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``path`` and the path inside it (``bucket/key`` for S3).

    URIs go through ``FileSystem.from_uri`` because that is where pyarrow applies the environment
    (``AWS_ENDPOINT_URL`` …); local paths and ``file://`` URIs get a LocalFileSystem and an absolute path.
    """
    if is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner.rstrip("/") or inner
    return pafs.LocalFileSystem(), _local(path)


def _info(path: str) -> tuple[pafs.FileSystem, str, pafs.FileInfo]:
    fs, inner = filesystem(path)
    return fs, inner, fs.get_file_info(inner)


def exists(path: str) -> bool:
    """Whether a file or directory exists at ``path`` (on S3: an object, or any object under the prefix)."""
    return _info(path)[2].type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    return _info(path)[2].type == pafs.FileType.Directory


def read_text(path: str) -> str:
    """The whole file as UTF-8 text; FileNotFoundError names ``path`` as given (not pyarrow's inner path)."""
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as fh:
            return fh.read().decode("utf-8")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path} does not exist") from e


def write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, creating local parent directories.

    Local paths are written to a temporary sibling and renamed, so a reader never sees half a file;
    an object store publishes the object only when the upload completes, which is atomic already.
    """
    if not is_uri(path):
        dest = Path(_local(path))
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Not mkstemp: its 0600 mode would survive the rename and hide the file from other users of a
        # shared mount; a plain exclusive open applies the umask like any other write.
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "x", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as fh:
        fh.write(text.encode("utf-8"))


def _snapshot(fs: pafs.FileSystem, inner: str, shown: str) -> list[tuple[str, int, int | None]]:
    """(relative path, size, mtime in ns) of every file at or under ``inner``, sorted.

    A single file is listed under its own name. Directories (and S3's empty directory markers) are
    left out: only files carry content.
    """
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{shown} does not exist")
    if info.type == pafs.FileType.File:
        return [(posixpath.basename(inner), info.size, info.mtime_ns)]
    base = inner.rstrip("/") + "/"
    entries = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    return sorted(
        (e.path[len(base):] if e.path.startswith(base) else os.path.relpath(e.path, inner), e.size, e.mtime_ns)
        for e in entries
        if e.type == pafs.FileType.File
    )


def listing(path: str) -> list[tuple[str, int]]:
    """(relative file path, size in bytes) of every file under ``path``, recursive and sorted.

    For a single file: one entry, its name. Paths use ``/``. FileNotFoundError when nothing is there.
    """
    fs, inner = filesystem(path)
    return [(rel, size) for rel, size, _ in _snapshot(fs, inner, path)]


COPY_CHUNK_BYTES = 64 << 20


def _copy(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str, shown: str) -> None:
    info = src_fs.get_file_info(src)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{shown} does not exist")
    # The destination's parent must exist on filesystems with real directories (a single file is
    # written with open_output_stream, which does not create them); on object stores a "directory"
    # would only add an empty marker object, so none is made.
    parent = posixpath.dirname(dst.rstrip("/"))
    if dst_fs.type_name not in _OBJECT_STORES and parent:
        dst_fs.create_dir(parent, recursive=True)
        if info.type == pafs.FileType.Directory:
            # copy_files creates only the directories the source lists as entries; an object store
            # lists files (and maybe markers), never the folder itself: make the tree first.
            dst_fs.create_dir(dst, recursive=True)
            base = src.rstrip("/") + "/"
            for entry in src_fs.get_file_info(pafs.FileSelector(src, recursive=True)):
                rel = entry.path[len(base):] if entry.path.startswith(base) else posixpath.basename(entry.path)
                folder = rel if entry.type == pafs.FileType.Directory else posixpath.dirname(rel)
                if folder:
                    dst_fs.create_dir(posixpath.join(dst, folder), recursive=True)
    # copy_files walks a directory recursively (empty directories included) and copies in parallel.
    # Reads of 1 MiB (its default) make a 500 MB model 500 ranged GETs; 64 MiB blocks cut the requests
    # (and their latency) 64-fold. 200 MB from moto's S3 server on loopback (which copies the object
    # per ranged GET): 45.6 s at 1 MiB, 6.3 s at 16 MiB, 1.9 s at 64 MiB. Costs one block per file in flight.
    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs, use_threads=True,
                    chunk_size=COPY_CHUNK_BYTES)


def upload(local: str | os.PathLike, dest: str) -> None:
    """Copy a local file or directory tree to ``dest`` (a URI or a local path).

    A directory is merged into an existing one: files are overwritten, files only at ``dest`` stay.
    Nothing happens when ``dest`` is ``local`` itself (a run whose storage is its local directory).
    """
    src = _local(local)
    if not is_uri(dest) and os.path.realpath(src) == os.path.realpath(_local(dest)):
        return
    dst_fs, dst = filesystem(dest)
    _copy(pafs.LocalFileSystem(), src, dst_fs, dst, str(local))


def download(src: str, local: str | os.PathLike) -> Path:
    """Copy ``src`` (a URI or local path; file or directory) to the local path ``local`` and return it."""
    dst = _local(local)
    src_fs, inner = filesystem(src)
    if not is_uri(src) and os.path.realpath(inner) == os.path.realpath(dst):
        return Path(dst)
    _copy(src_fs, inner, pafs.LocalFileSystem(), dst, src)
    return Path(dst)


def _cache_name(uri: str, tail: str) -> str:
    """The node-local copy's folder: a digest of the URI (unique) and its last component (readable)."""
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    return f"{digest}-{re.sub(r'[^A-Za-z0-9._-]', '_', tail)[:40]}"


def file_stamps(path: str) -> list[tuple[str, int, int | None]]:
    """(relative path, size, modification time in ns) of every file at or under ``path``: what
    changes when a stored model is rewritten, without reading it."""
    fs, inner = filesystem(path)
    return _snapshot(fs, inner, path)


def local_copy(src: str, cache_root: Path | None = None, *, skip_suffixes: tuple[str, ...] = ()) -> str:
    """A local path holding ``src``: ``src`` itself when local, else a node-local copy of the URI.

    ``skip_suffixes`` (e.g. ``(".safetensors", ".bin")``): a separate copy of a folder without those
    files — a model's config and tokenizer for a node that only inspects it (the driver).

    The copy lives in ``<cache_root>/<sha256 of the URI>-<last component>/<last component>`` (a file or
    a directory, like the source) and is fetched once per node: under a file lock the remote listing
    (paths, sizes and modification times) is compared with the one recorded after the last complete
    download, and the URI is fetched again only when absent or different, so a rerun that rewrote the
    remote folder is picked up. Downloads go to a temporary sibling that is renamed into place only
    when complete, so a killed download never looks complete. A missing URI raises FileNotFoundError.
    A ``file://`` URI returns the local path it names.
    """
    if not is_uri(src):
        return _local(src) if _URI_RE.match(src) else src
    if cache_root is None:
        cache_root = cache_home() / "storage"
    cache_root = Path(cache_root)
    fs, inner = filesystem(src)
    # The name pyarrow decoded (``my%20file`` -> ``my file``), so the copy is named like the object.
    tail = posixpath.basename(inner.rstrip("/")) or "root"
    name = _cache_name(src + ("#without" + ",".join(skip_suffixes) if skip_suffixes else ""), tail)
    entry = cache_root / name
    with file_lock(cache_root / f"{name}.lock"):
        # Listed before the download, so a remote change during the download leaves a record that
        # no longer matches and the next call fetches again (never the reverse).
        files = _snapshot(fs, inner, src)
        if skip_suffixes and fs.get_file_info(inner).type == pafs.FileType.Directory:
            files = [f for f in files if not f[0].endswith(skip_suffixes)]
        else:
            skip_suffixes = ()
        record = {"uri": src, "files": [list(f) for f in files]}
        if _recorded(entry) == record:
            return str(entry / tail)
        # Leftovers of killed downloads or of replaced copies: only a lock holder creates them.
        for stale in cache_root.glob(f"{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{name}.tmp-", dir=cache_root))
        try:
            if skip_suffixes:  # file by file: only what the record lists
                for rel, _, _ in files:
                    _copy(fs, posixpath.join(inner, rel), pafs.LocalFileSystem(), str(tmp / tail / rel), src)
                (tmp / tail).mkdir(exist_ok=True)
            else:
                _copy(fs, inner, pafs.LocalFileSystem(), str(tmp / tail), src)
            (tmp / LISTING_FILE).write_text(json.dumps(record, indent=1))
            if entry.exists():
                # Move the old copy out of the way first: rename cannot replace a non-empty directory.
                old = Path(tempfile.mkdtemp(prefix=f"{name}.tmp-old-", dir=cache_root))
                entry.rename(old / "entry")
                tmp.rename(entry)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(entry / tail)


def _recorded(entry: Path) -> dict | None:
    try:
        return json.loads((entry / LISTING_FILE).read_text())
    except (OSError, ValueError):
        return None
