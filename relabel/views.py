"""Replayable augmentation views: the contract between stage one and stage two.

A view is (sample key, view index). ``view_params`` turns (recipe, seed, key, view, image size)
into explicit parameters with a counter-based RNG; ``render_view`` turns parameters plus the
decoded image into uint8 pixels at any output size; ``pairs_for_view`` / ``mix_params`` /
``mix_pixels`` mix paired samples. Both stages call exactly these functions, so the student sees
the pixels the teacher saw.

Mixing never decodes a second image: samples are paired inside fixed groups of ``mix_group``
consecutive store positions (the store order is a seeded shuffle, so a group is a random draw of the
dataset), a fresh matching per view. Stage one decodes a group once and mixes both ways; stage two
keeps each pair in one batch.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from functools import cached_property

import numpy as np
from PIL import Image

from relabel.storage.errors import UserError
from relabel.storage.order import store_order  # noqa: F401  (the store order is part of the view contract)

from .randaug import OpParams, RandAugmentConfig, apply_ops, parse_randaugment, sample_ops
from .rng import CounterRNG, derive_key

RECIPE_VERSION = 1
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Recipe:
    """A named, versioned set of augmentations; recorded in the label store's header."""

    name: str
    version: int = RECIPE_VERSION
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    hflip: float = 0.5
    randaugment: str | None = "rand-m7-mstd0.5-inc1"
    fill: tuple[int, int, int] = (124, 116, 104)  # RandAugment fill: ImageNet mean in pixels, as timm
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 1 / 3)
    erase_ratio: tuple[float, float] = (0.3, 1 / 0.3)
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    mix_group: int = 64

    def __post_init__(self):
        self._check_types()
        if self.version != RECIPE_VERSION:
            raise UserError(f"recipe {self.name}: version {self.version} is not one this relabel replays "
                            f"({RECIPE_VERSION}); {'upgrade relabel' if self.version > RECIPE_VERSION else 'regenerate'}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"recipe {self.name}: unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise UserError(f"recipe {self.name}: scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise UserError(f"recipe {self.name}: ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if self.mix_group < 2 or self.mix_group % 2:
            raise UserError(f"recipe {self.name}: mix_group must be an even number >= 2, got {self.mix_group}")
        for p in ("hflip", "erase_prob", "mix_prob", "switch_prob"):
            if not 0 <= getattr(self, p) <= 1:
                raise UserError(f"recipe {self.name}: {p} must be in [0, 1]")
        if self.randaugment:
            try:
                parse_randaugment(self.randaugment)
            except ValueError as e:
                raise UserError(f"recipe {self.name}: {e}") from None

    def _check_types(self) -> None:
        """A recipe file is user input: a wrong type is one clear line, not a TypeError deep in a worker."""
        def num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("name", "interpolation"):
                ok = isinstance(v, str)
            elif f.name == "randaugment":
                ok = v is None or isinstance(v, str)
            elif f.name in ("version", "mix_group"):
                ok = isinstance(v, int) and not isinstance(v, bool)
            elif f.name == "fill":
                ok = isinstance(v, tuple) and len(v) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in v)
            elif f.name in ("scale", "ratio", "erase_area", "erase_ratio"):
                ok = isinstance(v, tuple) and len(v) == 2 and all(num(c) for c in v)
            else:
                ok = num(v)
            if not ok:
                raise UserError(f"recipe {self.name}: setting {f.name!r} has a wrong value {v!r} "
                                f"(expected {f.type})")

    @property
    def mixes(self) -> bool:
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @cached_property  # on the per-view path: parsed once per recipe object
    def ra(self) -> RandAugmentConfig | None:
        return parse_randaugment(self.randaugment) if self.randaugment else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"recipe: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)

    @cached_property  # keys every view's RNG stream: hashed once per recipe object
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


RECIPES: dict[str, Recipe] = {
    # USI's training recipe (Ridnik et al. 2022), see README.
    "usi": Recipe(name="usi"),
    # FKD-like: crop and flip only.
    "simple": Recipe(name="simple", randaugment=None, mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=0.0),
}


def create_recipe(spec: str | dict) -> Recipe:
    """A built-in name (``usi``, ``simple``), a YAML/JSON file, or a dict (a store header's)."""
    if isinstance(spec, dict):
        return Recipe.from_dict(spec)
    if spec in RECIPES:
        return RECIPES[spec]
    if os.path.isfile(spec):
        with open(spec) as f:
            text = f.read()
        try:
            if spec.endswith((".yaml", ".yml")):
                import yaml

                d = yaml.safe_load(text)
            else:
                d = json.loads(text)
        except Exception as e:
            raise UserError(f"{spec}: not valid {'YAML' if spec.endswith(('.yaml', '.yml')) else 'JSON'} ({e})") from None
        if not isinstance(d, dict):
            raise UserError(f"{spec}: a recipe file must hold a mapping of settings")
        base = RECIPES.get(d.pop("base", "usi"))
        if base is None:
            raise UserError(f"{spec}: unknown base recipe; use one of {', '.join(RECIPES)}")
        d.setdefault("name", os.path.splitext(os.path.basename(spec))[0])
        return Recipe.from_dict({**base.to_dict(), **d})
    raise UserError(f"unknown recipe {spec!r}; use one of {', '.join(RECIPES)} or a .yaml/.json file")


# ------------------------------------------------------------------------------------ parameters
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


def view_params(recipe: Recipe, seed: int, key: str, view: int, size: tuple[int, int]) -> ViewParams:
    """Parameters of one view of one sample; ``size`` is the decoded image's (width, height)."""
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


# ------------------------------------------------------------------------------------ pixels
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


def _pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    top, left, h, w = box
    y0, x0 = int(round(top * height)), int(round(left * width))
    y1, x1 = int(round((top + h) * height)), int(round((left + w) * width))
    return y0, x0, max(y1, y0), max(x1, x0)


def render_view(img: Image.Image, params: ViewParams, recipe: Recipe, size: int | tuple[int, int],
                erase_seed: tuple = ()) -> np.ndarray:
    """Decoded image + parameters -> HxWx3 uint8 at ``size``; deterministic."""
    out_w, out_h = (size, size) if isinstance(size, int) else size
    W, H = img.size
    top, left, h, w = params.crop
    box = (left * W, top * H, (left + w) * W, (top + h) * H)
    x = img.resize((out_w, out_h), INTERPOLATIONS[recipe.interpolation], box=box)
    if params.flip:
        x = x.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.ops:
        x = apply_ops(x, params.ops, fill=tuple(recipe.fill), resample=INTERPOLATIONS[recipe.interpolation],
                      magnitude_max=recipe.ra.magnitude_max)
    arr = np.asarray(x, dtype=np.uint8)
    if params.erase is not None:
        arr = arr.copy()
        y0, x0, y1, x1 = _pixel_box(params.erase, out_w, out_h)
        if y1 > y0 and x1 > x0:
            gen = np.random.Philox(key=derive_key("erase", *erase_seed, params.erase))
            n = (y1 - y0) * (x1 - x0) * 3
            noise = gen.random_raw((n + 7) // 8).view(np.uint8)[:n]
            arr[y0:y1, x0:x1] = noise.reshape(y1 - y0, x1 - x0, 3)
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
    y0, x0, y1, x1 = _pixel_box(mix.box, W, H)
    out_a, out_b = a.copy(), b.copy()
    out_a[y0:y1, x0:x1] = b[y0:y1, x0:x1]
    out_b[y0:y1, x0:x1] = a[y0:y1, x0:x1]
    return out_a, out_b, 1.0 - (y1 - y0) * (x1 - x0) / (H * W)


def mix_batch(recipe: Recipe, seed: int, view: int, positions, pixels: list[np.ndarray],
              partners) -> tuple[list[np.ndarray], list[float], list[int]]:
    """Mix every pair whose both members are present; returns (pixels, own lambda, partner or -1).

    Both stages call this on the samples they hold (stage one: a mix group, stage two: a batch),
    so a view is mixed identically in both.
    """
    where = {int(p): i for i, p in enumerate(positions)}
    out = list(pixels)
    lam, other = [1.0] * len(out), [-1] * len(out)
    for i, p in enumerate(positions):
        q = int(partners[i])
        if q < 0 or q < p or q not in where:
            continue
        mix = mix_params(recipe, seed, view, int(p))
        if mix is None:
            continue
        j = where[q]
        out[i], out[j], lam[i] = mix_pixels(pixels[i], pixels[j], mix)
        lam[j], other[i], other[j] = lam[i], q, int(p)
    return out, lam, other


@dataclass
class ViewRenderer:
    """Everything a worker needs to render views of one store: a picklable bundle."""

    recipe: Recipe
    seed: int
    size: int

    def params(self, key: str, view: int, img: Image.Image) -> ViewParams:
        return view_params(self.recipe, self.seed, key, view, img.size)

    def render(self, key: str, view: int, img: Image.Image) -> np.ndarray:
        return render_view(img, self.params(key, view, img), self.recipe, self.size,
                           erase_seed=(self.recipe.digest, self.seed, key, view))
