"""A local folder that plays Amazon S3 for local mode: ``s3://bucket/key`` <-> ``<root>/<bucket>/<key>``.

One store serves a whole workspace (default ``.store/``) and is shared by executions, as a bucket is, so step
caching and the model registry work across runs. Every file is written atomically (a temporary file in the same
folder, then ``os.replace``), so a killed run never leaves a half-written object behind.

Semantics follow S3 where it matters to the pipeline:

- an ``S3Prefix`` input is every object whose key starts with the prefix (``s3://b/models/job`` matches
  ``models/job/output/model.tar.gz``); a URI naming one object gives that object;
- an upload (a job output, a checkpoint sync) adds or overwrites objects, one ``PutObject`` per file, and never
  deletes other keys: what an earlier job left under the same prefix stays there and a prefix read sees it, as in
  S3 (https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html adds one object; nothing in a
  ProcessingOutput or a checkpoint upload deletes). This is why each execution writes under its own prefix.

Internal bookkeeping lives in folders whose names start with ``_`` or ``.`` at the root (``.cache``,
``_registry``): valid bucket names cannot start with either, so they never clash with a bucket.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

S3_SCHEME = "s3://"


class StoreError(Exception):
    """A URI the store cannot map, a missing object, or a store already in use."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; ``key`` may be empty, has no leading slash.

    Raises:
        StoreError: ``uri`` is not an ``s3://`` URI, names no bucket, or its key walks out of the bucket (``..``).
    """
    if not isinstance(uri, str) or not uri.startswith(S3_SCHEME):
        raise StoreError(f"{uri!r} is not an S3 URI (expected s3://bucket/key)")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket or bucket in (".", "..") or bucket.startswith(("_", ".")):
        raise StoreError(f"{uri!r} names no valid bucket (expected s3://bucket/key)")
    parts = [part for part in key.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise StoreError(f"{uri!r}: '.' and '..' are not allowed in a key")
    return bucket, "/".join(parts)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_copy(source: str | Path, destination: str | Path) -> None:
    """Copy one file atomically (content and mode), following symbolic links in ``source``."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copy2(source, tmp)
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _walk_files(root: Path):
    """Yield every regular file under ``root`` (following symlinked folders, as a copy to S3 would)."""
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(folder) / name
            if path.is_file() and not name.endswith(".tmp"):
                yield path


class Store:
    """The local S3 stand-in rooted at ``root`` (created if missing).

    Methods take and return ``s3://`` URIs; :meth:`path` maps one to its local path.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- mapping -------------------------------------------------------------------------------------------
    def path(self, uri: str) -> Path:
        """Local path of ``uri`` (``<root>/<bucket>/<key>``); it need not exist. Raises StoreError on a bad URI."""
        bucket, key = parse_s3_uri(uri)
        return self.root / bucket / key if key else self.root / bucket

    def uri(self, path: str | Path) -> str:
        """The ``s3://`` URI of a local path inside the store. Raises StoreError for a path outside it."""
        relative = Path(path).absolute().relative_to(self.root) if Path(path).is_absolute() else Path(path)
        parts = relative.parts
        if not parts or parts[0].startswith(("_", ".")):
            raise StoreError(f"{path} is not inside a bucket of the store {self.root}")
        return S3_SCHEME + "/".join(parts)

    # -- reading -------------------------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        """True if ``uri`` names an object or a non-empty prefix folder."""
        path = self.path(uri)
        return path.is_file() or (path.is_dir() and any(True for _ in _walk_files(path)))

    def objects(self, uri: str) -> list[tuple[str, Path]]:
        """Every object under ``uri`` as ``(key relative to uri, local path)``, sorted; one object -> its name.

        A prefix that ends mid-name also matches (``s3://b/a/mod`` matches ``a/model.tar.gz``), as S3 does.
        """
        path = self.path(uri)
        if path.is_file():
            return [(path.name, path)]
        if path.is_dir():
            return [(p.relative_to(path).as_posix(), p) for p in _walk_files(path)]
        found = []
        if path.parent.is_dir():
            for sibling in sorted(path.parent.iterdir()):
                if sibling.name.startswith(path.name) and not sibling.name.endswith(".tmp"):
                    if sibling.is_file():
                        found.append((sibling.name, sibling))
                    elif sibling.is_dir():
                        found.extend(
                            (f"{sibling.name}/{p.relative_to(sibling).as_posix()}", p) for p in _walk_files(sibling)
                        )
        return found

    def read_bytes(self, uri: str) -> bytes:
        """Bytes of the object ``uri``. Raises StoreError if there is no such object."""
        path = self.path(uri)
        if not path.is_file():
            raise StoreError(f"{uri}: no such object in the store {self.root} (expected file {path})")
        return path.read_bytes()

    def read_json(self, uri: str) -> Any:
        """Parsed JSON of the object ``uri``. Raises StoreError if missing or not JSON."""
        try:
            return json.loads(self.read_bytes(uri))
        except json.JSONDecodeError as error:
            raise StoreError(f"{uri}: not valid JSON ({error})") from error

    def download(self, uri: str, destination: str | Path) -> int:
        """Copy every object under ``uri`` into the folder ``destination`` (keys kept). Returns the file count.

        Raises:
            StoreError: nothing exists under ``uri``.
        """
        objects = self.objects(uri)
        if not objects:
            raise StoreError(f"{uri}: nothing in the store at {self.path(uri)}")
        destination = Path(destination)
        for key, source in objects:
            target = destination / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        return len(objects)

    # -- writing -------------------------------------------------------------------------------------------
    def put_bytes(self, uri: str, data: bytes) -> Path:
        """Write one object atomically; returns its local path."""
        path = self.path(uri)
        atomic_write_bytes(path, data)
        return path

    def put_json(self, uri: str, value: Any) -> Path:
        """Write one JSON object atomically; returns its local path."""
        path = self.path(uri)
        atomic_write_json(path, value)
        return path

    def put_file(self, source: str | Path, uri: str) -> Path:
        """Copy one local file to the object ``uri`` atomically; returns its local path."""
        path = self.path(uri)
        atomic_copy(source, path)
        return path

    def upload_folder(self, source_dir: str | Path, uri: str) -> int:
        """Upload every file of ``source_dir`` under the prefix ``uri`` (keys relative to the folder), as S3 does.

        Each file becomes one object, written atomically; existing objects with the same key are overwritten and
        every other object under ``uri`` is kept. Returns the number of files.
        """
        count = 0
        for path in _walk_files(Path(source_dir)):
            atomic_copy(path, self.path(f"{uri.rstrip('/')}/{path.relative_to(source_dir).as_posix()}"))
            count += 1
        return count

    def link(self, local_dir: str | Path, uri: str) -> Path:
        """Place the folder ``local_dir`` at the prefix ``uri`` as a symbolic link (no copy).

        An earlier link or folder at ``uri`` is replaced. Returns the link's path.

        Raises:
            StoreError: ``local_dir`` is not a folder.
        """
        source = Path(local_dir).resolve()
        if not source.is_dir():
            raise StoreError(f"{local_dir}: not a folder (pass an ImageFolder tree: <class>/<image>)")
        target = self.path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        os.symlink(source, tmp, target_is_directory=True)
        if target.is_dir() and not target.is_symlink():
            old = target.parent / f".{target.name}.{uuid.uuid4().hex}.old.tmp"
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, target)
        return target

    # -- locking -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, owner: str):
        """Hold the store's exclusive lock (``<root>/.lock``, ``fcntl.flock``) for the ``with`` block.

        The lock dies with its process, so a killed run never leaves the store locked.

        Raises:
            StoreError: another process holds it; the message names that run (``owner`` of the holder).
        """
        lock_path = self.root / ".lock"
        handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole block
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise StoreError(
                    f"the store {self.root} is in use by {holder}; wait for it to finish or pass another "
                    f"--store folder"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{owner} (pid {os.getpid()})")
            handle.flush()
            yield self
        finally:
            handle.close()
