"""sha256 and byte counts of files, bytes and streams: what manifests, export indexes and pulls check."""
from __future__ import annotations

import hashlib


def sha256_file(path: str) -> tuple[int, str]:
    """(size, sha256 hex digest) of a local file, read 1 MiB at a time."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
            n += len(b)
    return n, h.hexdigest()


def sha256_bytes(data: bytes) -> tuple[int, str]:
    """(size, sha256 hex digest) of bytes in memory."""
    return len(data), hashlib.sha256(data).hexdigest()


class HashingWriter:
    """A write-only file wrapper that counts and hashes what goes through it."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        self.f.flush()


class HashingReader:
    """A read-only file wrapper that counts and hashes what comes through it."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def read(self, n=-1):
        b = self.f.read(n)
        self.sha.update(b)
        self.n += len(b)
        return b

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


__all__ = ["sha256_file", "sha256_bytes", "HashingWriter", "HashingReader"]
