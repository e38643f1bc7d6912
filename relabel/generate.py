"""Stage one: run the teacher once over every stored view and write top-k labels.

Work is cut into units of (shard, mix group): a DataLoader worker decodes the group's images once,
renders all of the shard's pending views of them, mixes pairs, and yields batches of uint8 pixels.
The main process runs the teacher, takes top-k on the device and writes a shard as soon as all of
its groups are in. Under torchrun each rank owns every world-th pending shard.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from relabel.storage import LabelStore, StoreHeader, UserError, open_source
from relabel.storage.encoding import ValueEncoding
from relabel.storage.sources import ImageSource
from relabel.storage.store import STATUS_OK, STATUS_UNREADABLE, Shard

from . import __version__
from .dist import Dist
from .progress import progress_bar
from .teacher import Teacher, teacher_record
from .views import Recipe, ViewRenderer, create_recipe, decode_image, group_partners, mix_batch, store_order


@dataclass
class GenerateConfig:
    data: str
    out: str
    teacher: str = "tresnet_l_v2"
    teacher_checkpoint: str | None = None
    views: int = 10
    topk: int = 10
    recipe: str = "usi"
    seed: int = 0
    img_size: int | None = None
    batch_size: int = 128
    workers: int = 4
    device: str = "auto"
    precision: str = "auto"
    encoding: str = "q8"
    samples_per_shard: int = 16384
    views_per_shard: int = 10
    repair: bool = False
    progress: bool = True
    random_teacher: bool = False  # benchmarks: speed does not depend on weights


@dataclass(frozen=True)
class _Unit:
    shard: Shard
    g0: int
    g1: int


class ViewStream(IterableDataset):
    """Yields (shard, views, ok positions, pixels uint8 NHWC, unreadable positions), at most a batch
    of pixels at a time: several views of a small group, or slices of one view of a large group."""

    def __init__(self, source: ImageSource, src_index: np.ndarray, renderer: ViewRenderer, num_samples: int,
                 units: list[_Unit], keys: list[str], batch_size: int):
        self.source, self.src_index, self.renderer = source, src_index, renderer
        self.N, self.units, self.keys, self.batch_size = num_samples, units, keys, batch_size

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        r = self.renderer
        for u in self.units[wid::nw]:
            images, bad = {}, []
            for p in range(u.g0, u.g1):
                try:
                    images[p] = decode_image(self.source.read(int(self.src_index[p])))
                except Exception:  # unreadable or not an image: recorded, never fatal
                    bad.append(p)
            ok = sorted(images)
            sh = u.shard
            views = list(range(sh.v0 + sh.done, sh.v1))
            per = max(1, self.batch_size // max(1, len(ok)))
            for c in range(0, len(views), per):
                chunk, pix = views[c:c + per], []
                for v in chunk:
                    partners = group_partners(r.recipe, r.seed, v, u.g0, u.g1 - u.g0)[np.asarray(ok, int) - u.g0] if ok else []
                    rendered = [r.render(self.keys[p], v, images[p]) for p in ok]
                    pix.extend(mix_batch(r.recipe, r.seed, v, ok, rendered, partners)[0])
                arr = torch.from_numpy(np.stack(pix)) if pix else torch.empty(0, r.size, r.size, 3, dtype=torch.uint8)
                pos, lost = np.asarray(ok, np.int64), np.asarray(bad, np.int64)
                if len(chunk) > 1 or len(ok) <= self.batch_size:
                    yield sh, chunk, pos, arr, lost
                    continue
                for s0 in range(0, len(ok), self.batch_size):  # a group larger than a batch: slices of it
                    s1 = s0 + self.batch_size
                    yield sh, chunk, pos[s0:s1], arr[s0:s1], lost if s0 == 0 else lost[:0]


class _ShardBuffer:
    def __init__(self, shard: Shard, k: int):
        nv, ns = shard.v1 - shard.v0 - shard.done, shard.s1 - shard.s0
        self.shard, self.left = shard, nv * ns  # (view, sample) cells still to come
        self.index = np.zeros((nv, ns, k), np.int64)
        self.logp = np.zeros((nv, ns, k + 1), np.float32)
        self.status = np.full(ns, STATUS_OK, np.uint8)


def _header_diff(old: StoreHeader, new: StoreHeader) -> list[str]:
    """Settings that must match for a store to be continued; views may grow, and the shard layout
    is the store's own (it does not change a label)."""
    out = []
    for name in ("fingerprint", "topk", "num_classes", "seed", "img_size"):
        if getattr(old, name) != getattr(new, name):
            out.append(f"{name} (store: {getattr(old, name)}, now: {getattr(new, name)})")
    if json.dumps(old.recipe, sort_keys=True) != json.dumps(new.recipe, sort_keys=True):
        out.append(f"recipe (store: {old.recipe.get('name')}, now: {new.recipe.get('name')})")
    if old.encoding != new.encoding:
        out.append(f"encoding (store: {old.encoding.name}, now: {new.encoding.name})")
    for name in ("model", "checkpoint_sha256", "precision"):
        if old.teacher.get(name) != new.teacher.get(name):
            out.append(f"teacher {name} (store: {old.teacher.get(name)}, now: {new.teacher.get(name)})")
    return out


def _validate(cfg: GenerateConfig, recipe: Recipe) -> None:
    if cfg.views <= 0:
        raise UserError(f"--views must be >= 1 (got {cfg.views})")
    if cfg.topk <= 0:
        raise UserError(f"--topk must be >= 1 (got {cfg.topk})")
    if cfg.batch_size <= 0:
        raise UserError(f"--batch-size must be >= 1 (got {cfg.batch_size})")
    if cfg.workers < 0:
        raise UserError(f"--workers must be >= 0 (got {cfg.workers})")
    if cfg.samples_per_shard <= 0 or cfg.samples_per_shard % recipe.mix_group:
        raise UserError(f"--samples-per-shard must be a positive multiple of the recipe's mix_group "
                        f"({recipe.mix_group}); got {cfg.samples_per_shard}")
    if os.path.isfile(cfg.out):
        raise UserError(f"{cfg.out}: is a file; --out must be a folder for the label store")


def open_or_create_store(cfg: GenerateConfig, header: StoreHeader, source: ImageSource, dist: Dist) -> LabelStore:
    """Rank 0 creates or checks the store; the others open it once it is ready."""
    if dist.rank == 0:
        try:
            if os.path.isdir(cfg.out) and os.listdir(cfg.out):
                store = LabelStore.open(cfg.out, mode="r+")
                diff = _header_diff(store.header, header)
                if diff:
                    raise UserError(f"{cfg.out}: store was made with other settings: {'; '.join(diff)}. "
                                    f"Use the same settings to resume, or another --out")
                store.remove_partials()  # temp files of writes a crash cut short
                store.extend_views(header.views)
            else:
                store = LabelStore.create(cfg.out, header, store_order(source.keys, cfg.seed))
        except OSError as e:
            raise UserError(f"could not write the label store {cfg.out}: {e.strerror or e}; "
                            f"free space (or fix permissions) and rerun") from None
    dist.barrier()
    return LabelStore.open(cfg.out, mode="r+") if dist.rank else store


def generate(cfg: GenerateConfig) -> dict:
    recipe = create_recipe(cfg.recipe)
    _validate(cfg, recipe)
    source = open_source(cfg.data)
    dist = Dist.from_env(cfg.device)
    try:
        return _generate(cfg, recipe, source, dist)
    finally:
        dist.close()


def _generate(cfg: GenerateConfig, recipe: Recipe, source: ImageSource, dist: Dist) -> dict:
    teacher = Teacher(cfg.teacher, cfg.teacher_checkpoint, device=dist.device_str(cfg.device), precision=cfg.precision,
                      pretrained=not cfg.random_teacher)
    if cfg.topk > teacher.num_classes:
        raise UserError(f"--topk {cfg.topk} is above the teacher's number of classes ({teacher.num_classes})")
    img_size = cfg.img_size or teacher.info.input_size
    header = StoreHeader(
        num_samples=len(source), views=cfg.views, topk=cfg.topk, num_classes=teacher.num_classes,
        class_names=list(source.class_names), fingerprint=source.fingerprint,
        teacher=teacher_record(teacher), recipe=recipe.to_dict(), seed=cfg.seed,
        img_size=img_size, encoding=ValueEncoding(cfg.encoding), samples_per_shard=cfg.samples_per_shard,
        views_per_shard=cfg.views_per_shard, writer=__version__)
    store = open_or_create_store(cfg, header, source, dist)
    h = store.header
    if cfg.repair:
        damaged = store.check_shards()
        if dist.rank == 0 and damaged:
            for line in damaged:
                print(f"repair: {line}")
        reset = {tuple(map(int, line.split(":")[0].split("/")[2:4])) for line in damaged}
        dist.barrier()
        if dist.rank == 0:
            for vb, sb in reset:
                store.group["done"][vb, sb] = 0
        dist.barrier()
    pending = store.pending_shards()
    mine = pending[dist.rank::dist.world]
    src = source.index()
    src_index = np.asarray([src[k] for k in store.keys], np.int64)
    G = recipe.mix_group
    units = [_Unit(sh, g0, min(g0 + G, sh.s1)) for sh in mine for g0 in range(sh.s0, sh.s1, G)]
    renderer = ViewRenderer(recipe, h.seed, h.img_size)
    stream = ViewStream(source, src_index, renderer, h.num_samples, units, store.keys, cfg.batch_size)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                        pin_memory=teacher.device.type == "cuda", prefetch_factor=4 if cfg.workers else None)
    total_views = sum((sh.v1 - sh.v0 - sh.done) * (sh.s1 - sh.s0) for sh in mine)
    buffers: dict[tuple[int, int], _ShardBuffer] = {}
    t0, n_views, n_shards, unreadable = time.perf_counter(), 0, 0, set()
    with progress_bar(cfg.progress and dist.rank == 0, "generate", total_views, unit="views") as bar:
        for sh, views, ok, pixels, bad in loader:
            key = (sh.vb, sh.sb)
            buf = buffers.get(key)
            if buf is None:
                buf = buffers[key] = _ShardBuffer(sh, h.topk)
            if len(bad):
                buf.status[bad - sh.s0] = STATUS_UNREADABLE
                unreadable.update(bad.tolist())
            if len(ok):
                idx, logp = teacher.topk(pixels.permute(0, 3, 1, 2), h.topk)
                idx = idx.cpu().numpy().reshape(len(views), len(ok), h.topk)
                logp = logp.cpu().numpy().reshape(len(views), len(ok), h.topk + 1)
                vi = np.asarray(views) - sh.v0 - sh.done
                buf.index[vi[:, None], ok - sh.s0] = idx
                buf.logp[vi[:, None], ok - sh.s0] = logp
            step = len(views) * (len(ok) + len(bad))
            buf.left -= step
            n_views += step
            bar.advance(step)
            if buf.left == 0:
                try:
                    store.write_shard(sh, sh.done, buf.index, buf.logp, buf.status)
                except OSError as e:  # disk full, quota, I/O error: the shard stays pending
                    raise UserError(f"could not write {sh.name} to {cfg.out}: {e.strerror or e}; "
                                    f"free space and rerun to resume") from None
                del buffers[key]
                n_shards += 1
    if buffers:
        raise RuntimeError(f"{len(buffers)} shard(s) were not completed; rerun to resume")
    dist.barrier()
    elapsed = time.perf_counter() - t0
    store = LabelStore.open(cfg.out)
    summary = store.summary()
    summary.update(views_written=dist.sum(n_views), shards_written=dist.sum(n_shards), seconds=elapsed,
                   views_per_s=dist.sum(n_views) / max(elapsed, 1e-9))
    return summary
