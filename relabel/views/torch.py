"""The torch renderer: views rendered on any device, byte-identical to the Pillow renderer.

Why: rendering on the accelerator frees the CPU workers, which then only decode and ship the pixels
the crop reads (``support_box``). Both stages must still see the same bytes as the Pillow path, so
every step reproduces Pillow's own arithmetic, not a look-alike (sources: Pillow 13's
``libImaging/Resample.c``, ``Geometry.c``, ``Blend.c``, ``Filter.c``, ``Convert.c`` and
``Image.py`` / ``ImageOps.py`` / ``ImageEnhance.py``):

* crop-resize: Pillow's two-pass resampler. Coefficients are computed on the CPU in float64 as
  ``precompute_coeffs`` does and rounded to its 22-bit fixed point (small tables, stacked per
  batch); each pass is a batched float64 matmul over integers (exact on any device and in any
  reduction order: every product and partial sum is an integer below 2**53), then Pillow's
  shift-and-clip. Passes run in Pillow's order (13.0 may run the vertical one first) and are
  skipped when Pillow skips them; NEAREST and integer crops take Pillow's shortcuts.
* batches: a worker packs a batch (``pack_batch``) into a few tensors the DataLoader pins; the
  device renders it (``render_packed``) in a number of ops set by the groups of views that share
  their resize passes and sizes, not by the views.
* point ops (Invert, Posterize, Solarize*, Equalize, AutoContrast): per-sample LUTs; the
  histogram ones are built on the device with integer arithmetic (float64 where Python uses it).
* enhance ops: ``Image.blend``'s float32 ``a + alpha * (b - a)`` against Pillow's degenerate
  image (fixed-point L for Color, the rounded L mean for Contrast, the SMOOTH filter for Sharpness).
* geometric ops: ``Image.rotate``'s matrix (built in Python as Pillow builds it, with its
  0/90/180/270 shortcuts), then Geometry.c's bilinear/bicubic in float64 (columns clamped, rows
  repeated, fill outside) or its nearest paths (scale, 16.16 fixed point, float) as index maps.

Every rounding step is its own eager torch op (no fused multiply-add, no reduction whose order
matters, divisions tensor by tensor: torch computes ``scalar / tensor`` through a reciprocal), so
the bytes do not depend on the device. Parameters stay on the CPU (``view_params``); so does the
erase noise, generated as render_view generates it and uploaded with the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import PIL
import torch

from relabel.storage.errors import ConfigError, named

from ..randaug import OpParams, op_argument
from .params import MixParams, ViewParams, batch_mixes, erase_noise, mix_lambda, pixel_box
from .recipe import GEOMETRIC_OPS, Recipe

__all__ = ["support_box", "render_batch", "pack_batch", "render_packed", "crop_region", "check_recipe", "mix_pair_torch", "mix_pairs_torch",
           "mix_batch_torch", "GEOMETRIC_OPS"]

# ------------------------------------------------------------------------------- resampling filters
_PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2
_HALF = float(1 << (_PRECISION_BITS - 1))
_ONE = float(1 << _PRECISION_BITS)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Resample.c ``bicubic_filter`` (a = -0.5), same operation order."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: np.ndarray) -> np.ndarray:
    """Per element with ``math.sin``: the C library's sin, as Pillow calls it (numpy's SIMD sin
    may differ in the last bit)."""
    flat = [_sinc(v) * _sinc(v / 3) if -3.0 <= v < 3.0 else 0.0 for v in x.ravel().tolist()]
    return np.asarray(flat, dtype=np.float64).reshape(x.shape)


# interpolation -> (support, filter) for Image.resize; "nearest" resizes via an affine map instead
_FILTERS: dict[str, tuple[float, Callable[[np.ndarray], np.ndarray]]] = {
    "bicubic": (2.0, _bicubic), "bilinear": (1.0, _bilinear), "lanczos": (3.0, _lanczos),
}
_AFFINE_FILTERS = ("nearest", "bilinear", "bicubic")  # what Image.transform accepts


@dataclass(frozen=True)
class _Coeffs:
    """One axis of a resize: output pixel o reads ``count[o]`` inputs from ``first[o]``."""
    first: np.ndarray  # int64 [out]
    count: np.ndarray  # int64 [out]
    k: np.ndarray      # int64 [out, ksize], Pillow's fixed-point coefficients

    @property
    def span(self) -> tuple[int, int]:
        return int(self.first.min()), int((self.first + self.count).max())


def _coeffs(in_size: int, in0: np.float32, in1: np.float32, out_size: int, interp: str) -> _Coeffs:
    """``precompute_coeffs`` + ``normalize_coeffs_8bpc``; ``in0``/``in1`` are C floats there."""
    base_support, fn = _FILTERS[interp]
    scale = float(in1 - in0) / out_size  # float32 subtraction, then double, as in C
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    inv = 1.0 / filterscale
    center = float(in0) + (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    last = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    count = np.maximum(last - first, 0)
    j = np.arange(ksize)
    w = fn(((first[:, None] + j[None, :]).astype(np.float64) - center[:, None] + 0.5) * inv)
    w = np.where(j[None, :] < count[:, None], w, 0.0)
    ww = np.add.accumulate(w, axis=1)[:, -1]  # accumulate is sequential, like the C loop
    w = np.where((ww != 0.0)[:, None], w / np.where(ww != 0.0, ww, 1.0)[:, None], w)
    k = np.where(w < 0, np.trunc(-0.5 + w * _ONE), np.trunc(0.5 + w * _ONE)).astype(np.int64)
    return _Coeffs(first, count, k)


def _coord(v: np.ndarray) -> np.ndarray:
    """Geometry.c ``COORD``: -1 below zero, else truncation."""
    return np.where(v < 0.0, -1, np.trunc(np.where(v < 0.0, 0.0, v))).astype(np.int64)


def _accumulate(start: float, step: float, n: int) -> np.ndarray:
    """start, start + step, ... summed one step at a time, as the C loops do."""
    return np.add.accumulate(np.concatenate([[start], np.full(max(n - 1, 0), step)]))[:n]


def _inside(idx: np.ndarray, size: int) -> np.ndarray:
    return np.where((idx >= 0) & (idx < size), idx, -1)


# ------------------------------------------------------------------------------------ resize plan
@dataclass(frozen=True)
class _Resize:
    """How one view's crop-resize runs, and which input pixels it reads (``box``: x0, y0, x1, y1)."""
    kind: str  # "crop" | "nearest" | "resample"
    box: tuple[int, int, int, int]
    horiz: _Coeffs | None = None  # None: Pillow skips the pass
    vert: _Coeffs | None = None
    vertical_first: bool = False
    xs: np.ndarray | None = None  # nearest: source column per output column, -1 outside
    ys: np.ndarray | None = None


_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def _vertical_first(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Pillow >= 13 (python-pillow/Pillow#9549) runs the vertical pass first when the height
    shrinks by more rows than twice the columns the width shrinks by (read from the installed
    13.0.0 binary: the box does not enter); older Pillow always runs the horizontal pass first.
    Both orders are exact integer passes, so the order is the only thing that changes bytes."""
    return _PILLOW_MAJOR >= 13 and in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)


def _out_size(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize_plan(params: ViewParams, recipe: Recipe, width: int, height: int, size) -> _Resize:
    """Follows ``Image.resize`` -> ``_resize`` (_imaging.c) -> ``ImagingResampleInner``."""
    out_w, out_h = _out_size(size)
    top, left, h, w = params.crop
    b0, b1, b2, b3 = (np.float32(v) for v in (left * width, top * height, (left + w) * width, (top + h) * height))
    if b0 < 0 or b1 < 0:
        raise ValueError("box offset can't be negative")
    if b2 > width or b3 > height:
        raise ValueError("box can't exceed original image size")
    if b2 - b0 < 0 or b3 - b1 < 0:
        raise ValueError("box can't be empty")
    # Image.resize's copy shortcut (same size, whole image) is this crop's special case.
    if b0 - np.float32(int(b0)) == 0 and b2 - b0 == out_w and b1 - np.float32(int(b1)) == 0 and b3 - b1 == out_h:
        x0, y0 = int(b0), int(b1)
        return _Resize("crop", (x0, y0, x0 + out_w, y0 + out_h))
    if recipe.interpolation == "nearest":  # an affine transform with Geometry.c's scale path, fill 0
        xs = _inside(_coord(_accumulate(float(b0) + float(b2 - b0) / out_w * 0.5, float(b2 - b0) / out_w, out_w)), width)
        ys = _inside(_coord(_accumulate(float(b1) + float(b3 - b1) / out_h * 0.5, float(b3 - b1) / out_h, out_h)), height)
        vx, vy = xs[xs >= 0], ys[ys >= 0]
        if len(vx) and len(vy):
            box = (int(vx.min()), int(vy.min()), int(vx.max()) + 1, int(vy.max()) + 1)
        else:
            box = (0, 0, 0, 0)
        return _Resize("nearest", box, xs=xs, ys=ys)
    vert = _coeffs(height, b1, b3, out_h, recipe.interpolation)
    need_h = out_w != width or b0 != 0 or b2 != out_w
    need_v = out_h != height or b1 != 0 or b3 != out_h
    y0, y1 = int(vert.first[0]), int(vert.first[-1] + vert.count[-1])  # rows the first pass keeps
    horiz = _coeffs(width, b0, b2, out_w, recipe.interpolation) if need_h else None
    x0, x1 = horiz.span if horiz is not None else (0, width)
    if not need_v and (y0, y1) != (0, height):
        raise AssertionError("Pillow keeps every row when it skips the vertical pass")
    return _Resize("resample", (x0, y0, x1, y1), horiz, vert if need_v else None,
                   _vertical_first(width, height, out_w, out_h))


def resize_plan(params: ViewParams, recipe: Recipe, width: int, height: int, size) -> _Resize:
    """How this view's crop-resize runs (coefficient tables, pass order) and which pixels it reads
    (``.box``): computed once, in the worker, and handed to ``render_batch``."""
    return _resize_plan(params, recipe, width, height, size)


def support_box(params: ViewParams, recipe: Recipe, width: int, height: int, size) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the pixels of the decoded ``width`` x ``height`` image that this view's
    crop-resize reads (crop box plus the filter's support, as Pillow computes it, clamped to the
    image). A worker ships only this region; ``render_batch`` takes it with offset (x0, y0).
    Raises ValueError for a crop box Pillow refuses (outside the image)."""
    return _resize_plan(params, recipe, width, height, size).box


def crop_region(img, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The uint8 HxWx3 tensor of ``img`` (PIL RGB image or HxWx3 array) inside ``box``."""
    x0, y0, x1, y1 = box
    arr = np.asarray(img.crop(box) if hasattr(img, "crop") else np.asarray(img)[y0:y1, x0:x1], dtype=np.uint8)
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))


def _true_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Correctly rounded a / b, as C and Python divide. Both operands are same-shaped tensors on
    one device: torch turns ``scalar / tensor`` into ``reciprocal() * scalar``, and CUDA divides
    by a CPU scalar through its reciprocal; either can be one ulp off."""
    return torch.div(a, b)


def _fixed_to_u8(s: torch.Tensor) -> torch.Tensor:
    """``clip8``, in place on a float64 sum: add the rounding half, arithmetic shift by 22 bits
    (an exact power-of-two scaling, then floor), clip to 0..255."""
    return s.add_(_HALF).mul_(1.0 / _ONE).floor_().clamp_(0, 255)


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


def _gather(flat: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, width: int) -> torch.Tensor:
    """flat (n, H*W, 3) float64; rows/cols (n, H, W) -> (n, H, W, 3)."""
    n, H, W = rows.shape
    idx = (rows * width + cols).reshape(n, H * W, 1).expand(n, H * W, 3)
    return flat.gather(1, idx).reshape(n, H, W, 3)


def _affine_smooth(x: torch.Tensor, mats: torch.Tensor, fill: torch.Tensor, filt: str) -> torch.Tensor:
    """``ImagingGenericTransform`` + ``affine_transform`` + bilinear/bicubic_filter32RGB."""
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
    xi = xf.clamp(-8, W + 8).long()  # outside points are filled below; keep their indices sane
    yi = yf.clamp(-8, H + 8).long()
    flat = x.to(torch.float64).reshape(n, H * W, 3)
    if filt == "bicubic":
        cols = [(xi - 1 + k).clamp(0, W - 1) for k in range(4)]
        lines = []
        for j in range(4):  # a missing row repeats the previous one: the same as clamping it
            r = (yi - 1 + j).clamp(0, H - 1)
            lines.append(_cubic(*(_gather(flat, r, c, W) for c in cols), dx))
        v = _cubic(*lines, dy)
        v = torch.where(v <= 0.0, 0.0, torch.where(v >= 255.0, 255.0, torch.trunc(v)))
    else:
        c0, c1 = xi.clamp(0, W - 1), (xi + 1).clamp(0, W - 1)
        lines = []
        for r in (yi.clamp(0, H - 1), (yi + 1).clamp(0, H - 1)):
            left, right = _gather(flat, r, c0, W), _gather(flat, r, c1, W)
            lines.append(left + (right - left) * dx)
        v = torch.trunc(lines[0] + (lines[1] - lines[0]) * dy).clamp(0, 255)
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
    index maps (n, H*W) or the matrices (n, 6); run in chunks that bound the float64 temporaries."""
    n, H, W, _ = x.shape
    fill = ctx["fill"]
    out = torch.empty_like(x)
    chunk = max(1, (1 << 21) // (H * W))
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


# ------------------------------------------------------------------------------------ the packed batch
# A batch travels as one host record (built in a DataLoader worker, so the loader pins its tensors)
# and renders on the device in a number of torch ops that grows with the groups of views, not with
# the views: regions as one flat uint8 tensor, the views grouped by the resize passes they run and
# chunked to bound padding, coefficient tables and erase noise stacked. Padding is exact: a padded
# pixel is 0 and meets only 0 coefficients.
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


def _tables(coeffs: list[_Coeffs], starts: list[int]) -> torch.Tensor:
    """(2, G, out, K) int64: each view's taps as (column from its box's start, fixed-point weight),
    unused taps (0, 0); K is the chunk's widest filter."""
    K = max(c.k.shape[1] for c in coeffs)
    out = np.zeros((2, len(coeffs), len(coeffs[0].first), K), np.int64)
    j = np.arange(K)
    for g, (c, start) in enumerate(zip(coeffs, starts)):
        used = j[None, :] < c.count[:, None]
        k = np.zeros((len(c.first), K), np.int64)
        k[:, :c.k.shape[1]] = c.k
        out[0, g] = np.where(used, c.first[:, None] + j[None, :] - start, 0)
        out[1, g] = np.where(used, k, 0)
    return torch.from_numpy(out)


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
            chunks.append({
                "rows": torch.tensor(rows, dtype=torch.int64), "meta": torch.tensor(meta, dtype=torch.int64),
                "hw": (max(dims[i][0] for i in rows), max(dims[i][1] for i in rows)), "passes": passes,
                "h": _tables([plans[i].horiz for i in rows], [plans[i].box[0] for i in rows]) if "h" in passes else None,
                "v": _tables([plans[i].vert for i in rows], [plans[i].box[1] for i in rows]) if "v" in passes else None})
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


def _padded(pixels: torch.Tensor, meta: torch.Tensor, hm: int, wm: int) -> torch.Tensor:
    """(G, hm, wm, 3) uint8: each view's box, from its region in the byte buffer (``pixels``: its
    (P, 3) view), zero-padded."""
    base, rw, dx, dy, bw, bh = (c.view(-1, 1, 1) for c in meta.unbind(1))
    y = torch.arange(hm, device=pixels.device).view(1, hm, 1)
    x = torch.arange(wm, device=pixels.device).view(1, 1, wm)
    valid = (y < bh) & (x < bw)
    at = ((y + dy) * rw + x + dx).add_(base // 3).mul_(valid)
    return pixels[at].mul_(valid.unsqueeze(-1))


def _matrices(tables: torch.Tensor, length: int) -> torch.Tensor:
    """(G, out, length) float64 from ``_tables``' taps; exact: a cell gets one integer plus zeros."""
    cols, vals = tables[0], tables[1]
    m = torch.zeros((*cols.shape[:2], length), dtype=torch.float64, device=cols.device)
    return m.scatter_add_(2, cols, vals.to(torch.float64))


def _resize_chunk(pixels: torch.Tensor, chunk: dict) -> torch.Tensor:
    """One chunk's crop-resizes, (G, out_h, out_w, 3) uint8: Pillow's passes as batched float64
    matmuls over integers, each followed by clip8. Between passes the pixels stay uint8 (they are
    0..255 integers), so a pass rearranges bytes, not float64s."""
    t = _padded(pixels, chunk["meta"], *chunk["hw"])
    for p in chunk["passes"]:  # none: an integer crop, every box out_h x out_w
        G, H, W, _ = t.shape
        if p == "h":
            k = _matrices(chunk["h"], W)  # (G, out_w, W)
            x = t.permute(0, 1, 3, 2).reshape(G, H * 3, W).to(torch.float64)
            y = _fixed_to_u8(torch.bmm(x, k.transpose(1, 2)))
            t = y.to(torch.uint8).reshape(G, H, 3, k.shape[1]).permute(0, 1, 3, 2)
        else:
            k = _matrices(chunk["v"], H)  # (G, out_h, H)
            y = _fixed_to_u8(torch.bmm(k, t.reshape(G, H, W * 3).to(torch.float64)))
            t = y.to(torch.uint8).reshape(G, k.shape[1], W, 3)
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


def render_packed(packed: dict, recipe: Recipe, device) -> torch.Tensor:
    """Device side of ``render_batch``: ``pack_batch``'s record -> (N, H, W, 3) uint8 on ``device``,
    mixed. Two non-blocking uploads (from pinned memory, as the DataLoader hands a batch over)."""
    device = torch.device(device)
    flat = packed["bytes"].to(device, non_blocking=True)
    rec = _expand(packed, flat, packed["words"].to(device, non_blocking=True))
    pixels = flat.view(-1, 3)  # whole RGB pixels: every part of the byte buffer is
    out_w, out_h = rec["size"]
    x = torch.empty((rec["n"], out_h, out_w, 3), dtype=torch.uint8, device=device)
    for chunk in rec["chunks"]:
        x[chunk["rows"]] = _resize_chunk(pixels, chunk)
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


def render_batch(regions: list[torch.Tensor], offsets: list[tuple[int, int]], full_sizes: list[tuple[int, int]],
                 params: list[ViewParams], recipe: Recipe, size, erase_seeds: list[tuple],
                 device, plans: list | None = None, erases: list | None = None) -> torch.Tensor:
    """Views -> (N, H, W, 3) uint8 on ``device``, equal byte for byte to stacking
    ``render_view(img_i, params[i], recipe, size, erase_seed=erase_seeds[i])``.

    ``regions[i]``: uint8 HxWx3 pixels of the decoded image holding ``support_box`` (or the whole
    image), at ``offsets[i]`` = (x0, y0) in the image of ``full_sizes[i]`` = (width, height); host
    arrays or tensors (a region on a GPU is copied back to be packed).
    Raises ValueError where Pillow would (e.g. a geometric op under Lanczos: see check_recipe).
    ``plans`` (``resize_plan`` per view) and ``erases`` (``erase_noise`` per view, None: no erase):
    what a worker already computed. The same as ``render_packed(pack_batch(...))``: the torch
    renderer packs in its workers and renders the packed batch on the device.
    """
    n = len(params)
    if not (len(regions) == len(offsets) == len(full_sizes) == len(erase_seeds) == n):
        raise ValueError("render_batch: regions, offsets, full_sizes, params and erase_seeds differ in length")
    out_w, out_h = _out_size(size)
    if plans is None:
        plans = [_resize_plan(p, recipe, *fs, (out_w, out_h)) for p, fs in zip(params, full_sizes)]
    if erases is None:
        erases = [None if p.erase is None else erase_noise(p.erase, out_w, out_h, tuple(s))
                  for p, s in zip(params, erase_seeds)]
    return render_packed(pack_batch(regions, offsets, plans, params, erases, (out_w, out_h), recipe), recipe, device)


def check_recipe(recipe: Recipe) -> None:
    """Raise ConfigError for a recipe whose views the torch renderer (like Pillow) cannot render."""
    if recipe.interpolation not in _FILTERS and recipe.interpolation != "nearest":
        raise ConfigError(f"recipe {recipe.name}: interpolation {recipe.interpolation!r} has no torch renderer; "
                          f"use one of nearest, bilinear, bicubic, lanczos")
    ra = recipe.ra
    if not ra or not ra.num_ops:
        return
    unknown = sorted(set(ra.ops) - set(_OP_KERNEL))
    if unknown:
        raise ConfigError(f"recipe {recipe.name}: RandAugment op(s) {', '.join(unknown)} have no torch kernel; "
                          f"drop them from the op list or render with Pillow")
    geometric = sorted(set(ra.ops) & GEOMETRIC_OPS)
    if geometric and recipe.interpolation not in _AFFINE_FILTERS:
        raise ConfigError(f"recipe {recipe.name}: {named('interpolation', recipe.interpolation)} cannot resample "
                          f"the geometric RandAugment ops ({', '.join(geometric)}; Pillow's transform has no "
                          f"{recipe.interpolation} filter); use `interpolation='bicubic'` or drop those ops")


# ------------------------------------------------------------------------------------ mixing
def _mix_boxes(mix: MixParams, W: int, H: int):
    y0, x0, y1, x1 = pixel_box(mix.box, W, H)
    return y0, x0, y1, x1, mix_lambda(mix, W, H)


def mix_pair_torch(a: torch.Tensor, b: torch.Tensor, mix: MixParams) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``views.mix_pixels`` on (H, W, 3) uint8 tensors: same integer arithmetic, same bytes."""
    out, lam = mix_pairs_torch(torch.stack([a, b]), [(0, 1, mix)])
    return out[0], out[1], lam[0]


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


def mix_pairs_torch(pixels: torch.Tensor, pairs: Sequence[tuple[int, int, MixParams]]) -> tuple[torch.Tensor, list[float]]:
    """Mix rows i and j of ``pixels`` (N, H, W, 3) both ways for each (i, j, mix); every row in at
    most one pair. Returns (pixels, own lambda per row)."""
    H, W = pixels.shape[1:3]
    mix, own = _pack_mixes(pairs, W, H)
    lam = [own.get(i, 1.0) for i in range(pixels.shape[0])]
    return (pixels.clone() if mix is None else _mix_packed(pixels, _upload(mix, pixels.device))), lam


def mix_batch_torch(recipe: Recipe, seed: int, view: int, positions, pixels: torch.Tensor,
                    partners) -> tuple[torch.Tensor, list[float], list[int]]:
    """``views.mix_batch`` for a (N, H, W, 3) tensor: returns (pixels, own lambda, partner or -1)."""
    pairs = batch_mixes(recipe, seed, view, positions, partners)
    other = [-1] * len(positions)
    for i, j, _ in pairs:
        other[i], other[j] = int(positions[j]), int(positions[i])
    out, lam = mix_pairs_torch(pixels, pairs)
    return out, lam, other
