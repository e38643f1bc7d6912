"""``relabel bench``: the performance numbers, measured side by side.

Each part runs its contenders in one process, interleaved over repeats (so drift in machine load
hits all of them alike), and reports median and spread. Speed does not depend on weights: models
without a checkpoint are randomly initialised.
"""
from __future__ import annotations

import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import typer

from relabel.settings import DEVICE_HELP, check_settings, device_name, setting

from .options import command_from

PARTS = ("step", "loader", "labels", "generate", "size", "scale", "precision", "feed")


@dataclass
class BenchConfig:
    student: str = setting("deit_s", help="Student model.")
    teacher: str = setting("tresnet_l_v2", help="Teacher model (random weights: speed does not depend on them).")
    batch_size: int = setting(16, ge=2, help="Batch size.")
    img_size: int = setting(224, ge=8, le=4096, help="Image size.")
    device: str = setting("auto", check=device_name, help=DEVICE_HELP)
    precision: str = setting("auto", choices=("auto", "fp32", "fp16", "bf16"), help="Teacher precision in generate: auto, fp32, fp16, bf16.")
    repeats: int = setting(5, ge=1, help="Timed repeats per contender (interleaved).")
    workers: int = setting(2, ge=0, help="DataLoader workers.")
    label_views: int = setting(1_000_000, ge=1, help="labels: views in the on-disk store.")
    scale_views: int = setting(10_000_000, ge=1, help="scale: views written.")
    gen_images: int = setting(32, ge=1, help="generate: images.")  # each gets gen_views views
    gen_views: int = setting(4, ge=1, help="generate: views per image.")
    steps: int = setting(3, ge=1, help="step: train steps per timed repeat.")
    teacher_checkpoint: str | None = setting(  # random weights understate the noise
        None, help="precision: trained teacher weights (random ones understate).")
    data: str | None = setting(  # default: synthetic JPEGs
        None, help="precision: an ImageFolder whose views the teacher sees.")
    compile_backend: str = setting("inductor", help="step/generate: torch.compile backend of the compiled "
                                                    "contenders (none: skip them).")
    feed_images: int = setting(  # two mix groups, one per worker
        128, ge=2, help="feed: ImageNet-like JPEGs (~500x375, q90).")
    feed_views: int = setting(10, ge=1, help="feed: stage-one views per image (one shard block).")
    sweep_students: int = setting(5, ge=1, help="sweep: students trained from one label set.")  # S students x E epochs
    sweep_epochs: int = setting(300, ge=1, help="sweep: epochs per student.")
    sweep_views: int = setting(10, ge=1, help="sweep: stored views per image.")
    sweep_images: int = setting(1_281_167, ge=1, help="sweep: training images (default: ImageNet-1k).")
    num_classes: int = setting(1000, cli=False, ge=2, help="Classes of the synthetic labels.")

    __post_init__ = check_settings


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


# ------------------------------------------------------------------------------------ labels
def _synthetic_store(path: str, n: int, views: int, k: int, num_classes: int, rng, pool: int | None = 65536,
                     samples_per_shard: int = 16384):
    """A store written by a stub teacher: rows drawn from a pool of precomputed top-k rows (speed),
    or fresh logits for every view when ``pool`` is None (sizes: no repeats for zstd to find)."""
    from relabel.storage import LabelStore, StoreHeader
    from relabel.storage.order import store_order

    if pool is not None:  # in slices: the pool's logits never sit in memory at once
        parts = [stub_teacher_topk(synthetic_logits(min(4096, pool - i), num_classes, rng), k) for i in range(0, pool, 4096)]
        idx_pool, lp_pool = (np.concatenate([p[j] for p in parts]) for j in (0, 1))
    h = StoreHeader(num_samples=n, views=views, topk=k, num_classes=num_classes,
                    class_names=[str(i) for i in range(num_classes)], fingerprint="0" * 64,
                    teacher={"model": "stub"}, recipe={"name": "none"}, seed=0, img_size=224,
                    views_per_shard=min(10, views), samples_per_shard=samples_per_shard)
    store = LabelStore.create(path, h, store_order([f"s{i:08d}" for i in range(n)], h.seed))
    t0, peak = time.perf_counter(), _rss_mib()
    start = peak
    for sh in store.pending_shards():
        shape = (sh.v1 - sh.v0, sh.s1 - sh.s0)
        if pool is not None:
            rows = rng.integers(0, pool, shape)
            idx, lp = idx_pool[rows], lp_pool[rows]
        else:
            idx, lp = (a.reshape(*shape, -1) for a in stub_teacher_topk(synthetic_logits(shape[0] * shape[1], num_classes, rng), k))
        store.write_shard(sh, 0, idx, lp, np.ones(sh.s1 - sh.s0, np.uint8))
        peak = max(peak, _rss_mib())
    return store, time.perf_counter() - t0, (start, peak)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_labels(cfg: BenchConfig, tmp: str) -> dict:
    from relabel.storage import LabelStore

    rng = np.random.default_rng(0)
    views = 10
    n = max(1, cfg.label_views // views)
    _synthetic_store(os.path.join(tmp, "labels"), n, views, 10, cfg.num_classes, rng)
    batch = 1024
    epochs = LabelStore.open(os.path.join(tmp, "labels"))  # as a trainer holds it; chunks are not cached

    def epoch():
        epochs.read_view(int(rng.integers(views)))
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

    from relabel.storage.encoding import ValueEncoding

    from relabel.teacher import topk_logprobs

    rng = np.random.default_rng(1)
    n, views = 16384, 4
    out: dict = {"logits": f"synthetic ImageNet-like, {cfg.num_classes} classes (no pretrained teacher offline)"}
    logits = torch.from_numpy(synthetic_logits(2048, cfg.num_classes, rng))
    full = torch.log_softmax(logits, -1)
    for k in (5, 10, 20):
        store, _, _ = _synthetic_store(os.path.join(tmp, f"size{k}"), n, views, k, cfg.num_classes, rng, pool=None)
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
    out.update(_correlated_size(cfg, tmp, rng))
    return out


def correlated_views(base: np.ndarray, views: int, rng, noise: float = 0.3, mixed: bool = False):
    """Logits of ``views`` views per sample: the sample's own logits, scaled per view (a tight crop is
    surer than a loose one) plus per-class noise; ``mixed``: each view's probabilities mixed with a
    random partner's (USI's recipe mixes every view, each with another partner). Yields per view."""
    n = len(base)
    for _ in range(views):
        lg = rng.uniform(0.7, 1.1, (n, 1)).astype(np.float32) * base
        lg += noise * rng.standard_normal(base.shape, dtype=np.float32)
        if mixed:
            p = np.exp(lg - lg.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            lam = rng.beta(1.0, 1.0, (n, 1)).astype(np.float32)
            lg = np.log(lam * p + (1 - lam) * p[rng.permutation(n)] + 1e-30)
        yield lg


def _fast_topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """stub_teacher_topk with a float32 log-sum-exp (1e-6 nats apart; the q8 step is 6e-2): sizes only."""
    m = logits.max(1, keepdims=True)
    lse = m + np.log(np.exp(logits - m).sum(1, keepdims=True))
    idx = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(logits, idx, 1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx, top = np.take_along_axis(idx, order, 1), np.take_along_axis(top, order, 1) - lse
    rest = np.log(np.clip(-np.expm1(np.logaddexp.reduce(top.astype(np.float64), axis=1, keepdims=True)), 1e-30, None))
    return idx, np.concatenate([top, rest], 1).astype(np.float32)


def _correlated_size(cfg: BenchConfig, tmp: str, rng) -> dict:
    """Bytes per view at k=10 when a sample's views share their top classes (real teachers do; the
    fresh-logit sizes above are the worst case), with the store's format and with the best codec
    found for it (numcodecs: byte shuffle on indices, delta over ranks on values)."""
    import torch
    from numcodecs import Blosc, Zstd

    from relabel.storage import LabelStore, StoreHeader
    from relabel.storage.order import store_order
    from relabel.storage.encoding import ValueEncoding


    n, views, k, C = min(16384, max(1024, cfg.label_views // 10)), 10, 10, cfg.num_classes  # one chunk per view
    base = synthetic_logits(n, C, rng)
    enc, out = ValueEncoding(), {}
    for mixed in (False, True):
        h = StoreHeader(num_samples=n, views=views, topk=k, num_classes=C, class_names=[str(i) for i in range(C)],
                        fingerprint="0" * 64, teacher={"model": "stub"}, recipe={"name": "none"}, seed=0,
                        img_size=224, views_per_shard=views, samples_per_shard=n)
        path = os.path.join(tmp, f"size-corr{int(mixed)}")
        store = LabelStore.create(path, h, store_order([f"s{i:08d}" for i in range(n)], h.seed))
        idx, lp = zip(*(_fast_topk(lg, k) for lg in correlated_views(base, views, rng, mixed=mixed)))
        idx, lp = np.stack(idx), np.stack(lp)
        store.write_shard(store.shard(0, 0), 0, idx, lp, np.ones(n, np.uint8))
        tag = "_mixed" if mixed else ""
        out[f"bytes_per_view_k10_correlated{tag}"] = store.label_bytes() / (n * views)
        out[f"top10_overlap_with_view0{tag}"] = float(np.mean(
            [len(np.intersect1d(idx[v, s], idx[0, s])) for v in range(1, views) for s in range(0, n, 64)]))
        if not mixed:
            t_lp = torch.from_numpy(lp[0])
            q = torch.from_numpy(enc.decode(enc.encode(lp[0])))
            out["kl_loss_k10_correlated"] = float((t_lp.exp() * (t_lp - torch.log_softmax(q, -1))).sum(-1).mean())
            best = 0
            for v in range(views):  # per view, as the store chunks them (the epoch read stays one chunk)
                q8 = enc.encode(lp[v])
                q8[:, 1:k] = np.diff(q8[:, :k].astype(np.int16), axis=1).astype(np.uint8)  # ranks ascend in -log p
                best += len(Blosc("zstd", 9, Blosc.SHUFFLE).encode(np.ascontiguousarray(idx[v].astype(h.index_dtype))))
                best += len(Zstd(9).encode(q8.tobytes()))
            out["bytes_per_view_k10_correlated_best_codec"] = best / (n * views)
        shutil.rmtree(path, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------ scale
def bench_scale(cfg: BenchConfig, tmp: str) -> dict:
    """Write many views through the store with a stub teacher; memory must stay flat."""
    rng = np.random.default_rng(2)
    views = 10
    n = max(1, cfg.scale_views // views)
    _, seconds, (start, peak) = _synthetic_store(os.path.join(tmp, "scale"), n, views, 10, cfg.num_classes, rng,
                                                 pool=16384)
    return {"views": n * views, "views_per_s": n * views / seconds, "seconds": seconds,
            "rss_writing_start_mib": start, "peak_rss_mib": peak, "rss_growth_mib": peak - start}


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


def _class_map(folder: Path, tmp: str) -> str:
    """The bench's few folders as the first classes of a 1000-class (random-weight) teacher."""
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    path = os.path.join(tmp, f"classmap-{Path(folder).name}.json")
    Path(path).write_text(json.dumps({n: i for i, n in enumerate(names)}))
    return path


def bench_generate(cfg: BenchConfig, tmp: str) -> dict:
    """Stage one's views/s against the teacher's forward pass alone on the same pixels and batch."""
    import shutil

    import torch

    from relabel.stages.generate import GenerateConfig, generate
    from relabel.teacher import Teacher, start_topk

    folder = _jpeg_folder(Path(tmp) / "gen_images", cfg.gen_images)
    gcfg = GenerateConfig(data=str(folder), out="", teacher=cfg.teacher, views=cfg.gen_views, topk=5,
                          class_map=_class_map(folder, tmp),
                          img_size=cfg.img_size, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                          precision=cfg.precision, samples_per_shard=64, views_per_shard=cfg.gen_views,
                          progress=False)
    # Random weights: speed does not depend on them (generate takes the ready teacher object).
    teacher = Teacher(cfg.teacher, device=cfg.device, precision=cfg.precision, pretrained=False)
    compiled = None
    if _backend(cfg):  # the same random weights, compiled: forward time is all that differs
        compiled = Teacher(cfg.teacher, device=cfg.device, precision=cfg.precision, pretrained=False,
                           compile=_backend(cfg))
        compiled.model.load_state_dict(teacher.model.state_dict())
    total = cfg.gen_images * cfg.gen_views
    pixels = torch.randint(0, 256, (cfg.batch_size, 3, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    runs = [0]

    def full():
        out = os.path.join(tmp, f"gen{runs[0]}")
        runs[0] += 1
        s = generate(GenerateConfig(**{**asdict(gcfg), "out": out}), teacher=teacher)
        shutil.rmtree(out, ignore_errors=True)
        return s.views_written, s.seconds  # the pipeline, not model construction

    def teacher_only(teacher=teacher):  # as generate drives it: pixels on the device, read back one batch late
        on_device, done, pending = pixels.to(teacher.device), 0, None
        while done < total:
            started = start_topk(teacher, on_device, 5)
            if pending is not None:
                pending.result()
            pending = started
            done += cfg.batch_size
        pending.result()
        return done

    contenders = {"generate": full, "teacher_only": teacher_only}
    if compiled is not None:  # measure()'s warm-up call pays the compilation
        contenders["compiled_teacher_only"] = lambda: teacher_only(compiled)
    r = measure(contenders, cfg.repeats)
    out = {"views_per_s": r["generate"]["median"], "teacher_only_views_per_s": r["teacher_only"]["median"],
           "ratio": r["generate"]["median"] / r["teacher_only"]["median"], "detail": r,
           "views_per_run": total, "workers": cfg.workers}
    if compiled is not None:
        out.update(compiled_teacher_only_views_per_s=r["compiled_teacher_only"]["median"],
                   compiled_vs_eager=r["compiled_teacher_only"]["median"] / r["teacher_only"]["median"],
                   compile_backend=_backend(cfg))
        with torch.inference_mode():  # the compiled teacher's labels are the eager one's (verify's check)
            out["compiled_max_logit_diff"] = float((compiled.logits(pixels) - teacher.logits(pixels)).abs().max())
    return out


def _backend(cfg: BenchConfig) -> str | None:
    return None if cfg.compile_backend in ("", "none") else cfg.compile_backend


def bench_precision(cfg: BenchConfig, tmp: str) -> dict:
    """How far reduced-precision teacher outputs are from fp32 on the same views, next to the q8
    rounding (step/2): the evidence behind the GPU default. Not a speed: errors in nats."""
    import torch

    from relabel.storage import open_source
    from relabel.storage.encoding import ValueEncoding

    from relabel.teacher import Teacher, topk_logprobs
    from relabel.views import ViewRenderer, create_recipe, decode_image

    folder = cfg.data or str(_jpeg_folder(Path(tmp) / "prec_images", max(cfg.gen_images, 64)))
    src = open_source(folder)
    teachers = {p: Teacher(cfg.teacher, cfg.teacher_checkpoint, device=cfg.device, precision=p,
                           pretrained=False) for p in ("fp32", "bf16", "fp16")}
    size = cfg.img_size or teachers["fp32"].info.input_size
    r = ViewRenderer(create_recipe("usi"), 0, size)
    n = min(len(src), 256)
    pix = torch.from_numpy(np.stack([r.render(src.keys[i], v, decode_image(src.read(i)))
                                     for i in range(n) for v in range(2)])).permute(0, 3, 1, 2)
    k = min(10, teachers["fp32"].num_classes - 1)
    ref_logits = torch.cat([teachers["fp32"].logits(pix[b:b + cfg.batch_size]).cpu()
                            for b in range(0, len(pix), cfg.batch_size)])
    idx, ref = topk_logprobs(ref_logits, k)
    out = {"views": len(pix), "topk": k, "q8_half_step": ValueEncoding("q8").max_error,
           "weights": "checkpoint" if cfg.teacher_checkpoint else "random"}
    for p in ("bf16", "fp16"):
        t = teachers[p]
        try:
            logits = torch.cat([t.logits(pix[b:b + cfg.batch_size]).cpu() for b in range(0, len(pix), cfg.batch_size)])
        except RuntimeError as e:  # a device without that autocast dtype
            out[f"{p}_error"] = str(e)[:100]
            continue
        lp = torch.log_softmax(logits.float(), -1)
        top = lp.gather(1, idx)
        rest = torch.logsumexp(lp.scatter(1, idx, float("-inf")), 1, keepdim=True)
        err = (torch.cat([top, rest], 1) - ref).abs()
        out[f"{p}_max_err"] = float(err.max())
        out[f"{p}_mean_err"] = float(err.mean())
        out[f"{p}_top1_agree"] = float((lp.argmax(1) == idx[:, 0]).float().mean())
        out[f"{p}_vs_q8"] = out[f"{p}_mean_err"] / out["q8_half_step"]
    return out


# ------------------------------------------------------------------------------------ feed
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


def _torch_finish_cost(cfg: BenchConfig, folder: Path, dev) -> dict:
    """The torch renderer's device stage on one packed batch of 128 USI views, with each resize
    kernel (``views.kernels``) on the same batch, interleaved over repeats: milliseconds per batch,
    top-level torch ops per view (each one a kernel launch or a copy on a GPU: the host's share of
    the work, whatever the device), which kernel ``auto`` picks on this device (timing the batch as
    a run's first batches are timed), the render cost model (``_cost_model``), and what the batch's
    payload costs to cross from a DataLoader worker (``crossing``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from relabel.views import (RECIPES, ViewRenderer, create_renderer, decode_image, finish_batch, group_partners,
                               plan_batch)
    from relabel.views.kernels import KERNELS

    recipe, G = RECIPES["usi"], RECIPES["usi"].mix_group
    images = [decode_image(p.read_bytes()) for p in sorted(Path(folder).rglob("*.jpg"))]
    renderer = create_renderer("torch", ViewRenderer(recipe, 0, cfg.img_size))  # auto: picks on this batch
    forced = {k: create_renderer("torch", ViewRenderer(recipe, 0, cfg.img_size), kernel=k) for k in KERNELS}
    n = len(images)
    pos, views = [i % n for i in range(128)], [i // n for i in range(128)]

    def partner(p: int, v: int) -> int:
        g0 = p - p % G
        return int(group_partners(recipe, 0, v, g0, min(G, n - g0))[p - g0])

    planned = [renderer.plan(f"k{p}", v, images[p]) for p, v in zip(pos, views)]
    payload, _, _ = plan_batch(renderer, pos, views, [partner(p, v) for p, v in zip(pos, views)], planned)

    def pinned(x):  # as the DataLoader hands a batch over on a GPU machine
        if isinstance(x, torch.Tensor):
            return x.pin_memory()
        if isinstance(x, dict):
            return {k: pinned(v) for k, v in x.items()}
        return [pinned(v) for v in x] if isinstance(x, list) else x

    if dev.type == "cuda":
        payload = pinned(payload)

    def run(r=renderer) -> None:
        finish_batch(r, payload, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    while renderer.kernels.kernel_for(dev) is None:  # auto: every kernel timed on this batch, one kept
        run()
    picked = renderer.kernels.kernel_for(dev)
    ops, times = {}, {k: [] for k in forced}
    for k, r in forced.items():
        run(r)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(r)
        ops[k] = sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))
    for _ in range(max(1, cfg.repeats)):
        for k, r in forced.items():
            t0 = time.perf_counter()
            run(r)
            times[k].append(time.perf_counter() - t0)
    def fresh(x):  # new tensors, as each real batch is: the worker must put them in shared memory
        if isinstance(x, torch.Tensor):
            return x.clone()
        if isinstance(x, dict):
            return {k: fresh(v) for k, v in x.items()}
        return [fresh(v) for v in x] if isinstance(x, list) else x

    def crossing(new: bool) -> float:
        """ms per batch through one worker: the same payload again (already in shared memory: the
        main process's cost of taking a batch), or a fresh one each time (the worker's cost too)."""
        class Repeat(torch.utils.data.IterableDataset):
            def __iter__(self):
                return ((fresh(payload) if new else payload) for _ in range(1 + 8 * max(1, cfg.repeats)))

        handed = iter(torch.utils.data.DataLoader(Repeat(), batch_size=None, num_workers=1))
        next(handed)  # the worker has started
        t0 = time.perf_counter()
        n = sum(1 for _ in handed)
        return 1000 * (time.perf_counter() - t0) / n

    ms = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return {"torch_finish_ms_per_batch": ms[picked], "torch_finish_ops_per_view": ops[picked] / 128,
            **{f"torch_finish_ms_per_batch_{k}": v for k, v in ms.items()},
            **{f"torch_finish_ops_per_view_{k}": v / 128 for k, v in ops.items()},
            "torch_render_kernel_auto": picked,
            "torch_render_kernel_auto_ms": {k: 1000 * min(v) for k, v in renderer.kernels.timings[str(dev)].items()},
            "torch_payload_take_ms_per_batch": crossing(False), "torch_payload_fresh_ms_per_batch": crossing(True),
            "cost_model": _cost_model({k: (lambda r=r: run(r)) for k, r in forced.items()}, 128, cfg.img_size)}


# ------------------------------------------------------------------------------------ render cost model
# Published peak rates: TFLOPS / TOPS count a fused multiply-add as 2 operations (so one elementwise
# instruction per lane and clock is half the figure), FP64 "matrix" is the tensor-core rate cuBLAS
# reaches in a float64 matmul (None: no FP64 tensor cores, the vector rate applies). Figures marked
# derived are not on the data sheet: GA10x/AD10x SMs (compute capability 8.6/8.9) run 2 FP64 and 64
# INT32 lanes beside their 128 FP32 lanes (CUDA C++ Programming Guide, arithmetic throughput table),
# so FP64 = FP32/64 and INT32 = FP32/2 there.
_GPUS = (  # name, FP64 vector, FP64 matrix, FP32, INT32 (TFLOPS/TOPS), memory GB/s, source
    ("H200 SXM", 33.5, 66.9, 66.9, 33.5, 4800, "H200 datasheet (4.8 TB/s); compute as H100 SXM (same GH100)"),
    ("H100 SXM", 33.5, 66.9, 66.9, 33.5, 3350, "H100 whitepaper (FP64 33.5/66.9, FP32 66.9, INT32 33.5), datasheet"),
    ("A100 SXM 80GB", 9.7, 19.5, 19.5, 19.5, 2039, "A100 datasheet; INT32 = FP32 (64 INT32 lanes/SM, A100 whitepaper)"),
    ("L40S", 1.43, None, 91.6, 45.8, 864, "L40S datasheet (FP32, GB/s); FP64, INT32 derived"),
    ("L4", 0.47, None, 30.3, 15.1, 300, "L4 datasheet (FP32, GB/s); FP64, INT32 derived"),
    ("A10", 0.49, None, 31.2, 15.6, 600, "A10 datasheet (FP32, GB/s); FP64, INT32 derived"),
    ("RTX 4090", 1.29, None, 82.6, 41.3, 1008, "Ada (AD102) whitepaper (FP32, GB/s); FP64, INT32 derived"),
    ("RTX 3090", 0.56, None, 35.6, 17.8, 936, "Ampere GA102 whitepaper (FP32, GB/s); FP64, INT32 derived"),
)
_COUNTS = ("fp64_matmul_flops", "fp64_ops", "fp32_ops", "int_ops", "bytes_moved", "bytes_gathered", "torch_ops")


def _op_counter():
    """A dispatch mode that tallies what each aten op a render runs does, by ``section``: matmul
    FLOPs (2mnk), elementwise instructions by the precision they run in (float64 if any operand is,
    a conversion to or from float64 included; else float32; else integer), bytes read and written
    (every operand once, a broadcast one by its own size; nothing kept in cache between ops), bytes
    gathered (the output of gathers), and ops (views excluded: they launch nothing)."""
    from collections import Counter

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    aten = torch.ops.aten
    matmuls = {aten.bmm.default, aten.mm.default, aten.addmm.default, aten.baddbmm.default}
    gathers = {aten.gather.default, aten.index_select.default, aten.index.Tensor}
    moves = {aten.copy_.default, aten._to_copy.default, aten.clone.default, aten.cat.default, aten.stack.default,
             aten.flip.default, aten.where.self, aten.index_put_.default, aten._index_put_impl_.default,
             aten.scatter_add_.default, aten.fill_.Scalar, aten.zeros.default, aten.full.default, aten.arange.start,
             aten.arange.default, aten.empty.memory_format, aten.empty_strided.default, aten.zeros_like.default,
             aten.full_like.default, aten.empty_like.default, aten.ones_like.default, aten.zero_.default}

    def own_bytes(t) -> int:
        n = 1
        for size, stride in zip(t.shape, t.stride()):
            n *= size if stride else 1
        return n * t.element_size()

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.section, self.tally = "rest", {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if getattr(func, "is_view", False):
                return out
            ins = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            c = self.tally.setdefault(self.section, Counter())
            c["torch_ops"] += 1
            if func in gathers:
                got = sum(t.numel() * t.element_size() for t in outs)
                c["bytes_gathered"] += got
                c["bytes_moved"] += 2 * got + sum(own_bytes(t) for t in ins if t.dtype == torch.int64)
                return out
            c["bytes_moved"] += sum(own_bytes(t) for t in ins + outs)
            f64 = any(t.dtype == torch.float64 for t in ins + outs)
            if func in matmuls:
                a, b = ins[-2], ins[-1]
                c["fp64_matmul_flops" if f64 else "fp32_ops"] += 2 * a.numel() * b.shape[-1]
            elif func not in moves or (f64 and func in (aten._to_copy.default, aten.copy_.default)):
                n = max(t.numel() for t in ins + outs)
                floats = any(t.is_floating_point() for t in ins + outs)
                c["fp64_ops" if f64 else "fp32_ops" if floats else "int_ops"] += n
            return out

    return Count()


def _cost_model(renders: dict[str, Callable[[], None]], n_views: int, img_size: int) -> dict:
    """A model, not a measurement: what each resize kernel's render of the batch does per view
    (``_op_counter``: the resize passes, RandAugment's geometric ops, the rest), and the views/s
    that implies on each GPU of ``_GPUS``: per view the longest of its FP64 time, its FP32 + INT32
    time and its memory time, from the published peaks; kernel launches not included (their count
    is the torch ops row)."""
    from relabel.views import kernels, ops_torch

    per_view: dict[str, dict[str, dict]] = {}
    for name, render in renders.items():
        counter = _op_counter()

        def section(fn, label, counter=counter):
            def wrapped(*a, **kw):
                counter.section = label
                try:
                    return fn(*a, **kw)
                finally:
                    counter.section = "rest"
            return wrapped

        saved = dict(kernels.KERNELS), dict(ops_torch._KERNELS)
        try:  # the registries are data: their entries are wrapped to attribute the ops, then put back
            for k, kern in saved[0].items():
                kernels.KERNELS[k] = kernels.ResizeKernel(k, section(kern.run, "resize"))
            ops_torch._KERNELS["affine"] = section(saved[1]["affine"], "geometric")
            with counter:
                render()
        finally:
            kernels.KERNELS.update(saved[0])
            ops_torch._KERNELS.update(saved[1])
        parts = {s: {k: counter.tally.get(s, {}).get(k, 0) / n_views for k in _COUNTS}
                 for s in ("resize", "geometric", "rest")}
        parts["total"] = {k: sum(parts[s][k] for s in ("resize", "geometric", "rest")) for k in _COUNTS}
        per_view[name] = parts

    def seconds(c: dict, gpu: tuple) -> float:
        _, f64v, f64m, f32, i32, gbs, _ = gpu
        t64 = c["fp64_matmul_flops"] / ((f64m or f64v) * 1e12) + c["fp64_ops"] / (f64v * 1e12 / 2)
        t32 = c["fp32_ops"] / (f32 * 1e12 / 2) + c["int_ops"] / (i32 * 1e12 / 2)
        return max(t64, t32, c["bytes_moved"] / (gbs * 1e9))

    ceilings = {g[0]: {name: 1 / seconds(parts["total"], g) for name, parts in per_view.items()} for g in _GPUS}
    geometric = {g[0]: {name: seconds(parts["geometric"], g) / seconds(parts["total"], g)
                        for name, parts in per_view.items()} for g in _GPUS}
    return {"note": f"a model, not a measurement: counted ops of one {n_views}-view USI batch at {img_size}px",
            "per_view": per_view, "views_per_s_ceiling": ceilings, "geometric_share": geometric,
            "gpus": [dict(zip(("name", "fp64_tflops", "fp64_matrix_tflops", "fp32_tflops", "int32_tops", "mem_gb_s",
                               "source"), g)) for g in _GPUS]}


def bench_feed(cfg: BenchConfig, tmp: str) -> dict:
    """The CPU side alone, no model: can it keep a GPU busy? Stage one: generate's own ViewStream
    (read, decode once, all ``feed_views`` views of a shard block, mix) in a DataLoader; stage two:
    make_loader over a cached store (decode, one view, mix, label gather). Views/s per worker process
    at 1 worker and at all ``workers`` (persistent workers, as on a GPU, so start-up is not timed)."""
    import torch
    from torch.utils.data import DataLoader

    from relabel.storage import open_source
    from relabel.storage.store import Shard
    from relabel.train.loop import TrainConfig, build, make_loader

    from relabel.stages.generate import GenerateConfig, ViewStream, WorkUnit, generate
    from relabel.teacher import FunctionTeacher
    from relabel.models import pick_device
    from relabel.views import RECIPES, ViewRenderer, create_renderer, finish_batch, store_order
    from relabel.views.rules import RESIZE_RULES, native_rule

    folder = _photo_folder(Path(tmp) / "feed_images", cfg.feed_images)
    workers = sorted({1, cfg.workers}) if cfg.workers > 0 else [0]
    recipe, n, nv = RECIPES["usi"], cfg.feed_images, cfg.feed_views
    src = open_source(str(folder))
    keys = store_order(src.keys, 0)
    where = src.index()
    shard = Shard(0, 0, 0, nv, 0, n, 0)  # one shard block: every image decoded once for all its views
    units = [WorkUnit(shard, g0, min(g0 + recipe.mix_group, n)) for g0 in range(0, n, recipe.mix_group)]
    dev = pick_device(cfg.device)
    renderers = {"": create_renderer("pillow", ViewRenderer(recipe, 0, cfg.img_size))}  # workers render
    if dev.type == "cuda":  # the device renders (on a CPU it is ~20x slower than Pillow: `auto` never picks it)
        renderers["torch_"] = create_renderer("torch", ViewRenderer(recipe, 0, cfg.img_size))
    contenders: dict[str, Callable] = {}

    def persistent(loader_kw: dict, w: int) -> DataLoader:
        return DataLoader(**loader_kw, num_workers=w, persistent_workers=w > 0, prefetch_factor=4 if w else None,
                          pin_memory=dev.type == "cuda")

    for tag, renderer in renderers.items():
        stream = ViewStream(src, np.asarray([where[k] for k in keys], np.int64), renderer, n, units, keys,
                            batch_size=128)
        for w in workers:
            loader = persistent(dict(dataset=stream, batch_size=None), w)

            def stage1(loader=loader, renderer=renderer):
                n_views = 0
                for _, _, _, payload, *_ in loader:  # pixels made on the device, then dropped
                    n_views += len(finish_batch(renderer, payload, dev))
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                return n_views

            contenders[f"stage1_{tag}w{w}"] = stage1

    # stage two: a cached store of these images (a stub teacher: labels need no model here)
    store = os.path.join(tmp, "feed_labels")
    weights = torch.randn(3, 1000)
    generate(GenerateConfig(data=str(folder), out=store, views=2, topk=10, img_size=cfg.img_size, workers=cfg.workers,
                            class_map=_class_map(folder, tmp), batch_size=128, device="cpu", progress=False),
             teacher=FunctionTeacher(lambda px: px.float().mean((2, 3)) @ weights, 1000, "bench-feed-stub",
                                     input_size=cfg.img_size))
    batch = max(2, min(64, n // (2 * max(workers[-1], 1))) // 2 * 2)  # at least two batches per worker
    lo = workers[0]
    parquet = _parquet_copy(folder, Path(tmp) / "feed_parquet")  # the same images, as the Hub stores them
    # One worker each: the digest check off (as a store made before digests), the images read from
    # parquet instead of the folder, and stage one rendering by another Pillow's resize rule.
    variants = [("", "pillow", str(folder), workers), ("torch_", "torch", str(folder), workers),
                ("nodigest_", "pillow", str(folder), [lo]), ("parquet_", "pillow", str(parquet), [lo])]
    for tag, name, data_dir, ws in variants:
        if name == "torch" and "torch_" not in renderers:
            continue
        for w in ws:
            tcfg = TrainConfig(data=data_dir, labels=store, out=os.path.join(tmp, f"feed-run{tag}{w}"),
                               student=cfg.student, mode="cached", epochs=2, batch_size=batch, img_size=cfg.img_size,
                               device=str(dev), workers=w, progress=False, log=False, warmup_epochs=0, renderer=name)
            data, _ = build(tcfg)
            if tag == "nodigest_":
                data.digests = None
            loader = make_loader(data, tcfg, dev)  # relabel train's own loader (persistent workers)
            epoch = [0]

            def stage2(loader=loader, epoch=epoch):
                loader.set_epoch(epoch[0] % 2)
                epoch[0] += 1
                done = sum(len(b["positions"]) for b in loader)  # pixels rendered, labels gathered
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                return done

            contenders[f"stage2_{tag}w{w}"] = stage2
    other = next(rule for rule in RESIZE_RULES if rule != native_rule())  # e.g. a 12.x store on Pillow 13
    emulated = ViewRenderer(recipe, 0, cfg.img_size, other)
    stream = ViewStream(src, np.asarray([where[k] for k in keys], np.int64), create_renderer("pillow", emulated), n,
                        units, keys, batch_size=128)
    loader = persistent(dict(dataset=stream, batch_size=None), lo)
    contenders[f"stage1_rule_w{lo}"] = lambda loader=loader: sum(len(p) for _, _, _, p, *_ in loader)
    r = measure(contenders, cfg.repeats)
    per = {k: r[k]["median"] / max(1, int(k.rsplit("w", 1)[1])) for k in r}
    hi = workers[-1]
    differ = _rule_differs(src, keys, recipe, cfg.img_size, nv, other)
    mean_kb = sum(p.stat().st_size for p in Path(folder).rglob("*.jpg")) / n / 1024
    return {"stage1_views_per_s_per_worker": per[f"stage1_w{lo}"], "stage2_img_per_s_per_worker": per[f"stage2_w{lo}"],
            "stage1_views_per_s_all_workers": r[f"stage1_w{hi}"]["median"],
            "stage2_img_per_s_all_workers": r[f"stage2_w{hi}"]["median"],
            "stage1_scaling": r[f"stage1_w{hi}"]["median"] / r[f"stage1_w{lo}"]["median"],
            "stage2_scaling": r[f"stage2_w{hi}"]["median"] / r[f"stage2_w{lo}"]["median"],
            "stage1_torch_views_per_s_all_workers": r[f"stage1_torch_w{hi}"]["median"] if "torch_" in renderers else None,
            "stage2_torch_img_per_s_all_workers": r[f"stage2_torch_w{hi}"]["median"] if "torch_" in renderers else None,
            "torch_device": str(dev), **_torch_finish_cost(cfg, folder, dev),
            # portability and binding (issues 28 and 29), per worker, against the rows above
            "stage2_digest_check_cost": 1 - per[f"stage2_w{lo}"] / per[f"stage2_nodigest_w{lo}"],
            "stage2_parquet_vs_folder": per[f"stage2_parquet_w{lo}"] / per[f"stage2_w{lo}"],
            "stage1_other_rule": other, "stage1_other_rule_views_emulated": differ,
            "stage1_other_rule_vs_native": per[f"stage1_rule_w{lo}"] / per[f"stage1_w{lo}"],
            **_rule_emulation_cost(cfg, other),
            "workers": workers, "images": n, "views_per_image_stage1": nv, "mean_jpeg_kib": mean_kb,
            "stage2_batch": batch, "detail": r}


def _parquet_copy(folder: Path, out: Path) -> Path:
    """The folder's images as Hugging Face parquet in the Hub's layout (``image`` {bytes, path},
    ``label`` with ClassLabel names): the same keys and classes, so the same store trains on it."""
    import datasets

    datasets.disable_progress_bars()
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = sorted(p for p in folder.rglob("*.jpg"))
    rows = {"image": [{"bytes": f.read_bytes(), "path": f.relative_to(folder).as_posix()} for f in files],
            "label": [classes.index(f.parent.name) for f in files]}
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    (out / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(out / "data" / "train-00000-of-00001.parquet"))
    return out


def _rule_emulation_cost(cfg: BenchConfig, rule: str, n: int = 24, views: int = 4) -> dict:
    """What emulating another Pillow's resize order costs where it applies: USI views of portrait
    photos (about 2:5, where Pillow 13 resizes vertically first and 12.1 and before do not) rendered by
    the Pillow renderer with the installed order and with ``rule``, interleaved; ms per view."""
    import time

    from PIL import Image

    from relabel.views import RECIPES, ViewRenderer
    from relabel.views.rules import native_rule, vertical_first

    rng = np.random.default_rng(9)
    imgs = []
    for i in range(n):
        w = int(rng.uniform(200, 260))
        h = int(w * rng.uniform(2.3, 2.7))
        arr = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        imgs.append(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))
    recipe, size = RECIPES["usi"], cfg.img_size
    native = ViewRenderer(recipe, 0, size, native_rule())
    other = ViewRenderer(recipe, 0, size, rule)
    share = np.mean([vertical_first(rule, *im.size, size, size) != vertical_first(native_rule(), *im.size, size, size)
                     for im in imgs])
    best = {"native": float("inf"), "other": float("inf")}
    for _ in range(max(3, cfg.repeats)):
        for name, r in (("native", native), ("other", other)):
            t0 = time.perf_counter()
            for i, im in enumerate(imgs):
                for v in range(views):
                    r.render(f"k{i}", v, im)
            best[name] = min(best[name], (time.perf_counter() - t0) / (n * views))
    return {"rule_emulation_views_affected": float(share), "rule_emulation_ms_per_view_native": 1e3 * best["native"],
            "rule_emulation_ms_per_view_other": 1e3 * best["other"], "rule_emulation_cost": best["other"] / best["native"] - 1}


def _rule_differs(src, keys: list[str], recipe, size: int, views: int, rule: str) -> float:
    """Of these images' first ``views`` views, the share whose crop-resize runs in another pass order
    under ``rule`` than under the installed Pillow's (the views the Pillow renderer emulates)."""
    from PIL import Image

    from relabel.views import view_params
    from relabel.views.rules import native_rule, vertical_first

    native, n, differ = native_rule(), 0, 0
    for k in keys:
        with Image.open(__import__("io").BytesIO(src.read(src.index()[k]))) as img:
            W, H = img.size
        for v in range(views):
            view_params(recipe, 0, k, v, (W, H))  # (the decision reads the image's size, not the crop)
            n += 1
            differ += vertical_first(rule, W, H, size, size) != vertical_first(native, W, H, size, size)
    return differ / max(1, n)


# ------------------------------------------------------------------------------------ step / loader
def _train_store(cfg: BenchConfig, tmp: str) -> tuple[str, str]:
    """Real images and a real label store (random-weight teacher) for stage-two timing."""
    from relabel.stages.generate import GenerateConfig, generate
    from relabel.teacher import Teacher

    folder = os.path.join(tmp, "train_images")
    store = os.path.join(tmp, "train_labels")
    if not os.path.isdir(store):
        _jpeg_folder(Path(folder), max(2 * cfg.batch_size, 64))
        generate(GenerateConfig(data=folder, out=store, teacher=cfg.teacher, views=1, topk=10, img_size=cfg.img_size,
                                class_map=_class_map(Path(folder), tmp),
                                batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                                precision=cfg.precision, samples_per_shard=1024, progress=False),
                 teacher=Teacher(cfg.teacher, device=cfg.device, precision=cfg.precision, pretrained=False))
    return folder, store


def _train_cfg(cfg: BenchConfig, tmp: str, mode: str, workers: int = 0):
    from relabel.train.loop import TrainConfig

    folder, store = _train_store(cfg, tmp)
    return TrainConfig(data=folder, labels=store, out=os.path.join(tmp, f"run-{mode}"), student=cfg.student, mode=mode,
                       epochs=10, batch_size=cfg.batch_size, img_size=cfg.img_size, device=cfg.device,
                       workers=workers, progress=False, log=False, warmup_epochs=0)


def trainer_with_batches(cfg, batches: int = 1, epoch: int = 0):
    """A stage-two ``Trainer`` for ``cfg`` (a TrainConfig) with ``epoch`` begun (its labels loaded) and
    that epoch's first ``batches`` batches: ``trainer.train_step(batch)`` timed without the DataLoader."""
    from relabel.train.loop import build, make_loader

    data, tr = build(cfg)
    loader = make_loader(data, cfg, tr.device)
    loader.set_epoch(epoch)
    tr.begin_epoch(epoch, len(loader))
    it = iter(loader)
    return tr, [b for _, b in zip(range(batches), it)]


def bench_step(cfg: BenchConfig, tmp: str) -> dict:
    """Train-step img/s of one student: supervised, cached-KD (lookup + target build), online-KD."""
    import torch

    def step(tr, batch):
        for _ in range(cfg.steps):
            loss = tr.train_step(batch)
        loss.item()  # wait for the device
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        return cfg.steps * len(batch["positions"])

    steps = {}
    for mode in ("supervised", "cached", "online"):
        tr, (batch,) = trainer_with_batches(_train_cfg(cfg, tmp, mode), batches=1)
        steps[mode] = lambda tr=tr, batch=batch: step(tr, batch)
    if _backend(cfg):  # the cached step with the student compiled (the warm-up pays the compilation)
        tr, (batch,) = trainer_with_batches(replace(_train_cfg(cfg, tmp, "cached"), compile=_backend(cfg)), batches=1)
        steps["compiled_cached"] = lambda tr=tr, batch=batch: step(tr, batch)
    r = measure(steps, cfg.repeats)
    out = {f"{m}_img_s": r[m]["median"] for m in steps}
    out.update(cached_vs_supervised=out["cached_img_s"] / out["supervised_img_s"],
               cached_vs_online=out["cached_img_s"] / out["online_img_s"], detail=r)
    if "compiled_cached_img_s" in out:
        out.update(compiled_vs_eager_cached=out["compiled_cached_img_s"] / out["cached_img_s"],
                   compile_backend=_backend(cfg))
    return out


def bench_loader(cfg: BenchConfig, tmp: str) -> dict:
    """Data loading alone (decode + replay + mix, and for cached the epoch's label gather)."""
    import torch

    from relabel.train.loop import build, make_loader

    contenders = {}
    for mode in ("supervised", "cached"):
        tcfg = _train_cfg(cfg, tmp, mode, workers=cfg.workers)
        data, tr = build(tcfg)
        loader = make_loader(data, tcfg, torch.device("cpu"))  # cached: it gathers the epoch's labels too
        epoch = [0]

        def run(data=data, loader=loader, epoch=epoch, epochs=12):
            n = 0
            for _ in range(epochs):  # long enough to time: the data set is small
                loader.set_epoch(epoch[0] % data.header.views)
                epoch[0] += 1
                n += sum(len(batch["positions"]) for batch in loader)
            return n

        contenders[mode] = run
    r = measure(contenders, cfg.repeats)
    out = {"cached_img_s": r["cached"]["median"], "supervised_img_s": r["supervised"]["median"],
           "ratio": r["cached"]["median"] / r["supervised"]["median"], "workers": cfg.workers, "detail": r}
    out.update(_view_vs_timm(cfg, data))
    return out


def _view_vs_timm(cfg: BenchConfig, data) -> dict:
    """A view's pixels from a decoded image (ours, uint8) against timm's own training transform
    (RandomResizedCrop + flip + RandAugment + ToTensor + Normalize) on the same decoded images."""
    from timm.data import create_transform

    from relabel.views import RECIPES, ViewRenderer, decode_image

    images = [decode_image(data.source.read(i)) for i in range(min(32, len(data.source)))]
    renderer = ViewRenderer(RECIPES["usi"], 0, cfg.img_size)
    timm_tf = create_transform(cfg.img_size, is_training=True, auto_augment=RECIPES["usi"].randaugment,
                               interpolation="bicubic", re_prob=0.0)
    calls = [0]

    rounds = 8  # RandAugment's op mix varies per call: average over many views

    def ours():
        for _ in range(rounds):
            calls[0] += 1
            for i, img in enumerate(images):
                renderer.render(f"k{i}", calls[0], img)
        return rounds * len(images)

    def timm_transform():
        for _ in range(rounds):
            for img in images:
                timm_tf(img)
        return rounds * len(images)

    r = measure({"view": ours, "timm": timm_transform}, cfg.repeats)
    return {"view_img_s": r["view"]["median"], "timm_transform_img_s": r["timm"]["median"],
            "view_vs_timm": r["view"]["median"] / r["timm"]["median"]}


# ------------------------------------------------------------------------------------ driver
_RUNNERS = {"step": bench_step, "loader": bench_loader, "labels": bench_labels, "generate": bench_generate,
            "size": bench_size, "scale": None, "precision": bench_precision, "feed": bench_feed}


def _scale_child(cfg: BenchConfig, tmp: str, q) -> None:
    q.put(bench_scale(cfg, tmp))


def run_bench(parts: list[str], cfg: BenchConfig, json_out: str | None = None) -> dict:
    import multiprocessing as mp

    results: dict = {"machine": machine(cfg), "config": asdict(cfg)}
    with tempfile.TemporaryDirectory(prefix="relabel-bench-") as tmp:
        for part in parts:
            t0 = time.perf_counter()
            if part == "scale":  # a fresh process, so peak RSS is the writer's own
                ctx = mp.get_context("spawn")
                q = ctx.Queue()
                p = ctx.Process(target=_scale_child, args=(cfg, tmp, q))
                p.start()
                results[part] = q.get()
                p.join()
            else:
                results[part] = _RUNNERS[part](cfg, tmp)
            results[part]["bench_seconds"] = time.perf_counter() - t0
            print(f"bench {part}: done in {results[part]['bench_seconds']:.1f}s", file=sys.stderr, flush=True)
    if "step" in results and "generate" in results:
        results["sweep"] = sweep(cfg, results)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(results, indent=2))
        Path(json_out).with_suffix(".md").write_text(markdown(results) + "\n")
    return results


def sweep(cfg: BenchConfig, results: dict) -> dict:
    """End-to-end cost of S students x E epochs on N images from measured per-image costs: cached
    runs the teacher V x N times (stage one, whole pipeline) and then the cheap step S x E x N times;
    online pays the teacher inside every one of the S x E x N steps."""
    S, E, V, N = cfg.sweep_students, cfg.sweep_epochs, cfg.sweep_views, cfg.sweep_images
    t_gen = 1 / results["generate"]["views_per_s"]  # s per stored view
    t_cached, t_online = 1 / results["step"]["cached_img_s"], 1 / results["step"]["online_img_s"]
    stage_one, cached_steps, online = V * N * t_gen, S * E * N * t_cached, S * E * N * t_online
    gain = t_online - t_cached  # what one student-epoch-image saves by not running the teacher
    return {"students": S, "epochs": E, "views": V, "images": N, "s_per_view_generate": t_gen,
            "s_per_img_cached_step": t_cached, "s_per_img_online_step": t_online,
            "cached_hours": (stage_one + cached_steps) / 3600, "cached_stage_one_hours": stage_one / 3600,
            "online_hours": online / 3600, "online_vs_cached": online / (stage_one + cached_steps),
            "break_even_student_epochs": V * t_gen / gain if gain > 0 else float("inf")}


def machine(cfg: BenchConfig) -> dict:
    import torch

    dev = "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "device": dev,
            "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None, "torch": torch.__version__,
            "python": platform.python_version()}


_TARGETS = {  # (key, target, direction)
    "step": [("supervised_img_s", None, ""), ("cached_img_s", None, ""), ("online_img_s", None, ""),
             ("cached_vs_supervised", 0.97, ">="), ("cached_vs_online", 1.7, ">=")],
    "loader": [("supervised_img_s", None, ""), ("cached_img_s", None, ""), ("ratio", 0.97, ">="),
               ("view_img_s", None, ""), ("timm_transform_img_s", None, ""), ("view_vs_timm", 1.0, ">=")],
    "labels": [("epoch_views_per_s", 5e6, ">="), ("random_views_per_s", 1e5, ">=")],
    "generate": [("views_per_s", None, ""), ("teacher_only_views_per_s", None, ""), ("ratio", 0.85, ">=")],
    "size": [(f"{m}_k{k}", 24 if (m == "bytes_per_view" and k == 10) else (1e-3 if m == "kl_loss" else None),
              "<=") for k in (5, 10, 20) for m in ("bytes_per_view", "kl_loss", "kl_full")],
    "scale": [("views", None, ""), ("views_per_s", None, ""), ("peak_rss_mib", 1024, "<=")],
    "precision": [(f"{p}_{m}", None, "") for p in ("bf16", "fp16") for m in ("max_err", "mean_err", "vs_q8",
                                                                               "top1_agree")],
    "feed": [("stage1_views_per_s_per_worker", None, ""), ("stage1_scaling", None, ""),
             ("stage2_img_per_s_per_worker", None, ""), ("stage2_scaling", None, ""),
             ("stage1_views_per_s_all_workers", None, ""), ("stage1_torch_views_per_s_all_workers", None, ""),
             ("stage2_img_per_s_all_workers", None, ""), ("stage2_torch_img_per_s_all_workers", None, ""),
             ("torch_finish_ms_per_batch", None, ""), ("torch_finish_ops_per_view", None, ""),
             ("torch_render_kernel_auto", None, ""),  # and each kernel's (views.kernels.KERNELS) on the same batch
             *((f"torch_finish_{m}_{k}", None, "") for k in ("matmul", "taps") for m in ("ms_per_batch", "ops_per_view")),
             ("torch_payload_take_ms_per_batch", None, ""), ("torch_payload_fresh_ms_per_batch", None, ""),
             ("stage2_digest_check_cost", 0.03, "<="), ("stage2_parquet_vs_folder", 0.9, ">="),
             ("stage1_other_rule", None, ""), ("stage1_other_rule_views_emulated", None, ""),
             ("stage1_other_rule_vs_native", None, ""), ("rule_emulation_views_affected", None, ""),
             ("rule_emulation_ms_per_view_native", None, ""), ("rule_emulation_ms_per_view_other", None, ""),
             ("rule_emulation_cost", None, "")],
    "sweep": [("cached_hours", None, ""), ("online_hours", None, ""), ("online_vs_cached", None, ""),
              ("break_even_student_epochs", None, "")],
}
_TARGETS["step"] += [("compiled_cached_img_s", None, ""), ("compiled_vs_eager_cached", None, "")]
_TARGETS["generate"] += [("compiled_teacher_only_views_per_s", None, ""), ("compiled_vs_eager", None, "")]
_TARGETS["size"] += [("bytes_per_view_k10_correlated", 16, "<="), ("kl_loss_k10_correlated", 1e-3, "<="),
                     ("bytes_per_view_k10_correlated_mixed", None, ""), ("bytes_per_view_k10_correlated_best_codec", None, "")]


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cores']} CPU cores ({m['cpu']}), device {m['device']}"
             f"{' (' + m['gpu'] + ')' if m['gpu'] else ''}, torch {m['torch']}.",
             "", "| part | metric | value | target | met |", "|---|---|---|---|---|"]
    for part, rows in _TARGETS.items():
        if part not in results:
            continue
        for key, target, op in rows:
            v = results[part].get(key)
            if v is None:
                continue
            met = "" if target is None else ("yes" if (v >= target if op == ">=" else v <= target) else "**no**")
            val = v if isinstance(v, str) else f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
            lines.append(f"| {part} | {key} | {val} | {'' if target is None else f'{op} {target:g}'} | {met} |")
    model = results.get("feed", {}).get("cost_model")
    if model:
        lines += ["", *_cost_model_markdown(model)]
    return "\n".join(lines)


def _cost_model_markdown(model: dict) -> list[str]:
    """The render cost model as two tables: what a view costs by kernel and part, and the views/s
    ceilings it implies per GPU."""
    g = lambda v: f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"  # noqa: E731
    kernels = list(model["per_view"])
    out = [f"Render cost model per view ({model['note']}):", "",
           "| kernel | part | " + " | ".join(_COUNTS) + " |", "|---|---|" + "---|" * len(_COUNTS)]
    for k in kernels:
        for part, c in model["per_view"][k].items():
            out.append(f"| {k} | {part} | " + " | ".join(g(c[key]) for key in _COUNTS) + " |")
    out += ["", "Implied views/s ceilings (model: max of FP64, FP32+INT32 and memory time per view from published "
            "peaks; launches not included) and the geometric ops' share of each view's modeled time:", "",
            "| GPU | FP64 TFLOPS (matrix) | FP32 TFLOPS | INT32 TOPS | GB/s | "
            + " | ".join(f"{k} views/s" for k in kernels) + " | " + " | ".join(f"geometric share ({k})" for k in kernels)
            + " | source |", "|---|---|---|---|---|" + "---|" * (2 * len(kernels) + 1)]
    for gpu in model["gpus"]:
        name = gpu["name"]
        m = f" ({gpu['fp64_matrix_tflops']:g})" if gpu["fp64_matrix_tflops"] else ""
        out.append(f"| {name} | {gpu['fp64_tflops']:g}{m} | {gpu['fp32_tflops']:g} | {gpu['int32_tops']:g} | "
                   f"{gpu['mem_gb_s']:g} | " + " | ".join(g(model["views_per_s_ceiling"][name][k]) for k in kernels)
                   + " | " + " | ".join(f"{model['geometric_share'][name][k]:.0%}" for k in kernels)
                   + f" | {gpu['source']} |")
    return out


def _bench(params: dict) -> None:
    from relabel.storage import ConfigError

    part, json_out = params.pop("part"), params.pop("json_out")
    cfg = BenchConfig(**params)
    parts = list(PARTS) if part == "all" else part.split(",")  # step,generate: also the sweep, from both
    if any(p not in PARTS for p in parts):
        raise ConfigError(f"unknown bench part {part!r}; use one of {', '.join(PARTS)} or all")
    if os.path.isdir(json_out):
        raise ConfigError(f"--json {json_out}: is a folder; give a file name such as {os.path.join(json_out, 'bench.json')}")
    r = run_bench(parts, cfg, json_out)
    typer.echo(markdown(r))
    typer.echo(f"wrote {json_out} and {Path(json_out).with_suffix('.md')}")


def _bench_extras() -> tuple[inspect.Parameter, ...]:
    """The part to run and where results go: what to do, not how (no BenchConfig field)."""
    kw = inspect.Parameter.KEYWORD_ONLY
    return (inspect.Parameter("part", kw, annotation=str, default=typer.Argument(
                "all", help=f"One of {', '.join(PARTS)}, several joined by commas, or all (step and generate "
                            f"together add the sweep).")),
            inspect.Parameter("json_out", kw, annotation=str, default=typer.Option(
                "bench.json", "--json", help="Results JSON (a markdown table goes beside it).")))


bench_command = command_from(BenchConfig, _bench, "bench_command", "Measure stage one, stage two and the store side "
                                                                   "by side; write JSON and a markdown table.",
                             extra=_bench_extras())
