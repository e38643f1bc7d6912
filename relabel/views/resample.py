"""Pillow's crop-resize, planned on the host for the torch renderer: Resample.c's fixed-point
coefficient tables (``precompute_coeffs`` + ``normalize_coeffs_8bpc``), the passes Pillow runs and
their order, Geometry.c's NEAREST index maps, and which input pixels a view reads (``support_box``).
Also the two roundings every torch kernel shares: clip8 and a correctly rounded division.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .params import ViewParams
from .recipe import Recipe

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


def _vertical_first(rule: str | None, in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Whether the vertical pass runs first under the store's resize rule (``views.rules``; None:
    the installed Pillow's). Both orders are exact integer passes, so the order is the only thing
    that changes bytes."""
    from .rules import native_rule, vertical_first

    return vertical_first(rule or native_rule(), in_w, in_h, out_w, out_h)


def _out_size(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize_plan(params: ViewParams, recipe: Recipe, width: int, height: int, size,
                 resize_rule: str | None = None) -> _Resize:
    """Follows ``Image.resize`` -> ``_resize`` (_imaging.c) -> ``ImagingResampleInner``, its two
    passes in the order ``resize_rule`` gives (None: the installed Pillow's)."""
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
                   _vertical_first(resize_rule, width, height, out_w, out_h))


def resize_plan(params: ViewParams, recipe: Recipe, width: int, height: int, size,
                resize_rule: str | None = None) -> _Resize:
    """How this view's crop-resize runs (coefficient tables, pass order under ``resize_rule``) and
    which pixels it reads (``.box``): computed once, in the worker, and handed to ``render_batch``."""
    return _resize_plan(params, recipe, width, height, size, resize_rule)


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
