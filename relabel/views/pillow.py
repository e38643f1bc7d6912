"""The Pillow renderer: decoded image + view parameters -> uint8 pixels, on the CPU.

This is the reference: stage one has always rendered with it, and the torch renderer
(``relabel.views.torch``) reproduces its bytes. It runs in DataLoader workers.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .randaug import apply_ops
from .params import MixParams, ViewParams, batch_mixes, erase_noise, mix_lambda, pixel_box
from .recipe import INTERPOLATIONS, Recipe
from .rules import rule_resize


def decode_image(data: bytes) -> Image.Image:
    """Bytes -> RGB PIL image; 16-bit and float modes are scaled, alpha dropped, CMYK converted."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img) * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.width < 1 or img.height < 1:
        raise ValueError("empty image")
    return img


def render_view(img: Image.Image, params: ViewParams, recipe: Recipe, size: int | tuple[int, int],
                erase_seed: tuple = (), resize_rule: str | None = None) -> np.ndarray:
    """Decoded image + parameters -> HxWx3 uint8 at ``size``; deterministic. ``resize_rule``: the
    pass order of the crop-resize (``views.rules``; None: the installed Pillow's own)."""
    out_w, out_h = (size, size) if isinstance(size, int) else size
    W, H = img.size
    top, left, h, w = params.crop
    box = (left * W, top * H, (left + w) * W, (top + h) * H)
    if resize_rule is None:
        x = img.resize((out_w, out_h), INTERPOLATIONS[recipe.interpolation], box=box)
    else:
        x = rule_resize(img, (out_w, out_h), INTERPOLATIONS[recipe.interpolation], box, resize_rule)
    if params.flip:
        x = x.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.ops:
        x = apply_ops(x, params.ops, fill=tuple(recipe.fill), resample=INTERPOLATIONS[recipe.interpolation],
                      magnitude_max=recipe.ra.magnitude_max)
    arr = np.asarray(x, dtype=np.uint8)
    if params.erase is not None:
        got = erase_noise(params.erase, out_w, out_h, erase_seed)
        if got is not None:
            (y0, x0, y1, x1), noise = got
            arr = arr.copy()
            arr[y0:y1, x0:x1] = noise
    return arr


def mix_pixels(a: np.ndarray, b: np.ndarray, mix: MixParams) -> tuple[np.ndarray, np.ndarray, float]:
    """Mix a pair both ways; returns (a mixed with b, b mixed with a, lambda of the own image).

    Integer arithmetic (lambda on a 1/256 grid) so both stages get identical bytes on any CPU.
    The returned lambda is the effective one (grid or cut-box pixels), for mixing ground truth.
    """
    H, W = a.shape[:2]
    if mix.kind == "mixup":
        wa = int(round(mix.lam * 256))
        a16, b16 = a.astype(np.uint16), b.astype(np.uint16)
        out_a = ((a16 * wa + b16 * (256 - wa) + 128) >> 8).astype(np.uint8)
        out_b = ((b16 * wa + a16 * (256 - wa) + 128) >> 8).astype(np.uint8)
        return out_a, out_b, wa / 256
    y0, x0, y1, x1 = pixel_box(mix.box, W, H)
    out_a, out_b = a.copy(), b.copy()
    out_a[y0:y1, x0:x1] = b[y0:y1, x0:x1]
    out_b[y0:y1, x0:x1] = a[y0:y1, x0:x1]
    return out_a, out_b, mix_lambda(mix, W, H)


def mix_batch(recipe: Recipe, seed: int, view: int, positions, pixels: list[np.ndarray],
              partners) -> tuple[list[np.ndarray], list[float], list[int]]:
    """Mix every pair whose both members are present; returns (pixels, own lambda, partner or -1).

    Both stages call this on the samples they hold (stage one: a mix group, stage two: a batch),
    so a view is mixed identically in both.
    """
    out = list(pixels)
    lam, other = [1.0] * len(out), [-1] * len(out)
    for i, j, mix in batch_mixes(recipe, seed, view, positions, partners):
        out[i], out[j], lam[i] = mix_pixels(pixels[i], pixels[j], mix)
        lam[j], other[i], other[j] = lam[i], int(positions[j]), int(positions[i])
    return out, lam, other
