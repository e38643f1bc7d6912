"""``relabel bench``: the performance numbers, measured side by side.

Each part runs its contenders in one process, interleaved over repeats (so drift in machine load
hits all of them alike), and reports median and spread. Speed does not depend on weights: models
without a checkpoint are randomly initialised.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer

PARTS = ("step", "loader", "labels", "generate", "size", "scale")


@dataclass
class BenchConfig:
    student: str = "deit_s"
    teacher: str = "tresnet_l_v2"
    batch_size: int = 16
    img_size: int = 224
    device: str = "auto"
    precision: str = "auto"
    repeats: int = 5
    workers: int = 2
    num_classes: int = 1000
    label_views: int = 1_000_000  # labels: store size
    scale_views: int = 10_000_000  # scale: views written
    gen_images: int = 32  # generate: images (each gets gen_views views)
    gen_views: int = 4
    steps: int = 3  # step: train steps per timed repeat


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


def synthetic_logits(n: int, num_classes: int, rng: np.random.Generator):
    """ImageNet-like teacher logits: one dominant class, a few confusable ones, a long tail."""
    import torch

    base = rng.normal(0, 1.0, (n, num_classes)).astype(np.float32)
    cls = rng.integers(0, num_classes, n)
    rows = np.arange(n)
    base[rows, cls] += rng.uniform(4, 12, n)
    for j in range(1, 6):
        base[rows, (cls + 7 * j) % num_classes] += rng.uniform(0, 7 - j, n)
    return torch.from_numpy(base)


# ------------------------------------------------------------------------------------ labels
def _synthetic_store(path: str, n: int, views: int, k: int, num_classes: int, rng, pool: int = 16384):
    """A store filled from a pool of precomputed top-k rows (a stub teacher)."""
    from storage import LabelStore, StoreHeader

    from .teacher import topk_logprobs

    idx_pool, lp_pool = (t.numpy() for t in topk_logprobs(synthetic_logits(pool, num_classes, rng), k))
    h = StoreHeader(num_samples=n, views=views, topk=k, num_classes=num_classes,
                    class_names=[str(i) for i in range(num_classes)], fingerprint="0" * 64,
                    teacher={"model": "stub"}, recipe={"name": "none"}, seed=0, img_size=224,
                    views_per_shard=min(10, views))
    store = LabelStore.create(path, h, [f"s{i:08d}" for i in range(n)])
    t0, peak = time.perf_counter(), 0
    for sh in store.pending_shards():
        rows = rng.integers(0, pool, (sh.v1 - sh.v0, sh.s1 - sh.s0))
        store.write_shard(sh, 0, idx_pool[rows], lp_pool[rows], np.ones(sh.s1 - sh.s0, np.uint8))
        peak = max(peak, _rss_mib())
    return store, time.perf_counter() - t0, peak


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_labels(cfg: BenchConfig, tmp: str) -> dict:
    from storage import LabelStore

    rng = np.random.default_rng(0)
    views = 10
    n = max(1, cfg.label_views // views)
    _synthetic_store(os.path.join(tmp, "labels"), n, views, 10, cfg.num_classes, rng)
    batch = 1024

    def epoch():
        store = LabelStore.open(os.path.join(tmp, "labels"))  # cold: nothing cached
        store.read_view(int(rng.integers(views)))
        return n

    reader = LabelStore.open(os.path.join(tmp, "labels"))

    def random_batches():
        for _ in range(20):
            reader.gather(rng.integers(0, n, batch), rng.integers(0, views, batch))
        return 20 * batch

    r = measure({"epoch": epoch, "random": random_batches}, cfg.repeats)
    return {"store_views": n * views, "epoch_views_per_s": r["epoch"]["median"],
            "random_views_per_s": r["random"]["median"], "random_batch": batch, "detail": r}


# ------------------------------------------------------------------------------------ size
def bench_size(cfg: BenchConfig, tmp: str) -> dict:
    """Bytes per view on disk and the fidelity of the stored encoding, at k = 5, 10, 20."""
    import torch

    from storage.encoding import ValueEncoding

    from .teacher import topk_logprobs

    rng = np.random.default_rng(1)
    n, views = 8192, 10
    out: dict = {"logits": f"synthetic ImageNet-like, {cfg.num_classes} classes (no pretrained teacher offline)"}
    logits = synthetic_logits(2048, cfg.num_classes, rng)
    full = torch.log_softmax(logits, -1)
    for k in (5, 10, 20):
        store, _, _ = _synthetic_store(os.path.join(tmp, f"size{k}"), n, views, k, cfg.num_classes, rng)
        out[f"bytes_per_view_k{k}"] = store.label_bytes() / (n * views)
        idx, lp = topk_logprobs(logits, k)
        enc = ValueEncoding()
        q = torch.from_numpy(enc.decode(enc.encode(lp.numpy())))
        p_exact, logq = lp.exp(), torch.log_softmax(q, -1)
        out[f"kl_loss_k{k}"] = float((p_exact * (lp - logq)).sum(-1).mean())
        # against the full distribution: top-k + leftover spread evenly over the other classes
        rest = logq[:, -1:] - np.log(cfg.num_classes - k)
        recon = rest.expand(-1, cfg.num_classes).clone().scatter(1, idx, logq[:, :k])
        out[f"kl_full_k{k}"] = float((full.exp() * (full - recon)).sum(-1).mean())
    return out


# ------------------------------------------------------------------------------------ scale
def bench_scale(cfg: BenchConfig, tmp: str) -> dict:
    rng = np.random.default_rng(2)
    views = 10
    n = max(1, cfg.scale_views // views)
    before = _rss_mib()
    _, seconds, peak = _synthetic_store(os.path.join(tmp, "scale"), n, views, 10, cfg.num_classes, rng)
    return {"views": n * views, "views_per_s": n * views / seconds, "seconds": seconds,
            "rss_start_mib": before, "peak_rss_mib": peak,
            "peak_rss_max_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ------------------------------------------------------------------------------------ generate
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


def bench_generate(cfg: BenchConfig, tmp: str) -> dict:
    """Stage one's views/s against the teacher's forward pass alone on the same pixels and batch."""
    import shutil

    import torch

    from .generate import GenerateConfig, generate
    from .teacher import Teacher

    folder = _jpeg_folder(Path(tmp) / "gen_images", cfg.gen_images)
    gcfg = GenerateConfig(data=str(folder), out="", teacher=cfg.teacher, views=cfg.gen_views, topk=5,
                          img_size=cfg.img_size, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                          precision=cfg.precision, samples_per_shard=64, views_per_shard=cfg.gen_views,
                          progress=False, random_teacher=True)
    teacher = Teacher(cfg.teacher, device=cfg.device, precision=cfg.precision, pretrained=False)
    total = cfg.gen_images * cfg.gen_views
    pixels = torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    runs = [0]

    def full():
        out = os.path.join(tmp, f"gen{runs[0]}")
        runs[0] += 1
        s = generate(GenerateConfig(**{**asdict(gcfg), "out": out}))
        shutil.rmtree(out, ignore_errors=True)
        return s["views_written"], s["seconds"]  # the pipeline, not model construction

    def teacher_only():
        done = 0
        while done < total:
            teacher.topk(pixels, 5)
            done += cfg.batch_size
        if teacher.device.type == "cuda":
            torch.cuda.synchronize()
        return done

    r = measure({"generate": full, "teacher_only": teacher_only}, cfg.repeats)
    return {"views_per_s": r["generate"]["median"], "teacher_only_views_per_s": r["teacher_only"]["median"],
            "ratio": r["generate"]["median"] / r["teacher_only"]["median"], "detail": r,
            "views_per_run": total, "workers": cfg.workers}
