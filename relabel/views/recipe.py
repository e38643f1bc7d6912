"""Recipes: the named, versioned augmentation settings a label store records.

A recipe plus a seed decides every view (``relabel.views.params``); renderers turn the resulting
parameters into pixels. Recipes are user input (YAML/JSON files), so every field is type-checked.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from functools import cached_property

from PIL import Image

from relabel.storage.errors import ConfigError

from .randaug import RandAugmentConfig, parse_randaugment

GEOMETRIC_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"})
AFFINE_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # what Pillow's Image.transform can resample with
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
            raise ConfigError(f"recipe {self.name}: version {self.version} is not one this relabel replays "
                              f"({RECIPE_VERSION}); {'upgrade relabel' if self.version > RECIPE_VERSION else 'regenerate'}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"recipe {self.name}: unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ConfigError(f"recipe {self.name}: scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ConfigError(f"recipe {self.name}: ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if self.mix_group < 2 or self.mix_group % 2:
            raise ConfigError(f"recipe {self.name}: mix_group must be an even number >= 2, got {self.mix_group}")
        for p in ("hflip", "erase_prob", "mix_prob", "switch_prob"):
            if not 0 <= getattr(self, p) <= 1:
                raise ConfigError(f"recipe {self.name}: {p} must be in [0, 1]")
        if self.randaugment:
            try:
                ra = parse_randaugment(self.randaugment)
            except ValueError as e:
                raise ConfigError(f"recipe {self.name}: {e}") from None
            geometric = sorted(set(ra.ops) & GEOMETRIC_OPS) if ra.num_ops else []
            if geometric and self.interpolation not in AFFINE_INTERPOLATIONS:
                raise ConfigError(f"recipe {self.name}: interpolation {self.interpolation!r} cannot resample the "
                                  f"geometric RandAugment ops ({', '.join(geometric)}: Pillow's transform has no "
                                  f"{self.interpolation} filter); use one of {', '.join(AFFINE_INTERPOLATIONS)}")

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
                raise ConfigError(f"recipe {self.name}: setting {f.name!r} has a wrong value {v!r} "
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
            raise ConfigError(f"recipe: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
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
            raise ConfigError(f"{spec}: not valid {'YAML' if spec.endswith(('.yaml', '.yml')) else 'JSON'} ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{spec}: a recipe file must hold a mapping of settings")
        base = RECIPES.get(d.pop("base", "usi"))
        if base is None:
            raise ConfigError(f"{spec}: unknown base recipe; use one of {', '.join(RECIPES)}")
        d.setdefault("name", os.path.splitext(os.path.basename(spec))[0])
        return Recipe.from_dict({**base.to_dict(), **d})
    raise ConfigError(f"unknown recipe {spec!r}; use one of {', '.join(RECIPES)} or a .yaml/.json file")


