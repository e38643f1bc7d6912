"""``bench feed``: the CPU side alone, no model: stage one's and stage two's loaders per worker, the torch
renderer's device stage with each resize kernel, and what portability and bound bytes cost."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np


from .common import _class_map, _photo_folder, measure
from .config import BenchConfig
from .costmodel import _cost_model


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
    try:  # the same images, as the Hub stores them (a machine without `datasets` skips this row)
        parquet = _parquet_copy(folder, Path(tmp) / "feed_parquet")
    except ImportError:
        parquet = None
    # One worker each: the digest check off (as a store made before digests), the images read from
    # parquet instead of the folder, and stage one rendering by another Pillow's resize rule.
    variants = [("", "pillow", str(folder), workers), ("torch_", "torch", str(folder), workers),
                ("nodigest_", "pillow", str(folder), [lo]), ("parquet_", "pillow", str(parquet), [lo])]
    for tag, name, data_dir, ws in variants:
        if (name == "torch" and "torch_" not in renderers) or (tag == "parquet_" and parquet is None):
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
    differ = _rule_differs(src, keys, cfg.img_size, other)
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
            "stage2_parquet_vs_folder": per[f"stage2_parquet_w{lo}"] / per[f"stage2_w{lo}"] if parquet else None,
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


def _rule_differs(src, keys: list[str], size: int, rule: str) -> float:
    """The share of these images' views whose crop-resize runs in another pass order under ``rule``
    than under the installed Pillow's (the views the Pillow renderer emulates)."""
    import io

    from PIL import Image

    from relabel.views.rules import native_rule, vertical_first

    native, differ = native_rule(), 0
    for k in keys:  # the decision reads the image's size and the output's, never the crop: every view alike
        with Image.open(io.BytesIO(src.read(src.index()[k]))) as img:
            W, H = img.size
        differ += vertical_first(rule, W, H, size, size) != vertical_first(native, W, H, size, size)
    return differ / max(1, len(keys))
