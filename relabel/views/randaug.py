"""RandAugment with replayable randomness.

timm's RandAugment draws from Python's global ``random`` / ``np.random``, so a view cannot be
re-created in another process. Here the random choices are drawn from a caller-supplied
counter-based stream (``relabel.rng.CounterRNG``) into plain ``OpParams`` records, and the
records are applied by deterministic functions whose arguments and PIL calls follow timm's
``auto_augment.py`` semantics (level scaling, clamping, sign), so pixels match timm's ops.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from PIL import Image, ImageEnhance, ImageOps

RAND_TRANSFORMS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS: tuple[str, ...] = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)

_DENOM = 10.0  # timm's _LEVEL_DENOM: level args scale with magnitude / 10 whatever magnitude_max is
_TRANSLATE_PCT = 0.45  # timm's default hparams['translate_pct']
_AFFINE = Image.Transform.AFFINE


def _affine(coeffs: Callable[[Image.Image, float], tuple]) -> Callable:
    """Geometric op: output pixel (x, y) samples the input at the affine map of (x, y)."""
    return lambda img, v, fill, resample: img.transform(
        img.size, _AFFINE, coeffs(img, v), resample=resample, fillcolor=fill)


def _solarize_add(img: Image.Image, add: int) -> Image.Image:
    """Add ``add`` to values below 128 (saturating); other modes pass through, as in timm."""
    if img.mode not in ("L", "RGB"):
        return img
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * (3 if img.mode == "RGB" else 1))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep the top ``bits`` bits. Our own LUT because Pillow >= 13 rejects bits < 1, which timm
    passes (Posterize at m < 2.5, PosterizeIncreasing at m >= 10); older Pillow gave black."""
    if bits >= 8:
        return img
    mask = ~(2 ** (8 - bits) - 1) if bits > 0 else 0
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


def _enhance(cls) -> Callable:
    return lambda img, v, fill, resample: cls(img).enhance(v)


def _enhance_inc(m: float, neg: bool) -> float:
    """Centred on the identity factor 1.0; the sign picks weaker/stronger, floored at 0.1."""
    d = (m / _DENOM) * 0.9
    return max(0.1, 1.0 + (-d if neg else d))


def _signed(scale: float) -> Callable[[float, bool], float]:
    def level(m: float, neg: bool) -> float:
        v = (m / _DENOM) * scale
        return -v if neg else v
    return level


def _posterize_bits(m: float, neg: bool) -> int:
    return int((m / _DENOM) * 4)


def _solarize_thresh(m: float, neg: bool) -> int:
    return min(256, int((m / _DENOM) * 256))


# name -> (level fn (magnitude, negate) -> arg or None, negates?, PIL op (img, arg, fill, resample))
_OPS: dict[str, tuple[Callable | None, bool, Callable]] = {
    "AutoContrast": (None, False, lambda img, v, fill, rs: ImageOps.autocontrast(img)),
    "Equalize": (None, False, lambda img, v, fill, rs: ImageOps.equalize(img)),
    "Invert": (None, False, lambda img, v, fill, rs: ImageOps.invert(img)),
    "Rotate": (_signed(30.0), True,
               lambda img, v, fill, rs: img.rotate(v, resample=rs, fillcolor=fill)),
    "Posterize": (_posterize_bits, False,
                  lambda img, v, fill, rs: _posterize(img, v)),
    "Solarize": (_solarize_thresh, False, lambda img, v, fill, rs: ImageOps.solarize(img, v)),
    "SolarizeAdd": (lambda m, n: min(128, int((m / _DENOM) * 110)), False,
                    lambda img, v, fill, rs: _solarize_add(img, v)),
    "ShearX": (_signed(0.3), True, _affine(lambda img, v: (1, v, 0, 0, 1, 0))),
    "ShearY": (_signed(0.3), True, _affine(lambda img, v: (1, 0, 0, v, 1, 0))),
    "TranslateXRel": (_signed(_TRANSLATE_PCT), True,
                      _affine(lambda img, v: (1, 0, v * img.size[0], 0, 1, 0))),
    "TranslateYRel": (_signed(_TRANSLATE_PCT), True,
                      _affine(lambda img, v: (1, 0, 0, 0, 1, v * img.size[1]))),
    # TranslateX/Y: the level fn is bound per call to translate_const (see op_argument).
    "TranslateX": (None, True, _affine(lambda img, v: (1, 0, v, 0, 1, 0))),
    "TranslateY": (None, True, _affine(lambda img, v: (1, 0, 0, 0, 1, v))),
}
_OPS["PosterizeIncreasing"] = (lambda m, n: 4 - _posterize_bits(m, n), False, _OPS["Posterize"][2])
_OPS["SolarizeIncreasing"] = (lambda m, n: 256 - _solarize_thresh(m, n), False, _OPS["Solarize"][2])
for _name, _cls in (("Color", ImageEnhance.Color), ("Contrast", ImageEnhance.Contrast),
                    ("Brightness", ImageEnhance.Brightness), ("Sharpness", ImageEnhance.Sharpness)):
    _OPS[_name] = (lambda m, n: (m / _DENOM) * 1.8 + 0.1, False, _enhance(_cls))
    _OPS[_name + "Increasing"] = (_enhance_inc, True, _enhance(_cls))
del _name, _cls

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_OPS))
NEGATING_OPS: frozenset[str] = frozenset(n for n, (_, neg, _) in _OPS.items() if neg)


def _check_op(name: str) -> None:
    if name not in _OPS:
        raise ValueError(f"unknown RandAugment op {name!r}; supported: {', '.join(SUPPORTED_OPS)}")


@dataclass(frozen=True)
class RandAugmentConfig:
    """Everything that decides which ops a view gets; stored with the cache so replays agree."""
    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.0  # inf: magnitude ~ uniform(0, magnitude), as in timm
    magnitude_max: float = 10.0
    prob: float = 0.5
    increasing: bool = False
    ops: tuple[str, ...] | None = None  # None: timm's default list for `increasing`

    def __post_init__(self):
        ops = self.ops
        if ops is None:
            ops = RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS
        object.__setattr__(self, "ops", tuple(ops))
        for name in self.ops:
            _check_op(name)
        if self.num_ops < 0 or (self.num_ops and not self.ops):
            raise ValueError(f"num_ops={self.num_ops} needs num_ops >= 0 and a non-empty op list")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob={self.prob} must be in [0, 1]")
        if math.isnan(self.magnitude_std) or self.magnitude_std < 0 or self.magnitude < 0:
            raise ValueError("magnitude and magnitude_std must be >= 0")
        if not self.magnitude_max > 0:
            raise ValueError(f"magnitude_max={self.magnitude_max} must be > 0")

    def to_dict(self) -> dict:
        """Plain-JSON dict (an infinite magnitude_std is written as the string 'inf')."""
        d = asdict(self)
        d["ops"] = list(self.ops)
        if math.isinf(self.magnitude_std):
            d["magnitude_std"] = "inf"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RandAugmentConfig":
        d = dict(d)
        d["magnitude_std"] = float(d.get("magnitude_std", 0.0))
        if d.get("ops") is not None:
            d["ops"] = tuple(d["ops"])
        return cls(**d)


def parse_randaugment(spec: str) -> RandAugmentConfig:
    """Parse timm's 'rand-m9-n2-mstd0.5-mmax10-p0.5-inc1' strings with timm's defaults
    (m=10 when absent, mstd > 100 means uniform, mmax0 means 10); unlike timm, a malformed
    or unsupported section (including weighted 't...' sets) raises ValueError."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec {spec!r} must start with 'rand'")
    kw: dict = {"magnitude": _DENOM}
    conv = {"m": ("magnitude", int), "n": ("num_ops", int), "p": ("prob", float),
            "mstd": ("magnitude_std", float), "mmax": ("magnitude_max", int),
            "inc": ("increasing", lambda s: bool(int(s)))}
    for sec in parts[1:]:
        match = re.fullmatch(r"([a-z]+)(\d.*)", sec)
        if not match or match.group(1) not in conv:
            raise ValueError(f"malformed or unsupported section {sec!r} in RandAugment spec {spec!r}")
        field, fn = conv[match.group(1)]
        try:
            kw[field] = fn(match.group(2))
        except ValueError:
            raise ValueError(f"bad value in section {sec!r} of RandAugment spec {spec!r}") from None
    if kw.get("magnitude_std", 0.0) > 100:
        kw["magnitude_std"] = math.inf
    kw["magnitude_max"] = float(kw.get("magnitude_max") or _DENOM)
    kw["magnitude"] = float(kw["magnitude"])
    return RandAugmentConfig(**kw)


@dataclass(frozen=True)
class OpParams:
    """One op that fired: its name, the clamped magnitude and the sign (False for unsigned ops)."""
    name: str
    magnitude: float
    negate: bool


def sample_ops(cfg: RandAugmentConfig, rng) -> tuple[OpParams, ...]:
    """Draw the ops for one view. Each layer takes the same draws whatever the outcome
    (op index, fire, normal, uniform, sign), so later layers never shift with earlier ones."""
    out = []
    for _ in range(cfg.num_ops):
        name = cfg.ops[rng.randint(len(cfg.ops))]
        u_fire = rng.random()
        z = rng.normal()
        u_mag = rng.random()
        u_neg = rng.random()
        if cfg.prob < 1.0 and u_fire > cfg.prob:  # timm skips when random() > prob
            continue
        m = cfg.magnitude
        if math.isinf(cfg.magnitude_std):
            m = cfg.magnitude * u_mag
        elif cfg.magnitude_std > 0:
            m = m + cfg.magnitude_std * z
        m = max(0.0, min(m, cfg.magnitude_max))
        out.append(OpParams(name, m, name in NEGATING_OPS and u_neg > 0.5))
    return tuple(out)


def op_argument(op: OpParams, *, magnitude_max: float = 10.0, translate_const: float = 250.0):
    """The op's PIL argument (None for the ops that ignore magnitude), as timm's level fns give it."""
    _check_op(op.name)
    level, negates, _ = _OPS[op.name]
    if op.negate and not negates:
        raise ValueError(f"op {op.name!r} has no sign; negate must be False")
    m = max(0.0, min(float(op.magnitude), magnitude_max))
    if op.name in ("TranslateX", "TranslateY"):
        level = _signed(float(translate_const))
    return None if level is None else level(m, op.negate)


def apply_op(img: Image.Image, op: OpParams, *, fill: tuple[int, int, int], resample,
             magnitude_max: float = 10.0, translate_const: float = 250.0) -> Image.Image:
    """Apply one op; ``fill``/``resample`` matter only for the geometric ops (timm's img_mean
    and a fixed interpolation: timm's random bilinear/bicubic choice is not replayable)."""
    arg = op_argument(op, magnitude_max=magnitude_max, translate_const=translate_const)
    return _OPS[op.name][2](img, arg, tuple(fill), resample)


def apply_ops(img: Image.Image, ops: Sequence[OpParams], *, fill: tuple[int, int, int], resample,
              magnitude_max: float = 10.0, translate_const: float = 250.0) -> Image.Image:
    for op in ops:
        img = apply_op(img, op, fill=fill, resample=resample, magnitude_max=magnitude_max,
                       translate_const=translate_const)
    return img
