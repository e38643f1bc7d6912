"""The marker of an unfinished pull: ``relabel pull`` writes it into DEST before it changes
anything there and removes it last, and every reader of a store refuses a folder that holds it.

While the marker is there the store's root ``zarr.json`` is kept aside as ``PULL_ROOT_META``, so
nothing can open half a pull as a store (storage/publish.py does the pulling).
"""
from __future__ import annotations

import json
import os

from .errors import StoreError, UserError
from .paths import read_regular

PULL_MARKER = ".relabel-pull.json"  # present while a pull into this folder is unfinished
PULL_ROOT_META = ".relabel-pull.zarr.json"  # the store's zarr.json, kept aside until the pull is done


def unfinished_pull(path: str) -> dict | None:
    """The marker of a pull into ``path`` that has not finished ({"source": ...}), or None."""
    p = os.path.join(str(path), PULL_MARKER)
    if "://" in str(path) or not os.path.lexists(p):
        return None
    try:
        d = json.loads(read_regular(p, 1 << 16, "a pull marker"))
    except (UserError, ValueError, OSError):
        d = None
    return d if isinstance(d, dict) and isinstance(d.get("source"), str) else {"source": "?"}


def refuse_unfinished_pull(path: str) -> None:
    """One line instead of reading half a pull (the store's zarr.json is not in place yet)."""
    m = unfinished_pull(path)
    if m is not None:
        raise StoreError(f"{path}: an unfinished 'relabel pull' from {m['source']}; rerun "
                        f"'relabel pull {m['source']} {path}' to finish it")


__all__ = ["PULL_MARKER", "PULL_ROOT_META", "unfinished_pull", "refuse_unfinished_pull"]
