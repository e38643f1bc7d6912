"""Pulled subsets: which view block a store file belongs to, and trimming a pull of some views."""
from __future__ import annotations

import numpy as np
import zarr

from .errors import StoreError, UserError
from .header import DIGEST_ARRAY, LABEL_ARRAYS, SEAL_ARRAY


def view_block_of(rel: str) -> int | None:
    """The view block a store file belongs to, from its chunk key: a label shard
    (``topk_index|topk_logp/c/<view_block>/<sample_block>/0``) or a (schema 2) ``status`` chunk
    (``status/c/<view_block>/<sample_block>``) or digests chunk (``digests/c/<view_block>/<sample_block>/0``);
    None for files every view needs. ``done`` and
    ``seals`` chunks are tiny and make up the label-set digest, so a pull of some views takes all."""
    parts = rel.split("/")
    if (len(parts) == 5 and parts[0] in (*LABEL_ARRAYS, DIGEST_ARRAY)) or (len(parts) == 4 and parts[0] == "status"):
        if parts[1] == "c" and all(p.isdecimal() for p in parts[2:]):
            return int(parts[2])
    return None


def trim_views(path: str, views: tuple[int, int], source: str, total_views: int) -> None:
    """Make a pulled subset consistent: header views = b, label arrays, ``done`` and (schema 2) the
    per-view-block ``status`` resized, done counts clipped to the views present; blocks below a's
    stay pending (absent)."""
    try:
        _trim_views(path, views, source, total_views)
    except UserError:
        raise
    except Exception as e:  # metadata from others that zarr cannot take
        raise StoreError(f"{source}: the pulled store's metadata cannot be trimmed to views {views[0]}-{views[1] - 1} "
                         f"({type(e).__name__}: {str(e)[:80]}); pull all views, or ask the publisher") from None


def _trim_views(path: str, views: tuple[int, int], source: str, total_views: int) -> None:
    a, b = views
    g = zarr.open_group(path, mode="r+", zarr_format=3)
    h = dict(g.attrs["relabel"])
    vps = int(h["views_per_shard"])
    for name in LABEL_ARRAYS:
        arr = g[name]
        arr.resize((b, *arr.shape[1:]))
    done = g["done"]
    nvb = -(-b // vps)
    done.resize((nvb, done.shape[1]))
    d = np.asarray(done[:], dtype=np.int64)
    for vb in range(nvb):
        d[vb] = np.minimum(d[vb], min(vps, b - vb * vps)) if vb >= a // vps else 0
    done[:] = d.astype(done.dtype)
    if g["status"].ndim == 2:  # schema 2: one status row per view block
        g["status"].resize((nvb, g["status"].shape[1]))
    for name in (SEAL_ARRAY, DIGEST_ARRAY):  # one entry per view block, like done
        if name in g:
            g[name].resize((nvb, *g[name].shape[1:]))
    h["views"] = b
    g.attrs["relabel"] = h
    g.attrs["relabel_pull"] = {"source": source, "views": [a, b], "published_views": total_views}
