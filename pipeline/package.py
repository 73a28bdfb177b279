"""Pack ``entrypoints/`` into a deterministic, content-hashed ``sourcedir.tar.gz`` (the ``source_dir`` of every job).

Why not let the SDK pack it: with a local ``source_dir`` the SDK uploads a fresh tarball at definition time (an
AWS call) under a name that changes per build, which makes the definition differ between builds and defeats step
caching. Here the same files always give the same bytes (sorted entries, mtime 0, uid/gid 0, no ``__pycache__``),
and the S3 key carries the SHA-256 of those bytes, so a code change (and only a code change) gives a new URI.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pipeline._entrypoints import ENTRYPOINTS_DIR

#: Names never packed: byte-code caches, editor and OS droppings, test caches.
EXCLUDED_NAMES = frozenset({"__pycache__", ".DS_Store", ".pytest_cache", ".mypy_cache", ".ruff_cache"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".swp")
ARCHIVE_NAME = "sourcedir.tar.gz"
#: Hex digits of the SHA-256 kept in the S3 key (64 bits: collisions are not a practical concern).
DIGEST_LENGTH = 16


@dataclass(frozen=True)
class SourceBundle:
    """A packed ``source_dir``: ``data`` (the .tar.gz bytes), its ``sha256`` (hex) and where it goes (``s3_uri``)."""

    data: bytes
    sha256: str
    s3_uri: str


def _included(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return not any(part in EXCLUDED_NAMES for part in parts) and not path.name.endswith(EXCLUDED_SUFFIXES)


def pack(source_dir: str | Path = ENTRYPOINTS_DIR) -> bytes:
    """Return ``source_dir`` as gzip-compressed tar bytes, identical for identical file contents.

    Entries are relative to ``source_dir`` (``train.py``, ``imgclf/metrics.py``), sorted, with mtime 0,
    uid/gid 0, no owner names, modes normalised to 0644 (0755 when executable) and the gzip header's
    mtime and file name empty. Symbolic links are followed (the containers need the files).

    Raises:
        FileNotFoundError: ``source_dir`` does not exist.
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: source directory not found")
    files = sorted((p for p in root.rglob("*") if p.is_file() and _included(p, root)), key=lambda p: p.as_posix())
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size = len(data)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def bundle(code_prefix: str, source_dir: str | Path = ENTRYPOINTS_DIR) -> SourceBundle:
    """Pack ``source_dir`` and place it at ``<code_prefix>/<sha256[:16]>/sourcedir.tar.gz``.

    ``code_prefix`` is an S3 URI without a trailing slash (e.g. ``s3://bucket/prefix/pipeline/code``). The file
    name stays ``sourcedir.tar.gz`` because the SDK's FrameworkProcessor requires that name.
    """
    data = pack(source_dir)
    digest = hashlib.sha256(data).hexdigest()
    uri = f"{code_prefix.rstrip('/')}/{digest[:DIGEST_LENGTH]}/{ARCHIVE_NAME}"
    return SourceBundle(data=data, sha256=digest, s3_uri=uri)
