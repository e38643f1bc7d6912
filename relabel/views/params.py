"""View parameters: pure functions of (recipe, seed, key, view, image size), on the CPU.

Everything random about a view is drawn here from counter-based streams (never global RNG state),
so any process reproduces it: the crop, flip, RandAugment ops and erase box (``view_params``), the
erase noise (``erase_noise``), the mix pairs of a view (``group_partners``) and each pair's mixing
(``mix_params``, ``batch_mixes``). Renderers (Pillow, torch) only turn parameters into pixels.

Mixing never decodes a second image: samples are paired inside fixed groups of ``mix_group``
consecutive store positions (the store order is a seeded shuffle, so a group is a random draw of the
dataset), a fresh matching per view. Stage one decodes a group once and mixes both ways; stage two
keeps each pair in one batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from relabel.errors import ConfigError, named
from relabel.settings import MAX_SEED, check_number
from relabel.storage.order import store_order  # noqa: F401  (the store order is part of the view contract)

from .randaug import OpParams, sample_ops
from ..rng import CounterRNG, derive_key
from .recipe import Recipe

Box = tuple[float, float, float, float]  # top, left, height, width as fractions of the image


@dataclass(frozen=True)
class ViewParams:
    crop: Box
    flip: bool
    ops: tuple[OpParams, ...] = ()
    erase: Box | None = None


@dataclass(frozen=True)
class MixParams:
    kind: str  # "mixup" | "cutmix"
    lam: float
    box: Box | None = None  # cutmix: region of the output that comes from the partner


def _crop_box(rng: CounterRNG, recipe: Recipe, width: int, height: int) -> Box:
    """RandomResizedCrop's sampling (torchvision/timm semantics), returned as fractions."""
    area = width * height
    log_lo, log_hi = math.log(recipe.ratio[0]), math.log(recipe.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*recipe.scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = rng.randint(height - h + 1)
            j = rng.randint(width - w + 1)
            return (i / height, j / width, h / height, w / width)
    in_ratio = width / height
    if in_ratio < recipe.ratio[0]:
        w, h = width, int(round(width / recipe.ratio[0]))
    elif in_ratio > recipe.ratio[1]:
        h, w = height, int(round(height * recipe.ratio[1]))
    else:
        w, h = width, height
    return ((height - h) // 2 / height, (width - w) // 2 / width, h / height, w / width)


def _erase_box(rng: CounterRNG, recipe: Recipe) -> Box | None:
    """RandomErasing's box sampling (timm semantics) on the unit square."""
    lo, hi = math.log(recipe.erase_ratio[0]), math.log(recipe.erase_ratio[1])
    for _ in range(10):
        target = rng.uniform(*recipe.erase_area)
        aspect = math.exp(rng.uniform(lo, hi))
        h, w = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if h < 1 and w < 1:
            return (rng.uniform(0, 1 - h), rng.uniform(0, 1 - w), h, w)
    return None


def _checked_view(seed, view, size) -> tuple[int, int, tuple[int, int]]:
    """``view_params``'s arguments as Python ints, or a ConfigError naming the bad one."""
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ConfigError(f"{named('size')} must be the image's (width, height) (got {size!r})")
    size = tuple(check_number("size", v, int, ge=1) for v in size)
    return check_number("seed", seed, int, ge=0, le=MAX_SEED), check_number("view", view, int, ge=0), size


def view_params(recipe: Recipe, seed: int, key: str, view: int, size: tuple[int, int]) -> ViewParams:
    """Parameters of one view of one sample; ``size`` is the decoded image's (width, height)."""
    if not (type(seed) is int and type(view) is int and 0 <= seed <= MAX_SEED and view >= 0 and type(size) is tuple
            and len(size) == 2 and type(size[0]) is int and type(size[1]) is int and size[0] >= 1 and size[1] >= 1):
        seed, view, size = _checked_view(seed, view, size)  # the fast test above passes every well-formed call
    rng = CounterRNG("view", recipe.digest, seed, key, view)
    crop = _crop_box(rng, recipe, *size)
    flip = rng.random() < recipe.hflip
    ops = sample_ops(recipe.ra, rng) if recipe.randaugment else ()
    erase = None
    if recipe.erase_prob > 0 and rng.random() < recipe.erase_prob:
        erase = _erase_box(rng, recipe)
    return ViewParams(crop=crop, flip=flip, ops=ops, erase=erase)


def group_partners(recipe: Recipe, seed: int, view: int, g0: int, n: int) -> np.ndarray:
    """Partners of store positions [g0, g0 + n) (one mix group) under this view; -1: unpaired."""
    partner = np.full(n, -1, dtype=np.int64)
    if not recipe.mixes:
        return partner
    perm = np.asarray(CounterRNG("pairs", recipe.digest, seed, view, g0).permutation(n), np.int64)
    a, b = perm[0:n - 1:2], perm[1:n:2]
    partner[a], partner[b] = b + g0, a + g0
    return partner


def pairs_for_view(recipe: Recipe, seed: int, view: int, num_samples: int) -> np.ndarray:
    """partner[p] for every store position p under this view (-1: unpaired, never mixed)."""
    G = recipe.mix_group
    return np.concatenate([group_partners(recipe, seed, view, g0, min(G, num_samples - g0))
                           for g0 in range(0, num_samples, G)])


def mix_params(recipe: Recipe, seed: int, view: int, first: int) -> MixParams | None:
    """The pair's mixing; ``first`` is the lower store position of the pair."""
    rng = CounterRNG("mix", recipe.digest, seed, view, first)
    fire, switch = rng.random(), rng.random()
    if not recipe.mixes or fire >= recipe.mix_prob:
        return None
    use_cutmix = recipe.cutmix_alpha > 0 and (recipe.mixup_alpha <= 0 or switch < recipe.switch_prob)
    if use_cutmix:
        lam = rng.beta(recipe.cutmix_alpha, recipe.cutmix_alpha)
        cut = math.sqrt(1.0 - lam)
        cy, cx = rng.random(), rng.random()
        top, bottom = min(max(cy - cut / 2, 0.0), 1.0), min(max(cy + cut / 2, 0.0), 1.0)
        left, right = min(max(cx - cut / 2, 0.0), 1.0), min(max(cx + cut / 2, 0.0), 1.0)
        return MixParams("cutmix", lam, (top, left, bottom - top, right - left))
    return MixParams("mixup", rng.beta(recipe.mixup_alpha, recipe.mixup_alpha))




def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A fractional box (top, left, height, width) as whole pixels (y0, x0, y1, x1) of a W x H image."""
    top, left, h, w = box
    y0, x0 = int(round(top * height)), int(round(left * width))
    y1, x1 = int(round((top + h) * height)), int(round((left + w) * width))
    return y0, x0, max(y1, y0), max(x1, x0)


def erase_noise(erase: Box, out_w: int, out_h: int, erase_seed: tuple) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The erase box in pixels and its uint8 noise (h, w, 3), from a Philox stream keyed by the view;
    None when the box rounds to nothing."""
    y0, x0, y1, x1 = pixel_box(erase, out_w, out_h)
    if not (y1 > y0 and x1 > x0):
        return None
    gen = np.random.Philox(key=derive_key("erase", *erase_seed, erase))
    n = (y1 - y0) * (x1 - x0) * 3
    noise = gen.random_raw((n + 7) // 8).view(np.uint8)[:n]
    return (y0, x0, y1, x1), noise.reshape(y1 - y0, x1 - x0, 3)


def mix_lambda(mix: MixParams, width: int, height: int) -> float:
    """The effective lambda of the own image: mixup's on a 1/256 grid, cutmix's from the box's pixels."""
    if mix.kind == "mixup":
        return int(round(mix.lam * 256)) / 256
    y0, x0, y1, x1 = pixel_box(mix.box, width, height)
    return 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def batch_mixes(recipe: Recipe, seed: int, view: int, positions, partners) -> list[tuple[int, int, MixParams]]:
    """The pairs to mix among samples held together (stage one: a mix group, stage two: a batch):
    (i, j, mix) for every pair whose both members are present and whose mixing fires."""
    where = {int(p): i for i, p in enumerate(positions)}
    out = []
    for i, p in enumerate(positions):
        q = int(partners[i])
        if q < 0 or q < p or q not in where:
            continue
        mix = mix_params(recipe, seed, view, int(p))
        if mix is not None:
            out.append((i, where[q], mix))
    return out
