"""What every bench part uses: interleaved timing, synthetic labels, and image folders to time on."""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .config import BenchConfig




def measure(contenders: dict[str, Callable[[], float]], repeats: int) -> dict[str, dict]:
    """Run each contender once per repeat, interleaved; each returns items done (we time it) or
    (items, seconds) when only part of its work is the thing measured."""
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    for fn in contenders.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in contenders.items():
            t = time.perf_counter()
            n = fn()
            n, dt = n if isinstance(n, tuple) else (n, time.perf_counter() - t)
            rates[name].append(n / dt)
    return {k: spread(v) for k, v in rates.items()}


def spread(xs: list[float]) -> dict:
    q = np.percentile(xs, [25, 75]) if len(xs) > 1 else (xs[0], xs[0])
    return {"median": statistics.median(xs), "iqr": float(q[1] - q[0]), "min": min(xs), "max": max(xs), "n": len(xs)}


def synthetic_logits(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """ImageNet-like teacher logits: one dominant class, a few confusable ones, a long tail."""
    base = rng.normal(0, 1.0, (n, num_classes)).astype(np.float32)
    cls = rng.integers(0, num_classes, n)
    rows = np.arange(n)
    base[rows, cls] += rng.uniform(4, 12, n)
    for j in range(1, 6):
        base[rows, (cls + 7 * j) % num_classes] += rng.uniform(0, 7 - j, n)
    return base


def stub_teacher_topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """relabel.teacher.topk_logprobs in numpy: the stub teacher needs no torch (memory stays small)."""
    lse = np.logaddexp.reduce(logits.astype(np.float64), axis=1, keepdims=True)
    idx = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(logits, idx, 1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx, top = np.take_along_axis(idx, order, 1), np.take_along_axis(top, order, 1) - lse
    rest = np.log(np.clip(-np.expm1(np.logaddexp.reduce(top, axis=1, keepdims=True)), 1e-30, None))
    return idx, np.concatenate([top, rest], 1).astype(np.float32)




def _jpeg_folder(root: Path, n: int, size=(320, 256)) -> Path:
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(n):
        d = root / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([(xx * (i + 1)) % 256, (yy * 3 + i) % 256, (xx + yy) % 256], -1) + rng.normal(0, 12, (h, w, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"img{i:05d}.jpg", quality=90)
    return root


def _class_map(folder: Path, tmp: str) -> str:
    """The bench's few folders as the first classes of a 1000-class (random-weight) teacher."""
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    path = os.path.join(tmp, f"classmap-{Path(folder).name}.json")
    Path(path).write_text(json.dumps({n: i for i, n in enumerate(names)}))
    return path




def _photo_folder(root: Path, n: int, seed: int = 4) -> Path:
    """ImageNet-like JPEGs: sizes around 500x375 (landscape, portrait, square), quality 90, soft
    objects + texture + noise, ~90 KB each (ImageNet's average is ~110 KB): decode cost like a photo's."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        w = int(rng.uniform(400, 600))
        h = int(w * rng.choice([0.75, 0.75, 4 / 3, 2 / 3, 1.0]))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        arr = np.zeros((h, w, 3), np.float32) + rng.uniform(60, 180, 3)
        for _ in range(12):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 200)
            arr += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None] * rng.uniform(-90, 90, 3)
        f = rng.uniform(0.05, 0.4, 2)
        arr += (18 * np.sin(xx * f[0] + yy * f[1]))[..., None] + rng.normal(0, 13, (h, w, 3))
        d = root / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"img{i:05d}.jpg", quality=90)
    return root

def _backend(cfg: BenchConfig) -> str | None:
    return None if cfg.compile_backend in ("", "none") else cfg.compile_backend
