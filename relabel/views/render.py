"""Renderers, and the one driver every stage renders views through.

A renderer turns decoded images plus view parameters into uint8 pixels, in two places: ``plan``
(per sample) and ``stack`` (per batch, mixing its pairs) run in DataLoader workers; ``finish`` runs
after the DataLoader, in the main process, on the renderer's device (timm's ``PrefetchLoader``
shape). The Pillow renderer does its work in the workers and ``finish`` only moves the batch; the
torch renderer's workers ship each view's support region (the crop plus the filter's reach) and
``finish`` renders the batch on the device. Their bytes are equal (tests/test_render_torch.py), so a
store made with one replays with the other.

Generate, verify, the replay check, ``relabel train`` and ``ReplayLoader`` all call ``plan_batch``
and ``finish_batch`` (or ``render_now``, both at once): there is one view path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from relabel.settings import RENDERERS
from relabel.storage.errors import ConfigError, SourceError, named

from .params import MixParams, ViewParams, batch_mixes, mix_lambda, view_params
from .pillow import mix_pixels, render_view
from .recipe import Recipe

RENDERER_CHOICES = RENDERERS


def _native_rule() -> str:
    from .rules import native_rule

    return native_rule()


@dataclass
class ViewRenderer:
    """What fixes a store's views: recipe, seed, output size and the resize rule (``views.rules``:
    the pass order of the Pillow version the store was made with; default: the installed one's).
    Picklable; workers get a copy. ``render`` is the Pillow reference for one view."""

    recipe: Recipe
    seed: int
    size: int
    resize_rule: str = field(default_factory=_native_rule)
    # Refuse images taller than 100:1 (a store whose rule for them is unknown: StoreHeader.resize_rule_certain).
    refuse_tall: bool = False

    @classmethod
    def of_store(cls, header, size: int | None = None, allow_drift: bool = False) -> "ViewRenderer":
        """The views a store's header fixes (at ``size``, default the store's), by its resize rule;
        ``allow_drift``: render even the images whose views the store cannot pin down."""
        from .recipe import create_recipe
        from .rules import check_rule

        return cls(create_recipe(header.recipe), header.seed, size or header.img_size, check_rule(header.resize_rule),
                   refuse_tall=not (header.resize_rule_certain or allow_drift))

    def at(self, size: int) -> "ViewRenderer":
        """The same views at another output size."""
        return ViewRenderer(self.recipe, self.seed, size, self.resize_rule, self.refuse_tall)

    def params(self, key: str, view: int, img: Image.Image) -> ViewParams:
        if self.refuse_tall and img.height > 100 * img.width:
            raise SourceError(
                f"image {key!r} ({img.width}x{img.height}) is taller than 100:1 and this store's views of such images "
                f"are unknown (made before render rules were recorded, under Pillow 12.2/12.3, where relabel 0.2's "
                f"two renderers resized them in different orders); regenerate the store with this relabel, or set "
                f"{named('allow_pixel_drift', True)} to replay them in the {self.resize_rule} order")
        return view_params(self.recipe, self.seed, key, view, img.size)

    def erase_seed(self, key: str, view: int) -> tuple:
        return (self.recipe.digest, self.seed, key, view)

    def render(self, key: str, view: int, img: Image.Image) -> np.ndarray:
        return render_view(img, self.params(key, view, img), self.recipe, self.size,
                           erase_seed=self.erase_seed(key, view), resize_rule=self.resize_rule)


class Renderer(Protocol):
    """Turns (key, view, decoded image) into pixels; see the module doc for where each step runs."""

    name: str
    spec: ViewRenderer

    def plan(self, key: str, view: int, img: Image.Image) -> Any:
        """Worker side of one view: ``plan_params`` with the view's drawn parameters."""
        ...

    def plan_params(self, params: ViewParams, img: Image.Image, erase_seed: tuple = ()) -> Any: ...

    def stack(self, planned: Sequence[Any], mixes: Sequence[tuple[int, int, MixParams]]) -> Any: ...

    def finish(self, payload: Any, device: torch.device | None) -> torch.Tensor:
        """(N, H, W, 3) uint8 on ``device`` (None: where the payload is)."""
        ...


_REGISTRY: dict[str, Callable[[ViewRenderer], Renderer]] = {}


def register_renderer(name: str):
    def deco(cls):
        _REGISTRY[name] = cls
        cls.name = name
        return cls
    return deco


def resolve_renderer(name: str, device: torch.device | str | None) -> str:
    """``auto``: torch where the pixels go to a GPU (the CPU only decodes), Pillow on a CPU (it is
    faster there, and runs in parallel workers)."""
    if name not in RENDERER_CHOICES:
        raise ConfigError(f"unknown {named('renderer')} {name!r}; use one of {', '.join(RENDERER_CHOICES)}")
    if name != "auto":
        return name
    return "torch" if device is not None and torch.device(device).type == "cuda" else "pillow"


def create_renderer(name: str, spec: ViewRenderer, device: torch.device | str | None = None,
                    kernel: str = "auto") -> Renderer:
    """A renderer by name (``auto`` resolved for ``device``), checked against the recipe. ``kernel``:
    the torch renderer's resize kernel (``views.kernels``: auto times them on the device; the bytes
    are the same with each, so it is no part of a store)."""
    if not isinstance(spec, ViewRenderer):
        raise TypeError("create_renderer takes a ViewRenderer (recipe, seed, size)")
    from .kernels import RENDER_KERNELS

    if kernel not in RENDER_KERNELS:
        raise ConfigError(f"unknown {named('render_kernel')} {kernel!r}; use one of {', '.join(RENDER_KERNELS)}")
    r = _REGISTRY[resolve_renderer(name, device)](spec, kernel=kernel)
    check = getattr(r, "check", None)
    if check is not None:
        check()
    return r


@register_renderer("pillow")
class PillowRenderer:
    """Everything in the workers: render, mix (numpy integer arithmetic), stack."""

    name = "pillow"

    def __init__(self, spec: ViewRenderer, kernel: str = "auto"):
        self.spec, self.kernel = spec, kernel  # ``kernel``: the torch renderer's; Pillow resizes with its own loop

    def plan(self, key: str, view: int, img: Image.Image) -> np.ndarray:
        return self.spec.render(key, view, img)

    def plan_params(self, params: ViewParams, img: Image.Image, erase_seed: tuple = ()) -> np.ndarray:
        return render_view(img, params, self.spec.recipe, self.spec.size, erase_seed=erase_seed,
                           resize_rule=self.spec.resize_rule)

    def stack(self, planned, mixes) -> torch.Tensor:
        out = list(planned)
        for i, j, mix in mixes:
            out[i], out[j], _ = mix_pixels(planned[i], planned[j], mix)
        if not out:
            s = self.spec.size
            return torch.empty((0, s, s, 3), dtype=torch.uint8)
        return torch.from_numpy(np.stack(out))

    def finish(self, payload: torch.Tensor, device) -> torch.Tensor:
        return payload if device is None else payload.to(device, non_blocking=True)


@dataclass(frozen=True)
class _TorchItem:
    """What a worker sends for one view: its parameters, the pixels its crop-resize reads, and what
    the worker already computed from them (the resize plan, the erase noise)."""

    params: ViewParams
    region: np.ndarray  # uint8 (h, w, 3) inside the support box
    offset: tuple[int, int]  # (x0, y0) of the region in the decoded image
    plan: Any  # views.resample.resize_plan's record
    erase: Any  # views.params.erase_noise's (box, noise), or None


@register_renderer("torch")
class TorchRenderer:
    """Workers decode and cut support regions; the device renders and mixes the whole batch."""

    name = "torch"

    def __init__(self, spec: ViewRenderer, kernel: str = "auto"):
        from .kernels import KernelPicker

        self.spec, self.kernel = spec, kernel
        self.kernels = KernelPicker(kernel)  # the resize kernel per device: ``kernels.kernel_for(device)``

    def check(self) -> None:
        from .torch import check_recipe

        check_recipe(self.spec.recipe)

    def plan(self, key: str, view: int, img: Image.Image) -> _TorchItem:
        return self.plan_params(self.spec.params(key, view, img), img, self.spec.erase_seed(key, view))

    def plan_params(self, params: ViewParams, img: Image.Image, erase_seed: tuple = ()) -> _TorchItem:
        from .params import erase_noise
        from .torch import resize_plan

        size = self.spec.size
        plan = resize_plan(params, self.spec.recipe, img.width, img.height, size, self.spec.resize_rule)
        x0, y0, x1, y1 = plan.box
        region = np.asarray(img.crop((x0, y0, x1, y1)), dtype=np.uint8).reshape(y1 - y0, x1 - x0, 3)
        erase = None if params.erase is None else erase_noise(params.erase, size, size, erase_seed)
        return _TorchItem(params, region, (x0, y0), plan, erase)

    def stack(self, planned, mixes) -> dict:
        """The batch packed for the device (``views.packed.pack_batch``: a few tensors, which the
        DataLoader pins), its pairs to mix included."""
        from .torch import pack_batch

        return pack_batch([it.region for it in planned], [it.offset for it in planned], [it.plan for it in planned],
                          [it.params for it in planned], [it.erase for it in planned], self.spec.size,
                          self.spec.recipe, mixes)

    def finish(self, payload: dict, device) -> torch.Tensor:
        from .torch import render_packed

        return render_packed(payload, self.spec.recipe, payload["bytes"].device if device is None else device,
                             self.kernels)


# ------------------------------------------------------------------------------------ the driver
def plan_batch(renderer: Renderer, positions: Sequence[int], views: Sequence[int], partners: Sequence[int],
               planned: Sequence[Any]) -> tuple[Any, list[float], list[int]]:
    """Worker side of a batch of views held together (stage one: a mix group's views, stage two: a
    batch): mix every pair whose both members are here with its view's parameters. Returns
    (payload for ``finish_batch``, own lambda per row, partner position per row or -1)."""
    spec = renderer.spec
    lam, other = [1.0] * len(planned), [-1] * len(planned)
    mixes: list[tuple[int, int, MixParams]] = []
    for v in sorted(set(int(x) for x in views)):
        sel = [i for i, x in enumerate(views) if int(x) == v]
        for a, b, mix in batch_mixes(spec.recipe, spec.seed, v, [positions[i] for i in sel],
                                     [partners[i] for i in sel]):
            i, j = sel[a], sel[b]
            mixes.append((i, j, mix))
            lam[i] = lam[j] = mix_lambda(mix, spec.size, spec.size)
            other[i], other[j] = int(positions[j]), int(positions[i])
    return renderer.stack(planned, mixes), lam, other


def finish_batch(renderer: Renderer, payload: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """Main-process side: the batch's pixels, (N, H, W, 3) uint8 on ``device``."""
    return renderer.finish(payload, device)


def render_now(renderer: Renderer, samples: Sequence[tuple[int, int, int, str, Image.Image]],
               device: torch.device | str | None = None) -> torch.Tensor:
    """Plan, stack and finish at once: ``samples`` = (position, view, partner, key, image) held
    together (a pair's partner must be among them to be mixed). (N, H, W, 3) uint8."""
    planned = [renderer.plan(key, v, img) for _, v, _, key, img in samples]
    payload, _, _ = plan_batch(renderer, [s[0] for s in samples], [s[1] for s in samples],
                               [s[2] for s in samples], planned)
    return finish_batch(renderer, payload, device)


def prefetch_on_device(items, stage: Callable[[Any], Any], device: torch.device | str | None):
    """Yield ``stage(item)`` for each item, one item ahead on CUDA: the next item's stage (upload,
    render) is queued on a side stream before the current one is handed out, so it overlaps whatever
    the caller then runs on the current stream (the teacher, the student's step). Elsewhere: in line.
    Tensors ``stage`` returns (in dicts, tuples or lists) are made safe to use on the current stream."""
    device = None if device is None else torch.device(device)
    if device is None or device.type != "cuda":
        for item in items:
            yield stage(item)
        return
    main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    side.wait_stream(main)  # what the caller made before iterating (label rows, say) is ready first

    def staged(item):
        with torch.cuda.stream(side):
            return stage(item)

    def settle(x):  # made on the side stream, used on the main one: wait for it, keep its memory alive
        if torch.is_tensor(x):
            if x.is_cuda:
                x.record_stream(main)
        elif isinstance(x, dict):
            for v in x.values():
                settle(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                settle(v)

    it = iter(items)
    nxt = next(it, _END)
    nxt = _END if nxt is _END else staged(nxt)
    while nxt is not _END:
        main.wait_stream(side)
        cur = nxt
        settle(cur)
        nxt = next(it, _END)
        nxt = _END if nxt is _END else staged(nxt)  # queued now: overlaps the caller's work on `cur`
        yield cur


_END = object()
