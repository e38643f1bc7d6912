"""Pixels that drift between machines are detected, not trained on.

Replay is bit-exact on one machine, but Pillow computes several ops in floating point (blends,
sharpness, bicubic affine) and libjpeg flavours decode differently, so another machine or wheel can
render a view slightly differently. Stage one records its decode environment and hashes of
canonical renders in the store header; stage two and ``verify`` render the same things again and
name what differs before a single step trains on pixels the teacher never saw.
"""
from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .randaug import OpParams, apply_op
from .views import INTERPOLATIONS, Recipe, ViewRenderer, decode_image

SAMPLES = 4  # real images hashed (decoded pixels and one rendered view each)


def decode_env() -> dict:
    import PIL
    from PIL import features

    return {"pillow": PIL.__version__, "libjpeg": features.version("jpg"),
            "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")), "machine": platform.machine()}


def _h(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def _canonical_image(size: int = 48) -> Image.Image:
    """A fixed pattern with edges, gradients and every channel busy: no data or RNG needed."""
    y, x = np.mgrid[0:size, 0:size]
    arr = np.stack([(x * 5 + y * 3) % 256, (x * y) % 251, ((x - y) * 7) % 256], -1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def op_hashes(recipe: Recipe, size: int) -> dict[str, str]:
    """Every RandAugment op of the recipe at two magnitudes, plus the crop-resize, on the pattern."""
    img, rs = _canonical_image(), INTERPOLATIONS[recipe.interpolation]
    out = {"resize": _h(np.asarray(img.resize((size, size), rs, box=(3.3, 2.7, 41.9, 44.1))))}
    ra = recipe.ra
    for name in (ra.ops if ra is not None else ()):
        arrs = [np.asarray(apply_op(img, OpParams(name, m, False), fill=tuple(recipe.fill), resample=rs,
                                    magnitude_max=ra.magnitude_max)) for m in (3.0, 9.0)]
        out[f"op:{name}"] = _h(np.concatenate([a.reshape(-1) for a in arrs]))
    return out


def sample_hashes(renderer: ViewRenderer, keys: list[str], read) -> dict[str, dict[str, str]]:
    """Decoded pixels and view 0 of the first few samples that decode; ``read(key) -> bytes``."""
    out = {}
    for key in keys:
        if len(out) >= SAMPLES:
            break
        try:
            img = decode_image(read(key))
        except Exception:
            continue
        out[key] = {"decode": _h(np.asarray(img)), "view0": _h(renderer.render(key, 0, img))}
    return out


def record(renderer: ViewRenderer, keys: list[str], read) -> dict:
    """What stage one stores in the header (``replay_check``)."""
    return {"env": decode_env(), "ops": op_hashes(renderer.recipe, renderer.size),
            "samples": sample_hashes(renderer, keys, read)}


@dataclass
class Drift:
    """What renders differently here than where the labels were made; empty when nothing does."""

    problems: list[str]
    env_then: dict
    env_now: dict

    def __bool__(self) -> bool:
        return bool(self.problems)

    def message(self) -> str:
        changed = [f"{k} {self.env_then.get(k)} -> {self.env_now.get(k)}" for k in self.env_now
                   if self.env_then.get(k) != self.env_now.get(k)]
        cause = f" (decode environment changed: {', '.join(changed)})" if changed else ""
        return (f"replayed pixels differ from the ones the teacher saw: {'; '.join(self.problems[:3])}"
                f"{' ...' if len(self.problems) > 3 else ''}{cause}")


def check(recorded: dict, renderer: ViewRenderer, read, has_key) -> Drift:
    """Render what the header recorded again; ``has_key(key)`` says whether DATA holds a sample."""
    now = decode_env()
    if not recorded:
        return Drift([], {}, now)
    problems = []
    ops = op_hashes(renderer.recipe, renderer.size)
    for name, h in recorded.get("ops", {}).items():
        if ops.get(name) != h:
            problems.append(f"{name.removeprefix('op:')} renders differently")
    for key, hs in recorded.get("samples", {}).items():
        if not has_key(key):
            continue
        img = decode_image(read(key))
        if _h(np.asarray(img)) != hs["decode"]:
            problems.append(f"image {key!r} decodes to other pixels")
        elif _h(renderer.render(key, 0, img)) != hs["view0"]:
            problems.append(f"view 0 of {key!r} renders differently")
    return Drift(problems, recorded.get("env", {}), now)
