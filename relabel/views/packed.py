"""The torch renderer's batch: packed on the host (``pack_batch``, in a DataLoader worker) into two
tensors the loader pins, rendered on the device (``render_packed``) in a number of torch ops set
by the batch's groups of views, not by its views. The resize passes run with one of ``kernels``'
byte-identical kernels, picked per device by timing (``kernels.KernelPicker``).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch

from .kernels import KERNELS, KernelPicker
from .ops_torch import _apply_ops, _pack_ops
from .params import MixParams, ViewParams, mix_lambda, pixel_box
from .recipe import Recipe
from .resample import _PRECISION_BITS, _Coeffs, _out_size, _Resize


# ------------------------------------------------------------------------------------ the packed batch
# A batch travels as one host record of two tensors (``_Buffers``): bytes (the regions, the erase
# noise, the fill) and 64-bit words (the views grouped by the resize passes they run and chunked
# to bound padding, Pillow's coefficient tables, RandAugment's tables, the mix pairs). Padding is
# exact: a padded pixel is 0 and meets only 0 coefficients.
_CHUNK_BYTES = 1 << 28  # a chunk's padded source in float64 (256 MB); a pass peaks at about 2x that
_WASTE = 2.0  # a chunk's padded pixels may be this many times its views' own (plus a small allowance)


class _Ref(NamedTuple):
    """Where a packed array lies: ``u8`` in the byte buffer, the other kinds in the word buffer."""
    kind: str  # u8, i64, i32, f64 or f32
    at: int
    shape: tuple


_KINDS = {np.dtype(np.uint8): "u8", np.dtype(np.int64): "i64", np.dtype(np.int32): "i32",
          np.dtype(np.float64): "f64", np.dtype(np.float32): "f32"}


class _Buffers:
    """A record's arrays gathered into two tensors, bytes (whole RGB pixels: regions, noise, fill)
    and 64-bit words (integers; float64 bit for bit, float32 exactly widened): a batch leaves its
    worker as two tensors (each tensor costs the DataLoader a shared-memory handle) and reaches the
    device in two uploads. Records are dicts and lists (tuples are kept as they are)."""

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {"u8": [], "w": []}
        self.size = {"u8": 0, "w": 0}

    def add(self, a) -> _Ref:
        a = np.asarray(a.numpy() if isinstance(a, torch.Tensor) else a, order="C")
        kind = _KINDS.get(a.dtype)
        if kind is None:
            raise TypeError(f"a packed array must be one of {', '.join(map(str, _KINDS))}, not {a.dtype}")
        if kind == "u8" and a.size % 3:
            raise ValueError("the byte buffer holds whole RGB pixels (a multiple of 3 bytes)")
        buf = "u8" if kind == "u8" else "w"
        flat = a.reshape(-1) if kind == "u8" else (
            a.astype(np.float64).view(np.int64) if kind in ("f64", "f32") else a.astype(np.int64)).reshape(-1)
        ref = _Ref(kind, self.size[buf], tuple(a.shape))
        self.parts[buf].append(flat)
        self.size[buf] += flat.size
        return ref

    def compact(self, x):
        """``x`` with each tensor (in dicts and lists) replaced by the ``_Ref`` of its copy."""
        if isinstance(x, torch.Tensor):
            return self.add(x)
        if isinstance(x, dict):
            return {k: self.compact(v) for k, v in x.items()}
        return [self.compact(v) for v in x] if isinstance(x, list) else x

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        u8, w = self.parts["u8"], self.parts["w"]
        return (torch.from_numpy(np.concatenate(u8) if u8 else np.zeros(0, np.uint8)),
                torch.from_numpy(np.concatenate(w) if w else np.zeros(0, np.int64)))


def _expand(x, u8: torch.Tensor, w: torch.Tensor):
    """Device side of ``_Buffers.compact``: each ``_Ref`` becomes a view (or a cast) of the buffers."""
    if isinstance(x, _Ref):
        n = int(np.prod(x.shape, dtype=np.int64))
        if x.kind == "u8":
            return u8[x.at:x.at + n].view(x.shape)
        t = w[x.at:x.at + n].view(x.shape)
        if x.kind in ("f64", "f32"):
            t = t.view(torch.float64)
        return t.to(torch.float32) if x.kind == "f32" else t.to(torch.int32) if x.kind == "i32" else t
    if isinstance(x, dict):
        return {k: _expand(v, u8, w) for k, v in x.items()}
    return [_expand(v, u8, w) for v in x] if isinstance(x, list) else x


def _upload(record, device):
    """A record of host tensors onto ``device`` in two copies (``_Buffers``)."""
    buf = _Buffers()
    ref = buf.compact(record)
    u8, w = buf.tensors()
    return _expand(ref, u8.to(device, non_blocking=True), w.to(device, non_blocking=True))


def _region_array(region) -> np.ndarray:
    arr = region.detach().cpu().numpy() if isinstance(region, torch.Tensor) else np.asarray(region)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"a region must be a uint8 HxWx3 tensor, got {tuple(arr.shape)} {arr.dtype}")
    return arr


def _check_holds(shape, offset, plan: _Resize) -> None:
    x0, y0, x1, y1 = plan.box
    ox, oy = offset
    if x0 < ox or y0 < oy or x1 - ox > shape[1] or y1 - oy > shape[0]:
        raise ValueError(f"region at offset {tuple(offset)} of shape {tuple(shape)} does not hold "
                         f"the support box {plan.box}; send support_box()'s region")


def _passes(plan: _Resize) -> str:
    """The resize passes a view runs, in order: "hv", "vh", "h", "v" or "" (an integer crop)."""
    if plan.kind == "crop":
        return ""
    order = "vh" if plan.vertical_first else "hv"
    return "".join(c for c in order if (plan.horiz if c == "h" else plan.vert) is not None)


def _chunks(views: list[int], dims: dict[int, tuple[int, int]]) -> list[list[int]]:
    """Views sorted by size, cut where padding to the chunk's largest height and width would
    cost more than ``_WASTE`` times their own pixels (plus 4096, so tiny views share a chunk) or
    ``_CHUNK_BYTES``."""
    order = sorted(views, key=lambda i: (dims[i][0], dims[i][1]), reverse=True)
    out, cur, hm, wm, own = [], [], 0, 0, 0
    for i in order:
        h, w = dims[i]
        nh, nw, nown = max(hm, h), max(wm, w), own + h * w
        padded = (len(cur) + 1) * nh * nw
        if cur and (padded > _WASTE * nown + 4096 or padded * 3 * 8 > _CHUNK_BYTES):
            out.append(cur)
            cur, nh, nw, nown = [], h, w, h * w
        cur.append(i)
        hm, wm, own = nh, nw, nown
    return out + ([cur] if cur else [])


_INT32 = (-(1 << 31), (1 << 31) - 1)


def _tables(coeffs: list[_Coeffs], starts: list[int]) -> tuple[torch.Tensor, bool]:
    """(2, G, out, K) int64: each view's taps as (column from its box's start, fixed-point weight),
    unused taps (0, 0); K is the most taps any output of the chunk uses (the tables' columns past
    every count are zeros: a kernel looping over taps skips them). And ``wide``: whether some
    partial sum of Resample.c's accumulation, 2**21 + sum(pixel * k) over any of an output's taps,
    could leave int32 (it lies between 2**21 + 255 * its negative weights and 2**21 + 255 * its
    positive ones); Pillow's filters stay far inside (``kernels``' docstring)."""
    K = max(1, max(int(c.count.max(initial=0)) for c in coeffs))
    out = np.zeros((2, len(coeffs), len(coeffs[0].first), K), np.int64)
    j = np.arange(K)
    wide = False
    for g, (c, start) in enumerate(zip(coeffs, starts)):
        used = j[None, :] < c.count[:, None]
        k = np.zeros((len(c.first), K), np.int64)
        n = min(K, c.k.shape[1])
        k[:, :n] = c.k[:, :n]
        out[0, g] = np.where(used, c.first[:, None] + j[None, :] - start, 0)
        out[1, g] = np.where(used, k, 0)
        half = 1 << (_PRECISION_BITS - 1)
        hi, lo = half + 255 * np.clip(out[1, g], 0, None).sum(1), half + 255 * np.clip(out[1, g], None, 0).sum(1)
        wide |= bool(hi.max(initial=half) > _INT32[1] or lo.min(initial=half) < _INT32[0])
    return torch.from_numpy(out), wide


def pack_batch(regions: Sequence, offsets: Sequence[tuple[int, int]], plans: Sequence[_Resize],
               params: Sequence[ViewParams], erases: Sequence, size, recipe: Recipe,
               mixes: Sequence[tuple[int, int, MixParams]] = ()) -> dict:
    """Host side of ``render_batch``: views -> one record of tensors and plain data (see above).
    ``regions[i]`` holds ``plans[i].box`` at ``offsets[i]``; ``erases[i]`` is ``erase_noise``'s;
    ``mixes``: the pairs to mix once rendered (``mix_pairs_torch``'s)."""
    out_w, out_h = _out_size(size)
    arrays = [_region_array(r) for r in regions]
    for arr, off, plan in zip(arrays, offsets, plans):
        _check_holds(arr.shape, off, plan)
    buf = _Buffers()
    starts = [buf.add(a).at for a in arrays]  # the regions open the byte buffer
    groups: dict[str, list[int]] = {}
    for i, plan in enumerate(plans):
        groups.setdefault("nearest" if plan.kind == "nearest" else _passes(plan), []).append(i)
    chunks, nearest = [], None
    for passes, views in groups.items():
        if passes == "nearest":  # Geometry.c's index maps: one gather for all these views
            near = [plans[i] for i in views]
            nearest = {"rows": torch.tensor(views, dtype=torch.int64),
                       "ys": torch.from_numpy(np.stack([pl.ys for pl in near]).astype(np.int64)),
                       "xs": torch.from_numpy(np.stack([pl.xs for pl in near]).astype(np.int64)),
                       "meta": torch.tensor([(int(starts[i]), arrays[i].shape[1], offsets[i][0], offsets[i][1])
                                             for i in views], dtype=torch.int64)}
            continue
        dims = {i: (plans[i].box[3] - plans[i].box[1], plans[i].box[2] - plans[i].box[0]) for i in views}
        for rows in _chunks(views, dims):
            meta = [(int(starts[i]), arrays[i].shape[1], plans[i].box[0] - offsets[i][0],
                     plans[i].box[1] - offsets[i][1], dims[i][1], dims[i][0]) for i in rows]
            h = _tables([plans[i].horiz for i in rows], [plans[i].box[0] for i in rows]) if "h" in passes else None
            v = _tables([plans[i].vert for i in rows], [plans[i].box[1] for i in rows]) if "v" in passes else None
            chunks.append({
                "rows": torch.tensor(rows, dtype=torch.int64), "meta": torch.tensor(meta, dtype=torch.int64),
                "hw": (max(dims[i][0] for i in rows), max(dims[i][1] for i in rows)), "passes": passes,
                "h": h and h[0], "v": v and v[0], "wide": any(t is not None and t[1] for t in (h, v))})
    if chunks:  # slack after the regions: a box row is cut as a run of its chunk's width (``_padded``)
        buf.add(np.zeros((max(c["hw"][1] for c in chunks), 3), np.uint8))
    flips = [i for i, p in enumerate(params) if p.flip]
    erased = [(i, e) for i, e in enumerate(erases) if e is not None]
    erase = None
    if erased:  # the noise follows the regions in the byte buffer
        erase = {"rows": torch.tensor([i for i, _ in erased], dtype=torch.int64),
                 "boxes": torch.tensor([e[0] for _, e in erased], dtype=torch.int64),
                 "base": torch.tensor([buf.add(e[1]).at for _, e in erased], dtype=torch.int64)}
    mix, _ = _pack_mixes(mixes, out_w, out_h)
    record = buf.compact({
        "n": len(plans), "size": (out_w, out_h), "chunks": chunks, "nearest": nearest,
        "flip": torch.tensor(flips, dtype=torch.int64) if flips else None,
        "ops": _pack_ops([p.ops for p in params], recipe, out_w, out_h) if any(p.ops for p in params) else None,
        "fill": torch.tensor(tuple(recipe.fill), dtype=torch.uint8), "erase": erase, "mix": mix})
    record["bytes"], record["words"] = buf.tensors()
    return record


def _padded(flat: torch.Tensor, meta: torch.Tensor, hm: int, wm: int) -> torch.Tensor:
    """(G, hm, wm, 3) uint8: each view's box, from its region in the byte buffer ``flat``, zero-
    padded. A box row is one run of ``wm`` pixels cut from the buffer's every-offset view
    (``unfold``: no copy), one index per row, not per pixel; what a run holds past the box's width
    (the buffer's next bytes: ``pack_batch`` leaves slack after the regions) and the rows past its
    height are zeroed."""
    base, rw, dx, dy, bw, bh = (c.view(-1, 1) for c in meta.unbind(1))
    y = torch.arange(hm, device=flat.device).view(1, hm)
    rows = y < bh
    start = (base + ((y + dy) * rw + dx) * 3).mul_(rows)  # a row past the box: any run (the first)
    runs = flat.unfold(0, 3 * wm, 1).index_select(0, start.view(-1)).view(-1, hm, wm, 3)
    cols = torch.arange(wm, device=flat.device).view(1, 1, wm, 1) < bw.view(-1, 1, 1, 1)
    return runs.mul_(rows.view(-1, hm, 1, 1) & cols)


def _resize_chunk(flat: torch.Tensor, chunk: dict, kernel: str) -> torch.Tensor:
    """One chunk's crop-resizes, (G, out_h, out_w, 3) uint8: Pillow's passes in its order, each
    with ``kernel`` (``kernels.KERNELS``: the same bytes whichever runs)."""
    t = _padded(flat, chunk["meta"], *chunk["hw"])
    run = KERNELS[kernel].run
    for p in chunk["passes"]:  # none: an integer crop, every box out_h x out_w
        t = run(t, chunk[p], p, chunk["wide"])
    return t


def _erase(x: torch.Tensor, erase: dict, pixels: torch.Tensor) -> torch.Tensor:
    """Every erased view's box replaced by its noise (in the byte buffer), in one masked gather."""
    rows, boxes, base = erase["rows"], erase["boxes"], erase["base"]
    _, H, W, _ = x.shape
    y0, x0, y1, x1 = (c.view(-1, 1, 1) for c in boxes.unbind(1))
    y = torch.arange(H, device=x.device).view(1, H, 1)
    xx = torch.arange(W, device=x.device).view(1, 1, W)
    inside = (y >= y0) & (y < y1) & (xx >= x0) & (xx < x1)
    at = ((y - y0) * (x1 - x0) + (xx - x0)).add_(base.view(-1, 1, 1) // 3).mul_(inside)
    x[rows] = torch.where(inside.unsqueeze(-1), pixels[at], x[rows])
    return x


def _nearest(pixels: torch.Tensor, near: dict) -> torch.Tensor:
    """NEAREST views, (m, out_h, out_w, 3): each output pixel is one source pixel of its row and
    column map (Geometry.c's), 0 where either falls outside the image."""
    ys, xs = near["ys"], near["xs"]
    base, rw, ox, oy = (c.view(-1, 1, 1) for c in near["meta"].unbind(1))
    valid = (ys >= 0).unsqueeze(2) & (xs >= 0).unsqueeze(1)
    at = ((ys - oy.view(-1, 1)).unsqueeze(2) * rw + (xs - ox.view(-1, 1)).unsqueeze(1)).add_(base // 3).mul_(valid)
    return pixels[at].mul_(valid.unsqueeze(-1))


_PICKER = KernelPicker()  # what ``kernel="auto"`` uses when no renderer brings its own picker


def render_packed(packed: dict, recipe: Recipe, device, kernel: str | KernelPicker = "auto") -> torch.Tensor:
    """Device side of ``render_batch``: ``pack_batch``'s record -> (N, H, W, 3) uint8 on ``device``,
    mixed. Two non-blocking uploads (from pinned memory, as the DataLoader hands a batch over).
    ``kernel``: the resize kernel (``kernels.RENDER_KERNELS``), or a ``KernelPicker`` that times
    them on this device's first batches (``auto``: a module-wide one)."""
    device = torch.device(device)
    flat = packed["bytes"].to(device, non_blocking=True)
    rec = _expand(packed, flat, packed["words"].to(device, non_blocking=True))
    pixels = flat.view(-1, 3)  # whole RGB pixels: every part of the byte buffer is
    out_w, out_h = rec["size"]

    def resize(name: str) -> torch.Tensor:
        out = torch.empty((rec["n"], out_h, out_w, 3), dtype=torch.uint8, device=device)
        for chunk in rec["chunks"]:
            out[chunk["rows"]] = _resize_chunk(flat, chunk, name)
        return out

    picker = _PICKER if isinstance(kernel, str) and kernel == "auto" else kernel
    if not isinstance(picker, KernelPicker):
        if picker not in KERNELS:
            raise ValueError(f"unknown render kernel {picker!r}; use auto or one of {', '.join(KERNELS)}")
        x = resize(picker)
    elif any(c["passes"] for c in rec["chunks"]):
        x = picker.run(device, resize)
    else:  # nothing to resample: no kernel to time on this batch
        x = resize(next(iter(KERNELS)))
    if rec["nearest"] is not None:
        x[rec["nearest"]["rows"]] = _nearest(pixels, rec["nearest"])
    if rec["flip"] is not None:
        x[rec["flip"]] = x[rec["flip"]].flip(2)
    if rec["ops"] is not None:
        x = _apply_ops(x, rec["ops"], rec["fill"])
    if rec["erase"] is not None:
        x = _erase(x, rec["erase"], pixels)
    if rec["mix"] is not None:
        x = _mix_packed(x, rec["mix"])
    return x


# ------------------------------------------------------------------------------------ mixing
def _mix_boxes(mix: MixParams, W: int, H: int):
    y0, x0, y1, x1 = pixel_box(mix.box, W, H)
    return y0, x0, y1, x1, mix_lambda(mix, W, H)


def _pack_mixes(pairs: Sequence[tuple[int, int, MixParams]], W: int, H: int) -> tuple[dict | None, list]:
    """Host side of mixing: the pairs as tensors ({"up": mixups, "cut": cutmixes}; None: no pairs)
    and each row's own lambda by row (rows in no pair are left out)."""
    lam: dict[int, float] = {}
    ups = [(i, j, int(round(m.lam * 256))) for i, j, m in pairs if m.kind == "mixup"]
    cuts = [(i, j, _mix_boxes(m, W, H)) for i, j, m in pairs if m.kind != "mixup"]
    for i, j, w in ups:
        lam[i] = lam[j] = w / 256
    for i, j, (*_, own) in cuts:
        lam[i] = lam[j] = own
    if not pairs:
        return None, lam
    idx = lambda rows: torch.tensor(rows, dtype=torch.int64)  # noqa: E731
    return {"up": {"i": idx([u[0] for u in ups]), "j": idx([u[1] for u in ups]),
                   "w": torch.tensor([u[2] for u in ups], dtype=torch.int32)} if ups else None,
            "cut": {"i": idx([c[0] for c in cuts]), "j": idx([c[1] for c in cuts]),
                    "boxes": torch.tensor([c[2][:4] for c in cuts], dtype=torch.int64)} if cuts else None}, lam


def _mix_packed(pixels: torch.Tensor, mix: dict) -> torch.Tensor:
    """Device side: mixups as one integer blend, cutmixes as one masked select (each row swaps its
    pair's box); every row is in at most one pair."""
    out = pixels.clone()
    H, W = pixels.shape[1:3]
    up, cut = mix["up"], mix["cut"]
    if up is not None:
        I, J, wa = up["i"], up["j"], up["w"].view(-1, 1, 1, 1)
        A, B = pixels[I].to(torch.int32), pixels[J].to(torch.int32)
        out[I] = ((A * wa + B * (256 - wa) + 128) >> 8).to(torch.uint8)
        out[J] = ((B * wa + A * (256 - wa) + 128) >> 8).to(torch.uint8)
    if cut is not None:
        y0, x0, y1, x1 = (c.view(-1, 1, 1) for c in cut["boxes"].unbind(1))
        y = torch.arange(H, device=pixels.device).view(1, H, 1)
        x = torch.arange(W, device=pixels.device).view(1, 1, W)
        box = ((y >= y0) & (y < y1) & (x >= x0) & (x < x1)).unsqueeze(-1)
        A, B = pixels[cut["i"]], pixels[cut["j"]]
        out[cut["i"]] = torch.where(box, B, A)
        out[cut["j"]] = torch.where(box, A, B)
    return out


