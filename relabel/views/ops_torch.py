"""RandAugment's ops as batched torch kernels with Pillow's arithmetic (see relabel.views.torch):
per-sample LUTs, ``Image.blend``'s float32 blends against Pillow's degenerate images, and
``Image.transform``'s affine filters. ``_pack_ops`` plans a batch's ops on the host (a DataLoader
worker) into per-group tables; ``_apply_ops`` runs them on the device, one step per kernel group
and op position.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .randaug import OpParams, op_argument
from .recipe import GEOMETRIC_OPS, Recipe
from .resample import _AFFINE_FILTERS, _accumulate, _coord, _inside, _true_div


# ------------------------------------------------------------------------------------ RandAugment
def _posterize_lut(bits: int) -> list[int]:
    if bits >= 8:
        return list(range(256))
    mask = ~(2 ** (8 - bits) - 1) if bits > 0 else 0
    return [i & mask for i in range(256)]


def _solarize_lut(threshold: int) -> list[int]:
    return [i if i < threshold else 255 - i for i in range(256)]


# name -> LUT(arg) for the ops that are a fixed table (randaug's Pillow calls, same tables)
_STATIC_LUTS: dict[str, Callable[[int], list[int]]] = {
    "Invert": lambda v: [255 - i for i in range(256)],
    "Posterize": _posterize_lut,
    "PosterizeIncreasing": _posterize_lut,
    "Solarize": _solarize_lut,
    "SolarizeIncreasing": _solarize_lut,
    "SolarizeAdd": lambda v: [min(255, i + v) if i < 128 else i for i in range(256)],
}

# name -> the affine matrix Image.transform gets (v: op argument; w, h: image size), as randaug's
_AFFINE: dict[str, Callable[[float, int, int], tuple]] = {
    "ShearX": lambda v, w, h: (1, v, 0, 0, 1, 0),
    "ShearY": lambda v, w, h: (1, 0, 0, v, 1, 0),
    "TranslateXRel": lambda v, w, h: (1, 0, v * w, 0, 1, 0),
    "TranslateYRel": lambda v, w, h: (1, 0, 0, 0, 1, v * h),
    "TranslateX": lambda v, w, h: (1, 0, v, 0, 1, 0),
    "TranslateY": lambda v, w, h: (1, 0, 0, 0, 1, v),
}

# name -> torch kernel group (each group runs once per op position over all samples that have it)
_OP_KERNEL: dict[str, str] = {
    **{name: "lut" for name in _STATIC_LUTS},
    **{name: "affine" for name in _AFFINE},
    "Rotate": "rotate",
    "AutoContrast": "autocontrast",
    "Equalize": "equalize",
    **{name + inc: name.lower() for name in ("Color", "Contrast", "Brightness", "Sharpness") for inc in ("", "Increasing")},
}
assert GEOMETRIC_OPS == frozenset(n for n, k in _OP_KERNEL.items() if k in ("affine", "rotate"))


def _rotate_matrix(angle: float, w: int, h: int) -> list[float]:
    """``Image.rotate``'s inverse matrix (no center, translate or expand), in the same order."""
    center = (w / 2, h / 2)
    angle = -math.radians(angle)
    m = [round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
         round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0]
    a, b, c, d, e, f = m
    x, y = -center[0] - 0, -center[1] - 0
    m[2], m[5] = a * x + b * y + c, d * x + e * y + f
    m[2] += center[0]
    m[5] += center[1]
    return m


def _transform_filter(recipe: Recipe) -> str:
    if recipe.interpolation not in _AFFINE_FILTERS:
        # Image.transform's own refusal, raised for the same views
        raise ValueError(f"Image.Resampling.{recipe.interpolation.upper()} cannot be used by the "
                         f"geometric RandAugment ops; use nearest, bilinear or bicubic")
    return recipe.interpolation


def _plan_op(op: OpParams, recipe: Recipe, w: int, h: int) -> tuple[str, object] | None:
    """(kernel group, per-sample payload) for one op; None when Pillow returns the image as is."""
    v = op_argument(op, magnitude_max=recipe.ra.magnitude_max)
    kind = _OP_KERNEL[op.name]
    if kind == "lut":
        return kind, np.clip(_STATIC_LUTS[op.name](v), 0, 255)
    if kind in ("autocontrast", "equalize"):
        return kind, None
    if kind in ("color", "contrast", "brightness", "sharpness"):
        return kind, np.float32(v)  # Image.blend's alpha is a C float
    if kind == "rotate":
        angle = v % 360.0
        if angle == 0:
            return None
        if angle == 180:
            return "rot180", None
        if angle in (90, 270) and w == h:
            return ("rot90" if angle == 90 else "rot270"), None
        return "affine", (_rotate_matrix(angle, w, h), _transform_filter(recipe))
    return "affine", (tuple(float(c) for c in _AFFINE[op.name](v, w, h)), _transform_filter(recipe))


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """x (n,H,W,3) uint8, lut (n,3,256) integer -> per-sample, per-channel table lookup."""
    n = x.shape[0]
    idx = x.long() + torch.arange(3, device=x.device) * 256
    return lut.reshape(n, 768).gather(1, idx.reshape(n, -1)).reshape(x.shape).to(torch.uint8)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """(n,3,256) int64 per-channel histograms (integer counts: exact on any device). Counted with
    index_add_: bincount reads the index range back to the host, which would stall the render."""
    n = x.shape[0]
    idx = (x.long() + torch.arange(3, device=x.device) * 256
           + torch.arange(n, device=x.device).view(n, 1, 1, 1) * 768).reshape(-1)
    counts = torch.zeros(n * 768, dtype=torch.int64, device=x.device)
    return counts.index_add_(0, idx, torch.ones_like(idx)).reshape(n, 3, 256)


def _identity_lut(like: torch.Tensor) -> torch.Tensor:
    return torch.arange(256, device=like.device).expand_as(like)


def _k_lut(x, luts, ctx):
    """One 256-entry table per sample, the same for the three channels (as randaug's point())."""
    return _apply_lut(x, luts[:, None, :].expand(-1, 3, 256))


def _k_equalize(x, data, ctx):
    """``ImageOps.equalize``: lut[i] = (step // 2 + count below i) // step, clipped by point()."""
    h = _histogram(x)
    used = h > 0
    last = 255 - torch.flip(used, (-1,)).long().argmax(-1, keepdim=True)  # highest used value
    step = (h.sum(-1, keepdim=True) - h.gather(-1, last)) // 255
    below = torch.cumsum(h, -1) - h
    lut = torch.div(step // 2 + below, step.clamp(min=1), rounding_mode="floor").clamp(max=255)
    keep = (used.sum(-1, keepdim=True) <= 1) | (step == 0)
    return _apply_lut(x, torch.where(keep, _identity_lut(lut), lut))


def _k_autocontrast(x, data, ctx):
    """``ImageOps.autocontrast`` (cutoff 0): lut[i] = int(i * scale + offset) in float64, clipped."""
    used = _histogram(x) > 0
    lo = used.long().argmax(-1, keepdim=True)
    hi = 255 - torch.flip(used, (-1,)).long().argmax(-1, keepdim=True)
    span = (hi - lo).clamp(min=1).to(torch.float64)
    scale = _true_div(torch.full_like(span, 255.0), span)
    offset = (-lo).to(torch.float64) * scale
    ix = torch.arange(256, device=x.device, dtype=torch.float64)
    lut = torch.trunc(ix * scale + offset).clamp(0, 255).long()
    return _apply_lut(x, torch.where(hi <= lo, _identity_lut(lut), lut))


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Convert.c ``rgb2l``: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, (n,H,W) int32."""
    c = x.to(torch.int32)
    return (c[..., 0] * 19595 + c[..., 1] * 38470 + c[..., 2] * 7471 + 0x8000) >> 16


def _blend(degenerate: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Blend.c: float32 ``in1 + alpha * (in2 - in1)``, clipped, truncated; one op per rounding.
    ``alpha``: (n,) float32, Image.blend's C float per sample."""
    a = degenerate.to(torch.float32)
    diff = x.to(torch.float32) - a
    al = alpha.view(-1, 1, 1, 1)
    prod = al * diff
    return (a + prod).clamp_(0, 255).trunc_().to(torch.uint8)


def _k_brightness(x, alphas, ctx):
    return _blend(torch.zeros_like(x), x, alphas)


def _k_color(x, alphas, ctx):
    return _blend(_luma(x).unsqueeze(-1).expand(x.shape), x, alphas)


def _k_contrast(x, alphas, ctx):
    """Degenerate: the L image's mean, int(sum / count + 0.5) (float64, as Python's division)."""
    lum = _luma(x).to(torch.int64)
    total = lum.sum((1, 2)).to(torch.float64)
    mean = _true_div(total, torch.full_like(total, float(lum.shape[1] * lum.shape[2])))
    gray = torch.floor(mean + 0.5).to(torch.uint8).view(-1, 1, 1, 1)
    return _blend(gray.expand(x.shape), x, alphas)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """Filter.c ``ImagingFilter3x3`` with SMOOTH (1 1 1 / 1 5 1 / 1 1 1) / 13 in float32, +0.5,
    clipped and truncated; the border rows and columns are copied; images under 3x3 are copied."""
    n, H, W, _ = x.shape
    out = x.clone()
    if H < 3 or W < 3:
        return out
    # made on the device (a fill, no upload); a float32 value round-trips through a Python float
    f32 = lambda v: torch.full((), float(v), dtype=torch.float32, device=x.device)  # noqa: E731
    k1, k5 = f32(np.float32(1) / np.float32(13)), f32(np.float32(5) / np.float32(13))
    p = x.to(torch.float32)

    def row(r: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
        left, centre, right = r[:, :, :-2] * k1, r[:, :, 1:-1] * mid, r[:, :, 2:] * k1
        return (left + centre) + right

    ss = f32(0.5) + row(p[:, 2:], k1)  # the row below takes kernel[0:3], as in C
    ss = ss + row(p[:, 1:-1], k5)
    ss = ss + row(p[:, :-2], k1)
    out[:, 1:-1, 1:-1] = ss.clamp_(0, 255).trunc_().to(torch.uint8)
    return out


def _k_sharpness(x, alphas, ctx):
    return _blend(_smooth(x), x, alphas)


def _k_rot(k: int):
    return lambda x, data, ctx: torch.rot90(x, k, (1, 2)).contiguous()


def _cubic(v1, v2, v3, v4, d):
    """Geometry.c ``BICUBIC`` macro, operation for operation."""
    p1 = v2
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


def _cubic_u8(v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``BICUBIC`` over a row of pixels (axis 2 of ``v``, int16): in C, p1..p4 are int arithmetic on
    the UINT8 pixels (|p| <= 765), so they are taken in int16, exactly; only the polynomial in ``d``
    needs float64 (each product widens its int16 operand exactly)."""
    v1, v2, v3, v4 = v.unbind(2)
    p2 = v3 - v1
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = v2 - v1 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def _taps_u8(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x (n, H, W, 3) uint8; rows (n, R, H, W), cols (n, C, H, W) -> (n, R, C, H, W, 3) int16: every
    tap of every output pixel in one gather of bytes, taps outermost (each tap a contiguous image)."""
    n, H, W, _ = x.shape
    R, C = rows.shape[1], cols.shape[1]
    idx = (rows.unsqueeze(2) * W + cols.unsqueeze(1)).reshape(n, R * C * H * W, 1).expand(-1, -1, 3)
    return x.reshape(n, H * W, 3).gather(1, idx).reshape(n, R, C, H, W, 3).to(torch.int16)


def _affine_smooth(x: torch.Tensor, mats: torch.Tensor, fill: torch.Tensor, filt: str) -> torch.Tensor:
    """``ImagingGenericTransform`` + ``affine_transform`` + bilinear/bicubic_filter32RGB. Geometry.c
    computes in double, so the interpolation stays float64; but its first (horizontal) step works on
    ints (UINT8 pixels, their differences), which this kernel keeps in int16 and gathers as bytes:
    fewer float64 ops and bytes, the same doubles."""
    n, H, W, _ = x.shape
    xs = torch.arange(W, dtype=torch.float64, device=x.device).view(1, 1, W) + 0.5
    ys = torch.arange(H, dtype=torch.float64, device=x.device).view(1, H, 1) + 0.5
    a = [mats[:, i].view(n, 1, 1) for i in range(6)]
    xin = (a[0] * xs + a[1] * ys) + a[2]
    yin = (a[3] * xs + a[4] * ys) + a[5]
    valid = (xin >= 0.0) & (xin < W) & (yin >= 0.0) & (yin < H)
    xin, yin = xin - 0.5, yin - 0.5
    xf, yf = torch.floor(xin), torch.floor(yin)
    dx, dy = (xin - xf).unsqueeze(-1), (yin - yf).unsqueeze(-1)
    xi = xf.clamp(-8, W + 8).long().unsqueeze(1)  # outside points are filled below: keep indices sane
    yi = yf.clamp(-8, H + 8).long().unsqueeze(1)
    row_d = dx.unsqueeze(1)  # (n, 1, H, W, 1): one per row of taps
    if filt == "bicubic":  # a missing row repeats the previous one: the same as clamping it
        taps = torch.arange(-1, 3, device=x.device).view(1, 4, 1, 1)
        g = _taps_u8(x, (yi + taps).clamp_(0, H - 1), (xi + taps).clamp_(0, W - 1))  # (n, 4, 4, H, W, 3)
        v = _cubic(*_cubic_u8(g, row_d).unbind(1), dy)  # four rows (float64), then down the column
        v = torch.where(v <= 0.0, 0.0, torch.where(v >= 255.0, 255.0, torch.trunc(v)))
    else:
        taps = torch.arange(2, device=x.device).view(1, 2, 1, 1)
        left, right = _taps_u8(x, (yi + taps).clamp_(0, H - 1), (xi + taps).clamp_(0, W - 1)).unbind(2)
        top, bottom = (left + (right - left) * row_d).unbind(1)  # BILINEAR: int difference, then double
        v = torch.trunc(top + (bottom - top) * dy).clamp(0, 255)
    return torch.where(valid.unsqueeze(-1), v.to(torch.uint8), fill)


def _nearest_map(a: Sequence[float], w: int, h: int) -> np.ndarray:
    """``ImagingTransformAffine`` with NEAREST: flat source index per output pixel, -1 outside."""
    if a[1] == 0 and a[3] == 0:  # ImagingScaleAffine
        xs = _inside(_coord(_accumulate(a[2] + a[0] * 0.5, a[0], w)), w)
        ys = _inside(_coord(_accumulate(a[5] + a[4] * 0.5, a[4], h)), h)
        xin, yin = np.broadcast_to(xs[None, :], (h, w)), np.broadcast_to(ys[:, None], (h, w))
    elif all(abs(x * a[0] + y * a[1] + a[2]) < 32768.0 and abs(x * a[3] + y * a[4] + a[5]) < 32768.0
             for x, y in ((0, 0), (w, h), (0, h), (w, 0))):  # affine_fixed: 16.16 fixed point
        fix = lambda v: math.floor(v * 65536.0 + 0.5)  # noqa: E731
        a0, a1, a3, a4 = fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4])
        a2, a5 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5), fix(a[5] + a[3] * 0.5 + a[4] * 0.5)
        X, Y = np.arange(w, dtype=np.int64)[None, :], np.arange(h, dtype=np.int64)[:, None]
        xin, yin = (a2 + Y * a1 + X * a0) >> 16, (a5 + Y * a4 + X * a3) >> 16
    else:  # the float fallback, accumulated per row and per pixel
        xo = _accumulate(a[2] + a[1] * 0.5 + a[0] * 0.5, a[1], h)
        yo = _accumulate(a[5] + a[4] * 0.5 + a[3] * 0.5, a[4], h)
        xin = _coord(np.add.accumulate(np.concatenate([xo[:, None], np.full((h, w - 1), a[0])], 1), 1)[:, :w])
        yin = _coord(np.add.accumulate(np.concatenate([yo[:, None], np.full((h, w - 1), a[3])], 1), 1)[:, :w])
    ok = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    return np.where(ok, yin * w + xin, -1).reshape(-1)


def _k_affine(x, data, ctx):
    """Image.transform(AFFINE) per sample: ``data`` holds the batch's filter and either NEAREST's
    index maps (n, H*W) or the matrices (n, 6); run in chunks that bound the temporaries (a smooth
    filter's gathered taps and float64 rows: a few hundred bytes per pixel)."""
    n, H, W, _ = x.shape
    fill = ctx["fill"]
    out = torch.empty_like(x)
    chunk = max(1, (1 << (21 if data["filter"] == "nearest" else 19)) // (H * W))
    for s in range(0, n, chunk):
        part = x[s:s + chunk]
        if data["filter"] == "nearest":
            idx = data["maps"][s:s + chunk]
            flat = part.reshape(len(part), H * W, 3)
            got = flat.gather(1, idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, 3))
            out[s:s + chunk] = torch.where((idx >= 0).unsqueeze(-1), got, fill).reshape(part.shape)
        else:
            out[s:s + chunk] = _affine_smooth(part, data["mats"][s:s + chunk], fill, data["filter"])
    return out


def _affine_data(payloads, w: int, h: int) -> dict:
    filt = payloads[0][1]  # one recipe per batch: one filter
    if filt == "nearest":
        return {"filter": filt, "maps": torch.from_numpy(np.stack([_nearest_map(m, w, h) for m, _ in payloads]))}
    return {"filter": filt, "mats": torch.tensor([m for m, _ in payloads], dtype=torch.float64)}


# kernel group -> fn(x (n,H,W,3) uint8, its data on the device, ctx) -> new x
_KERNELS: dict[str, Callable] = {
    "lut": _k_lut, "equalize": _k_equalize, "autocontrast": _k_autocontrast,
    "brightness": _k_brightness, "color": _k_color, "contrast": _k_contrast, "sharpness": _k_sharpness,
    "affine": _k_affine, "rot90": _k_rot(1), "rot180": _k_rot(2), "rot270": _k_rot(3),
}

# kernel group -> fn(the group's per-sample payloads from _plan_op, w, h) -> its data, built on the
# host (in the worker) as tensors the DataLoader pins; a group not listed takes no data
_ALPHAS = lambda payloads, w, h: torch.from_numpy(np.asarray(payloads, np.float32))  # noqa: E731
_KERNEL_DATA: dict[str, Callable] = {
    "lut": lambda payloads, w, h: torch.from_numpy(np.stack(payloads).astype(np.int64)),
    "brightness": _ALPHAS, "color": _ALPHAS, "contrast": _ALPHAS, "sharpness": _ALPHAS, "affine": _affine_data,
}


def _pack_ops(op_lists: Sequence[Sequence[OpParams]], recipe: Recipe, w: int, h: int) -> list[dict]:
    """Op position by op position (ops apply in sequence per sample): at each position one step per
    kernel group, over the samples whose op there belongs to it, with the group's data."""
    steps = []
    for pos in range(max((len(o) for o in op_lists), default=0)):
        groups: dict[str, list[tuple[int, object]]] = {}
        for i, ops in enumerate(op_lists):
            if pos < len(ops):
                planned = _plan_op(ops[pos], recipe, w, h)
                if planned is not None:
                    groups.setdefault(planned[0], []).append((i, planned[1]))
        for kind, items in groups.items():
            make = _KERNEL_DATA.get(kind)
            steps.append({"kind": kind, "rows": torch.tensor([i for i, _ in items], dtype=torch.int64),
                          "data": make([p for _, p in items], w, h) if make else None})
    return steps


def _apply_ops(x: torch.Tensor, steps: list[dict], fill: torch.Tensor) -> torch.Tensor:
    ctx = {"fill": fill}
    for step in steps:
        x[step["rows"]] = _KERNELS[step["kind"]](x[step["rows"]], step["data"], ctx)
    return x
