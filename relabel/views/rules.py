"""Render rules: what changes a view's bytes between the Pillow versions relabel supports, as data.

One rule does: the order of a crop-resize's two passes. Pillow 10.x to 12.1 always resize
horizontally first (``classic``); 12.2 and 12.3 resize vertically first when the image is taller
than 100:1 and its height shrinks (``pillow-12.2``, python-pillow/Pillow#9524, in Python); 13.0
does when the height shrinks by more rows than twice the columns the width shrinks by
(``pillow-13``, #9549, in C). Both orders are exact integer passes with their own rounding, so the
order alone decides the bytes. Every RandAugment op, every interpolation's single pass and JPEG
decoding give the same bytes on 10.4, 11.3, 12.3 and 13.0 (tests/data/pillow_golden.npz holds
renders made with each).

A store records the rule its views were made with (``StoreHeader.resize_rule``); both renderers
render by it on any supported Pillow: the Pillow renderer calls ``Image.resize`` once where the
installed version's own order is the store's, and otherwise runs the two passes as two single-pass
``resize`` calls with boxes (each one pass on every version: the same bytes as a version whose
native order it is); the torch renderer takes the rule as a parameter of its plan.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import PIL
from PIL import Image

from relabel.errors import ConfigError, named
from relabel.storage.header import RESIZE_RULES, resize_rule_for_pillow

__all__ = ["RESIZE_RULES", "native_rule", "vertical_first", "rule_resize", "probe_native_rule", "check_rule",
           "resize_rule_for_pillow"]


def vertical_first(rule: str, in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Whether a resize of a whole ``in_w`` x ``in_h`` image to ``out_w`` x ``out_h`` (any box) runs
    its vertical pass first under ``rule``. The decision reads the image's size, never the box's."""
    if rule == "pillow-13":
        return in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)
    if rule == "pillow-12.2":
        return in_h > in_w * 100 and out_h < in_h
    if rule == "classic":
        return False
    raise ConfigError(f"unknown resize rule {rule!r}; this relabel knows {', '.join(RESIZE_RULES)}")


def rule_resize(img: Image.Image, size: tuple[int, int], resample, box, rule: str) -> Image.Image:
    """``img.resize(size, resample, box=box)`` as Pillow resizes under ``rule``, on any installed
    version: one native call where the installed order is the rule's for this image, else the two
    passes as two calls that each resize along one axis only (a single pass on every version)."""
    W, H = img.size
    want = vertical_first(rule, W, H, *size)
    native = probe_native_rule()
    if resample == Image.Resampling.NEAREST or (native is not None and want == vertical_first(native, W, H, *size)):
        return img.resize(size, resample, box=box)  # nearest is one affine map: no passes to order
    return _two_pass(img, size, resample, box, want)


def _two_pass(img: Image.Image, size, resample, box, vertical: bool) -> Image.Image:
    """The crop-resize as two single-axis calls, vertical or horizontal first."""
    out_w, out_h = size
    W, H = img.size
    x0, y0, x1, y1 = box
    if vertical:
        return img.resize((W, out_h), resample, box=(0, y0, W, y1)).resize(size, resample, box=(x0, 0, x1, out_h))
    return img.resize((out_w, H), resample, box=(x0, 0, x1, H)).resize(size, resample, box=(0, y0, out_w, y1))


def boundary_cases() -> list[tuple[Image.Image, tuple[int, int], tuple[float, float, float, float]]]:
    """Images and square resizes on each side of every rule's decision: (image, size, box). Used by
    the native-order probe, the drift check's patterns and the tests."""
    def pattern(w: int, h: int) -> Image.Image:
        y, x = np.mgrid[0:h, 0:w]
        arr = np.stack([(x * 37 + y * 11) % 256, (x * y + 3 * y) % 251, ((x - 2 * y) * 7) % 256], -1)
        return Image.fromarray(arr.astype(np.uint8), "RGB")

    return [
        (pattern(12, 48), (8, 8), (0.0, 0.0, 12.0, 48.0)),         # 13 vertical first; 12.2 and classic not
        (pattern(20, 33), (8, 8), (0.5, 0.25, 19.5, 33.0)),        # 13: 25 rows > 2 x 12 columns: vertical first
        (pattern(20, 32), (8, 8), (0.5, 0.25, 19.5, 32.0)),        # 13: 24 = 2 x 12, just not: horizontal first
        (pattern(2, 240), (8, 8), (0.0, 3.5, 2.0, 230.0)),         # taller than 100:1: 12.2 and 13 vertical first
        (pattern(3, 300), (8, 8), (0.25, 0.0, 3.0, 300.0)),        # exactly 100:1: 12.2 horizontal, 13 vertical
    ]


@lru_cache(maxsize=1)
def probe_native_rule() -> str | None:
    """The rule the installed Pillow resizes by, found by rendering (each boundary case natively
    against both two-call orders), or None when it matches no rule relabel knows."""
    for rule in RESIZE_RULES:
        ok = True
        for img, size, box in boundary_cases():
            for resample in (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC):
                native = np.asarray(img.resize(size, resample, box=box))
                W, H = img.size
                ref = np.asarray(_two_pass(img, size, resample, box, vertical_first(rule, W, H, *size)))
                ok &= bool(np.array_equal(native, ref))
        if ok:
            return rule
    return None


def native_rule() -> str:
    """The installed Pillow's own order: what new stores record (their views need no emulation)."""
    return probe_native_rule() or resize_rule_for_pillow(PIL.__version__)


def check_rule(rule: str) -> str:
    """A store's rule, if this relabel can render it on the installed Pillow; else one line."""
    if rule not in RESIZE_RULES:
        raise ConfigError(f"the store's views were resized by the rule {rule!r}, which this relabel does not know "
                          f"(it knows {', '.join(RESIZE_RULES)}); upgrade relabel")
    if probe_native_rule() is None:
        raise ConfigError(f"Pillow {PIL.__version__} resizes in an order relabel does not model (none of "
                          f"{', '.join(RESIZE_RULES)}); install a Pillow relabel supports (10.4 to 13.0) or report it "
                          f"({named('renderer', 'pillow')} cannot emulate it)")
    return rule
