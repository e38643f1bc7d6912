"""The torch renderer: views rendered on any device, byte-identical to the Pillow renderer.

Why: rendering on the accelerator frees the CPU workers, which then only decode and ship the pixels
the crop reads (``support_box``). Both stages must still see the same bytes as the Pillow path, so
every step reproduces Pillow's own arithmetic, not a look-alike (sources: Pillow 13's
``libImaging/Resample.c``, ``Geometry.c``, ``Blend.c``, ``Filter.c``, ``Convert.c`` and
``Image.py`` / ``ImageOps.py`` / ``ImageEnhance.py``):

* crop-resize: Pillow's two-pass resampler. Coefficients are computed on the CPU in float64 as
  ``precompute_coeffs`` does and rounded to its 22-bit fixed point (small tables, stacked per
  batch); each pass runs one of two byte-identical kernels (``kernels``), picked per device by
  timing: a batched float64 matmul over integers (exact on any device and in any reduction order:
  every product and partial sum is an integer below 2**53), or Pillow's own loop of int32
  multiply-adds over each output's taps; then Pillow's shift-and-clip. Passes run in Pillow's
  order (13.0 may run the vertical one first) and are skipped when Pillow skips them; NEAREST and
  integer crops take Pillow's shortcuts.
* batches: a worker packs a batch (``pack_batch``) into a few tensors the DataLoader pins; the
  device renders it (``render_packed``) in a number of ops set by the groups of views that share
  their resize passes and sizes, not by the views.
* point ops (Invert, Posterize, Solarize*, Equalize, AutoContrast): per-sample LUTs; the
  histogram ones are built on the device with integer arithmetic (float64 where Python uses it).
* enhance ops: ``Image.blend``'s float32 ``a + alpha * (b - a)`` against Pillow's degenerate
  image (fixed-point L for Color, the rounded L mean for Contrast, the SMOOTH filter for Sharpness).
* geometric ops: ``Image.rotate``'s matrix (built in Python as Pillow builds it, with its
  0/90/180/270 shortcuts), then Geometry.c's bilinear/bicubic in float64 (columns clamped, rows
  repeated, fill outside; the steps C does in int on the pixels stay integers, gathered as bytes)
  or its nearest paths (scale, 16.16 fixed point, float) as index maps.

Every rounding step is its own eager torch op (no fused multiply-add, no reduction whose order
matters, divisions tensor by tensor: torch computes ``scalar / tensor`` through a reciprocal), so
the bytes do not depend on the device. Parameters stay on the CPU (``view_params``); so does the
erase noise, generated as render_view generates it and uploaded with the batch.

This module is the public face; the work lives in ``resample`` (the crop-resize planned on the
host), ``ops_torch`` (RandAugment's kernels) and ``packed`` (a batch packed in the worker and
rendered on the device).
"""
from __future__ import annotations

from typing import Sequence

import torch

from relabel.storage.errors import ConfigError, named

from .kernels import RENDER_KERNELS, KernelPicker
from .ops_torch import _OP_KERNEL
from .packed import _mix_packed, _pack_mixes, _upload, pack_batch, render_packed
from .params import MixParams, ViewParams, batch_mixes, erase_noise
from .recipe import GEOMETRIC_OPS, Recipe
from .resample import _AFFINE_FILTERS, _FILTERS, _out_size, _resize_plan, crop_region, resize_plan, support_box

__all__ = ["support_box", "resize_plan", "render_batch", "pack_batch", "render_packed", "crop_region", "check_recipe",
           "KernelPicker", "RENDER_KERNELS",
           "mix_pair_torch", "mix_pairs_torch", "mix_batch_torch", "GEOMETRIC_OPS"]


def render_batch(regions: list[torch.Tensor], offsets: list[tuple[int, int]], full_sizes: list[tuple[int, int]],
                 params: list[ViewParams], recipe: Recipe, size, erase_seeds: list[tuple],
                 device, plans: list | None = None, erases: list | None = None,
                 kernel: str | KernelPicker = "auto", resize_rule: str | None = None) -> torch.Tensor:
    """Views -> (N, H, W, 3) uint8 on ``device``, equal byte for byte to stacking
    ``render_view(img_i, params[i], recipe, size, erase_seed=erase_seeds[i])``.

    ``regions[i]``: uint8 HxWx3 pixels of the decoded image holding ``support_box`` (or the whole
    image), at ``offsets[i]`` = (x0, y0) in the image of ``full_sizes[i]`` = (width, height); host
    arrays or tensors (a region on a GPU is copied back to be packed).
    Raises ValueError where Pillow would (e.g. a geometric op under Lanczos: see check_recipe).
    ``plans`` (``resize_plan`` per view) and ``erases`` (``erase_noise`` per view, None: no erase):
    what a worker already computed. The same as ``render_packed(pack_batch(...))``: the torch
    renderer packs in its workers and renders the packed batch on the device. ``kernel``: the
    resize kernel (``render_packed``'s; the bytes are the same with each). ``resize_rule``: the
    crop-resize's pass order (``views.rules``; None: the installed Pillow's).
    """
    n = len(params)
    if not (len(regions) == len(offsets) == len(full_sizes) == len(erase_seeds) == n):
        raise ValueError("render_batch: regions, offsets, full_sizes, params and erase_seeds differ in length")
    out_w, out_h = _out_size(size)
    if plans is None:
        plans = [_resize_plan(p, recipe, *fs, (out_w, out_h), resize_rule) for p, fs in zip(params, full_sizes)]
    if erases is None:
        erases = [None if p.erase is None else erase_noise(p.erase, out_w, out_h, tuple(s))
                  for p, s in zip(params, erase_seeds)]
    return render_packed(pack_batch(regions, offsets, plans, params, erases, (out_w, out_h), recipe), recipe, device,
                         kernel)


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
def mix_pair_torch(a: torch.Tensor, b: torch.Tensor, mix: MixParams) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``views.mix_pixels`` on (H, W, 3) uint8 tensors: same integer arithmetic, same bytes."""
    out, lam = mix_pairs_torch(torch.stack([a, b]), [(0, 1, mix)])
    return out[0], out[1], lam[0]


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
