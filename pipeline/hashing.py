"""The SHA-256 of a file: what the model registry records at registration and the endpoint checks before it
extracts an archive (one function, so that both compute the digest the same way)."""

from __future__ import annotations

import hashlib
import os


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB blocks (an archive of any size in bounded memory).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
