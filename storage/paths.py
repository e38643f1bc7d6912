"""Local path rules shared by the commands: outputs never inside their inputs, bounded reads of
regular files only (a FIFO blocks on open, /dev/zero never ends)."""
from __future__ import annotations

import os
import stat

from .errors import RelabelError, SourceError


def is_inside(child: str | os.PathLike, parent: str | os.PathLike, strict: bool = False) -> bool:
    """Whether ``child`` is ``parent`` or lies below it, on real paths (symlinks resolved; ``child``
    need not exist yet). URLs are never inside anything. ``strict``: ``parent`` itself does not count."""
    child, parent = str(child), str(parent)
    if "://" in child or "://" in parent:
        return False
    c, p = os.path.realpath(child), os.path.realpath(parent)
    if c == p:
        return not strict
    return c.startswith(p.rstrip(os.sep) + os.sep)


def read_regular(path: str | os.PathLike, cap: int, what: str = "a file",
                 error: type[RelabelError] = SourceError) -> bytes:
    """The bytes of a local regular file of at most ``cap`` bytes; anything else is an ``error``
    (``SourceError`` for input data, the default; readers of stores and exports pass ``StoreError``).

    Opened non-blocking so a FIFO cannot stall the open, checked with fstat (no race with a rename),
    and read with a bound even if the file grows meanwhile.
    """
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: not a regular file (a FIFO, device or socket); {what} must be a regular file")
        if st.st_size > cap:
            raise error(f"{path}: {st.st_size:,} bytes, above the {cap / (1 << 20):,.0f} MiB limit for {what}")
        os.set_blocking(fd, True)
        chunks, n = [], 0
        while n <= cap:
            b = os.read(fd, min(1 << 20, cap + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > cap:
            raise error(f"{path}: grew above the {cap / (1 << 20):,.0f} MiB limit for {what} while read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_regular(path: str | os.PathLike, what: str = "a file", error: type[RelabelError] = SourceError) -> None:
    """A local path (symlinks followed) must be a regular file: opening a FIFO would block. Else an
    ``error``, as for ``read_regular``."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # the caller's own "not found" wording applies
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file (a FIFO, device or socket); {what} must be a regular file")
