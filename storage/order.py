"""The store's sample order: a pure function of the key set and the seed.

Mix groups are runs of consecutive store positions, so the order must be a random draw of the
dataset; it must also be checkable from the keys alone, so an edited keys array (two entries
swapped: each image would get the other's labels) is refused on open instead of trained on.
"""
from __future__ import annotations

import hashlib

import numpy as np


def store_order(keys: list[str], seed: int) -> list[str]:
    """A seeded shuffle of the sorted keys (ties in the 64-bit hash keep key order)."""
    keys = sorted(keys)
    perm = np.argsort(np.frombuffer(b"".join(
        hashlib.blake2b(f"{seed}\0{k}".encode(), digest_size=8).digest() for k in keys), dtype="<u8"), kind="stable")
    return [keys[i] for i in perm]


def first_out_of_order(keys: list[str], seed: int) -> int | None:
    """The first position where ``keys`` differs from ``store_order(keys, seed)``; None: in order."""
    expect = store_order(keys, seed)
    if expect == keys:
        return None
    return next(i for i, (a, b) in enumerate(zip(keys, expect)) if a != b)


__all__ = ["store_order", "first_out_of_order"]
