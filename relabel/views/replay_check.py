"""Pixels that drift between machines are detected, not trained on.

Replay is bit-exact on one machine, but Pillow computes several ops in floating point (blends,
sharpness, bicubic affine) and libjpeg flavours decode differently, so another machine or wheel can
render a view slightly differently. Stage one records its decode environment and hashes of
canonical renders in the store header; stage two and ``verify`` render the same things again and
name what differs before a single step trains on pixels the teacher never saw.
"""
from __future__ import annotations

import dataclasses
import hashlib
import platform
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .randaug import OpParams
from .params import ViewParams
from .pillow import decode_image
from .recipe import Recipe
from .rules import boundary_cases
from .render import Renderer, ViewRenderer, create_renderer, finish_batch, plan_batch, render_now

SAMPLES = 4  # real images hashed (decoded pixels and one rendered view each)


def decode_env() -> dict:
    import PIL
    from PIL import features

    return {"pillow": PIL.__version__, "libjpeg": features.version("jpg"),
            "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
            "libjpeg_turbo_version": features.version("libjpeg_turbo"),  # the build ("jpg" says only "6.2")
            "machine": platform.machine()}


def _h(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def _canonical_image(size: int = 48) -> Image.Image:
    """A fixed pattern with edges, gradients and every channel busy: no data or RNG needed."""
    y, x = np.mgrid[0:size, 0:size]
    arr = np.stack([(x * 5 + y * 3) % 256, (x * y) % 251, ((x - y) * 7) % 256], -1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _as_renderer(renderer) -> Renderer:
    """A renderer for the canonical patterns and the recorded samples: those were rendered by the
    store's maker, whose order is known for them, so nothing is refused here (see ViewRenderer.refuse_tall)."""
    renderer = create_renderer("pillow", renderer) if isinstance(renderer, ViewRenderer) else renderer
    if renderer.spec.refuse_tall:
        renderer = _like(renderer, dataclasses.replace(renderer.spec, refuse_tall=False))
    return renderer


def _render(renderer: Renderer, img: Image.Image, params: list[ViewParams], device=None) -> np.ndarray:
    planned = [renderer.plan_params(p, img) for p in params]
    payload, _, _ = plan_batch(renderer, [0] * len(params), list(range(len(params))), [-1] * len(params), planned)
    return finish_batch(renderer, payload, device).cpu().numpy()


def _like(renderer: Renderer, spec: ViewRenderer) -> Renderer:
    """A renderer of ``renderer``'s kind and resize kernel for other views (another size, recipe)."""
    return type(renderer)(spec, kernel=getattr(renderer, "kernel", "auto"))


def op_hashes(renderer: Renderer, device=None) -> dict[str, str]:
    """Every RandAugment op of the recipe at two magnitudes, plus the crop-resize, on the pattern,
    rendered by ``renderer`` (the one that replays: its drift is what matters)."""
    renderer = _as_renderer(renderer)
    recipe, img = renderer.spec.recipe, _canonical_image()
    # the crop-resize: Image.resize's box (3.3, 2.7, 41.9, 44.1) of the 48 px pattern, at the store's size
    box = ViewParams(crop=(2.7 / 48, 3.3 / 48, (44.1 - 2.7) / 48, (41.9 - 3.3) / 48), flip=False)
    out = {"resize": _h(_render(renderer, img, [box], device)[0])}
    # a tall image shrunk to 8 px: Pillow 13 runs the vertical pass first there (the other order above)
    at8 = _like(renderer, renderer.spec.at(8))
    out["resize:tall"] = _h(_render(at8, img.crop((0, 0, 12, 48)), [ViewParams((0.0, 0.0, 1.0, 1.0), False)], device)[0])
    # both sides of every resize rule's decision (13's boundary, images taller than 100:1), rendered
    # by the store's rule: a Pillow that resizes otherwise, unmodelled, is caught here
    for i, (pattern, (w, h), box) in enumerate(boundary_cases()):
        W, H = pattern.size
        crop = (box[1] / H, box[0] / W, (box[3] - box[1]) / H, (box[2] - box[0]) / W)
        rect = Recipe.from_dict({**recipe.to_dict(), "interpolation": recipe.interpolation
                                 if recipe.interpolation in ("bilinear", "bicubic", "lanczos") else "bicubic"})
        r = _like(renderer, ViewRenderer(rect, renderer.spec.seed, w, renderer.spec.resize_rule))
        out[f"resize:rule:{i}"] = _h(_render(r, pattern, [ViewParams(crop, False)], device)[0])
    ra = recipe.ra
    if ra is not None:  # each op alone on the whole 48 px pattern (a same-size resize is a copy)
        at48 = _like(renderer, renderer.spec.at(48))
        whole = lambda name, m: ViewParams(crop=(0.0, 0.0, 1.0, 1.0), flip=False, ops=(OpParams(name, m, False),))  # noqa: E731
        for name in ra.ops:
            arrs = _render(at48, img, [whole(name, 3.0), whole(name, 9.0)], device)
            out[f"op:{name}"] = _h(np.concatenate([a.reshape(-1) for a in arrs]))
    return out


def renderer_parity(renderer: Renderer, device=None) -> list[str]:
    """What ``renderer`` on ``device`` renders differently from Pillow (the reference) on the canonical
    pattern: the crop-resize on both sides of every resize rule's decision and every op of the recipe,
    with each of its resize kernels (the torch renderer may pick any of them on this device). Empty:
    the same bytes."""
    from .kernels import KERNELS

    renderer = _as_renderer(renderer)
    ref = op_hashes(create_renderer("pillow", renderer.spec))
    kernels = list(KERNELS) if hasattr(renderer, "kernels") else [None]
    differ: list[str] = []
    for kernel in kernels:
        r = renderer if kernel is None else create_renderer(renderer.name, renderer.spec, kernel=kernel)
        got = op_hashes(r, device)
        differ += [k.removeprefix("op:") + ("" if kernel is None else f" ({kernel} kernel)")
                   for k in ref if got.get(k) != ref[k]]
    return differ


def sample_hashes(renderer: Renderer, keys: list[str], read, device=None) -> dict[str, dict[str, str]]:
    """Decoded pixels and view 0 of the first few samples that decode; ``read(key) -> bytes``."""
    out = {}
    for key in keys:
        if len(out) >= SAMPLES:
            break
        try:
            img = decode_image(read(key))
        except Exception:
            continue
        out[key] = {"decode": _h(np.asarray(img)), "view0": _view0(renderer, key, img, device)}
    return out


def _view0(renderer: Renderer, key: str, img: Image.Image, device=None) -> str:
    return _h(render_now(renderer, [(0, 0, -1, key, img)], device)[0].cpu().numpy())


def record(renderer: Renderer, keys: list[str], read, device=None) -> dict:
    """What stage one stores in the header (``replay_check``)."""
    renderer = _as_renderer(renderer)
    return {"env": decode_env(), "ops": op_hashes(renderer, device),
            "samples": sample_hashes(renderer, keys, read, device)}


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


def check(recorded: dict, renderer: Renderer, read, has_key, device=None) -> Drift:
    """Render what the header recorded again, with the renderer that will replay (on its device);
    ``has_key(key)`` says whether DATA holds a sample."""
    renderer = _as_renderer(renderer)
    now = decode_env()
    if not recorded:
        return Drift([], {}, now)
    problems = []
    ops = op_hashes(renderer, device)
    for name, h in recorded.get("ops", {}).items():
        if ops.get(name) != h:
            problems.append(f"{name.removeprefix('op:')} renders differently")
    for key, hs in recorded.get("samples", {}).items():
        if not has_key(key):
            continue
        img = decode_image(read(key))
        if _h(np.asarray(img)) != hs["decode"]:
            problems.append(f"image {key!r} decodes to other pixels")
        elif _view0(renderer, key, img, device) != hs["view0"]:
            problems.append(f"view 0 of {key!r} renders differently")
    return Drift(problems, recorded.get("env", {}), now)
