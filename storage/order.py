"""The store's sample order: a pure function of the key set and the seed.

Mix groups are runs of consecutive store positions, so the order must be a random draw of the
dataset; it must also be checkable from the keys alone, so an edited keys array (two entries
swapped: each image would get the other's labels) is refused on open instead of trained on.
"""
from __future__ import annotations

import hashlib

import numpy as np


def _hashes(keys: list[str], seed: int) -> np.ndarray:
    return np.frombuffer(b"".join(hashlib.blake2b(f"{seed}\0{k}".encode(), digest_size=8).digest() for k in keys),
                         dtype="<u8")


def store_order(keys: list[str], seed: int) -> list[str]:
    """A seeded shuffle of the sorted keys (ties in the 64-bit hash keep key order)."""
    keys = sorted(keys)
    perm = np.argsort(_hashes(keys, seed), kind="stable")
    return [keys[i] for i in perm]


def first_out_of_order(keys: list[str], seed: int) -> int | None:
    """The first position i where ``keys[i], keys[i + 1]`` break the store order (their (hash, key)
    pairs must increase); None: ``keys`` is in store order. Linear: no sort."""
    h = _hashes(keys, seed)
    bad = h[1:] < h[:-1]
    for i in np.nonzero(h[1:] == h[:-1])[0]:  # equal hashes: the sorted keys' order decides
        bad[i] = not keys[i] < keys[i + 1]
    where = np.nonzero(bad)[0]
    return int(where[0]) if len(where) else None


__all__ = ["store_order", "first_out_of_order"]
