"""Pillow's resize passes as torch kernels: every kernel gives Resample.c's bytes, so which one runs
changes speed only, and the renderer picks it per device by timing them (``KernelPicker``).

A kernel runs one pass of ``ImagingResample{Horizontal,Vertical}_8bpc`` over a chunk of views,
(G, H, W, 3) uint8 -> that axis resized, from the chunk's fixed-point taps (``packed._tables``:
(2, G, out, K) int64, a tap's column from the box's start and its int32 coefficient, unused taps
(0, 0)): out = clip8(2**21 + sum(pixel * k)), clip8 = clamp(x >> 22, 0, 255).

* ``matmul``: each view's taps as a dense (out, in) float64 matrix, one batched matmul per pass.
  Few ops, but every output multiplies the whole crop (mostly zeros) in FP64, which most GPUs below
  datacenter cards run at 1/32-1/64 of FP32. Exact: integers below 2**53, in any reduction order.
* ``taps``: Pillow's own loop, batched: per tap, each output's input row is gathered
  (``index_select`` of contiguous rows: the resized axis is put first) and multiply-added with its
  int32 coefficient. Integer arithmetic over the filter's support only: no FP64, no TF32.

The taps kernel accumulates in int32 (as Resample.c's ``int ss``) when the chunk's tables bound
every partial sum inside int32 (``packed._tables`` checks it on the host: a partial sum lies in
[2**21 + 255 * sum(negative k), 2**21 + 255 * sum(positive k)]; Pillow's filters reach about 1.29 *
2**22 of positive weight, the limit is 2.006 * 2**22), else in int64 (``wide``): exact either way.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch

from relabel.errors import ConfigError, named
from relabel.settings import RENDER_KERNELS  # --render-kernel: auto times the others on the device

from .resample import _PRECISION_BITS, _fixed_to_u8

log = logging.getLogger(__name__)
_HALF = 1 << (_PRECISION_BITS - 1)


# ------------------------------------------------------------------------------------ matmul
def _matrices(tables: torch.Tensor, length: int) -> torch.Tensor:
    """(G, out, length) float64 from the taps; exact: a cell gets one integer plus zeros."""
    cols, vals = tables[0], tables[1]
    m = torch.zeros((*cols.shape[:2], length), dtype=torch.float64, device=cols.device)
    return m.scatter_add_(2, cols, vals.to(torch.float64))


def _matmul(t: torch.Tensor, tables: torch.Tensor, axis: str, wide: bool) -> torch.Tensor:
    """One pass as a batched float64 matmul over integers, then clip8; between passes the pixels
    stay uint8 (0..255 integers), so a pass rearranges bytes, not float64s."""
    G, H, W, _ = t.shape
    if axis == "h":
        k = _matrices(tables, W)  # (G, out_w, W)
        x = t.permute(0, 1, 3, 2).reshape(G, H * 3, W).to(torch.float64)
        y = _fixed_to_u8(torch.bmm(x, k.transpose(1, 2)))
        return y.to(torch.uint8).reshape(G, H, 3, k.shape[1]).permute(0, 1, 3, 2)
    k = _matrices(tables, H)  # (G, out_h, H)
    y = _fixed_to_u8(torch.bmm(k, t.reshape(G, H, W * 3).to(torch.float64)))
    return y.to(torch.uint8).reshape(G, k.shape[1], W, 3)


# ------------------------------------------------------------------------------------ taps
# A pass works on tiles of output rows so its temporaries stay within a budget: on a CPU the int32
# accumulator stays in cache (5-8x faster than one pass over a 50 MB accumulator, measured on 1
# core); elsewhere a tile is the whole chunk unless it is huge. Taps run one at a time (a gather and
# a fused multiply-add) up to _TAP_STEPS per pass; a wider filter (a long side shrunk many times)
# takes its taps in blocks (gather, multiply, sum), so a pass never issues thousands of ops.
_TILE_BYTES = {"cpu": 1 << 21}
_TILE_BYTES_OTHER = 1 << 29
_TAP_STEPS = 32


def _rows_first(t: torch.Tensor, axis: str) -> torch.Tensor:
    """(G, N, M, 3) with the resized axis N first, so one tap of every output is a contiguous row."""
    return (t if axis == "v" else t.transpose(1, 2)).contiguous()


def _taps(t: torch.Tensor, tables: torch.Tensor, axis: str, wide: bool) -> torch.Tensor:
    """One pass as Resample.c's loop: acc = 2**21 + sum over taps of pixel * k, then clip8."""
    x = _rows_first(t, axis)
    G, N, M, _ = x.shape
    L = 3 * M
    flat = x.view(G * N, L)
    out, K = tables.shape[2], tables.shape[3]
    n = G * out
    acc_t = torch.int64 if wide else torch.int32
    # (K, G*out): tap j of output o of view g reads row g*N + col; its coefficient, as (K, G*out, 1)
    src = (tables[0] + torch.arange(G, device=t.device).view(G, 1, 1) * N).permute(2, 0, 1).reshape(K, n)
    k = tables[1].permute(2, 0, 1).reshape(K, n, 1).to(acc_t)
    block = -(-K // _TAP_STEPS)
    per_row = L * (acc_t.itemsize + (block * (1 + acc_t.itemsize) if block > 1 else 1))
    rows = max(1, min(n, _TILE_BYTES.get(t.device.type, _TILE_BYTES_OTHER) // per_row))
    res = torch.empty((n, L), dtype=torch.uint8, device=t.device)
    for s in range(0, n, rows):
        e = min(n, s + rows)
        acc = torch.full((e - s, L), _HALF, dtype=acc_t, device=t.device)
        for j in range(0, K, block):
            if block == 1:
                acc.addcmul_(flat.index_select(0, src[j, s:e]), k[j, s:e])
            else:
                j1 = min(K, j + block)
                got = flat.index_select(0, src[j:j1, s:e].reshape(-1)).view(j1 - j, e - s, L)
                acc.add_((got * k[j:j1, s:e]).sum(0, dtype=acc_t))
        res[s:e] = acc.bitwise_right_shift_(_PRECISION_BITS).clamp_(0, 255)
    y = res.view(G, out, M, 3)
    return y if axis == "v" else y.transpose(1, 2)


# ------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class ResizeKernel:
    """A resize pass kernel: ``run(t, tables, axis, wide)`` -> ``t`` with ``axis`` ("h" or "v")
    resized by the chunk's taps (``wide``: accumulate in int64, ``packed._tables``)."""
    name: str
    run: Callable[[torch.Tensor, torch.Tensor, str, bool], torch.Tensor]


KERNELS: dict[str, ResizeKernel] = {k.name: k for k in (ResizeKernel("matmul", _matmul), ResizeKernel("taps", _taps))}
assert RENDER_KERNELS == ("auto", *KERNELS)


# ------------------------------------------------------------------------------------ the pick
T = TypeVar("T")


def _sync(device: torch.device) -> None:
    """Wait for the work queued on ``device``'s current stream (the stream the render runs on; a
    teacher's work queued on another stream is not waited for)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    elif device.type != "cpu":
        mod = getattr(torch, device.type, None)
        if mod is not None and hasattr(mod, "synchronize"):
            mod.synchronize()


class KernelPicker:
    """The resize kernel per device: ``kernel`` forced (no timing), or ``auto``: on a device's first
    ``trials`` batches every kernel renders the same real batch (the first time also untimed, as a
    warm-up: allocator, library and kernel loading), the one with the best time (its fastest batch:
    the least disturbed by whatever else the machine runs) is kept for that device and logged once.
    All kernels give the same bytes, so the pick changes speed only; while timing, their outputs
    must agree byte for byte (else ConfigError: a device or library bug this check met first).
    ``chosen``: device -> the kernel in use; ``timings``: device -> kernel -> seconds per batch."""

    def __init__(self, kernel: str = "auto", trials: int = 2):
        if kernel not in RENDER_KERNELS:
            raise ValueError(f"unknown render kernel {kernel!r}; use one of {', '.join(RENDER_KERNELS)}")
        self.kernel, self.trials = kernel, trials
        self.chosen: dict[str, str] = {}
        self.timings: dict[str, dict[str, list[float]]] = {}

    def kernel_for(self, device) -> str | None:
        """The kernel ``device`` uses: the forced one, the one timed best, or None while timing."""
        return self.kernel if self.kernel != "auto" else self.chosen.get(str(torch.device(device)))

    def run(self, device, resize: Callable[[str], T]) -> T:
        """``resize(kernel name)`` with this device's kernel; while timing, every kernel's (equal) result."""
        device = torch.device(device)
        name = self.kernel_for(device)
        if name is not None:
            return resize(name)
        times = self.timings.setdefault(str(device), {})
        names = list(KERNELS)
        if len(times.get(names[0], ())) % 2:  # alternate the order: drift hits every kernel alike
            names.reverse()
        outs = {}
        for name in names:
            if name not in times:
                resize(name)
            _sync(device)
            t0 = time.perf_counter()
            outs[name] = resize(name)
            _sync(device)
            times.setdefault(name, []).append(time.perf_counter() - t0)
        out = outs[names[0]]
        for name in names[1:]:  # every kernel rendered this batch: a free check that they agree here
            if not torch.equal(outs[name], out):
                raise ConfigError(f"the resize kernels {names[0]} and {name} give different bytes on {device}; "
                                  f"set {named('render_kernel', names[0])} or {named('renderer', 'pillow')} "
                                  f"(and report it)")
        if len(times[names[0]]) >= self.trials:
            best = min(times, key=lambda k: min(times[k]))
            self.chosen[str(device)] = best
            log.info("render kernel on %s: %s (best ms per batch over %d batches: %s)", device, best, self.trials,
                     ", ".join(f"{k} {1000 * min(v):.1f}" for k, v in times.items()))
        return out
