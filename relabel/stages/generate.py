"""Stage one: run the teacher once over every stored view and write top-k labels.

Work is cut into units of (shard, mix group): a DataLoader worker decodes the group's images once,
renders all of the shard's pending views of them, mixes pairs, and yields batches of uint8 pixels.
The main process runs the teacher, takes top-k on the device and writes a shard as soon as all of
its groups are in. Under torchrun each rank owns every world-th pending shard.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from relabel.storage import LabelStore, StoreHeader, UserError, open_source
from relabel.storage.errors import ConfigError, SourceError, StoreError, named
from relabel.storage.encoding import ValueEncoding
from relabel.storage.paths import is_inside
from relabel.storage.sources import ImageSource
from relabel.storage.store import (DIGEST_BYTES, SCHEMA_VERSION, STATUS_OK, STATUS_UNREADABLE, Shard,
                                   StoreExistsError)

from relabel import __version__
from relabel.classmap import resolve_class_map
from relabel.dist import Dist
from .generate_config import GenerateConfig
from relabel.models import out_of_memory
from relabel.progress import progress_bar
from relabel.teacher import NonFiniteOutput, build_teacher, start_topk, teacher_identity
from relabel.views import replay_check
from relabel.views.rules import check_rule, native_rule

from .verify import check_unreadable
from relabel.views import (Recipe, Renderer, ViewRenderer, create_recipe, create_renderer, decode_image, finish_batch,
                    group_partners, plan_batch, prefetch_on_device, store_order)

log = logging.getLogger(__name__)


class ReadFailed(Exception):
    """Bytes could not be read after every retry: an I/O fault, never a property of the image."""


def read_with_retry(source: ImageSource, i: int, tries: int, wait: float) -> bytes:
    """Read a sample's bytes, retrying with backoff: a network or NFS hiccup must not become a label."""
    for t in range(tries):
        try:
            return source.read(i)
        except UserError:  # a refusal (size cap, not a regular file): retrying cannot help
            raise
        except Exception as e:
            if t == tries - 1:
                raise ReadFailed(f"{type(e).__name__}: {e}") from None
            time.sleep(wait * 2 ** t)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class GenerateResult:
    """What one ``generate`` call did, and the state of the store it leaves.

    ``views_written``/``shards_written`` count this call only (0 when the store was already complete);
    ``store`` is ``LabelStore.summary()`` of the store afterwards (teacher, encoding, sizes, ...).
    """
    out: str
    views_written: int
    shards_written: int
    seconds: float
    views_per_s: float
    num_samples: int
    views: int
    complete: bool
    corrupt_samples: int  # samples stage one could not decode (recorded, never labelled)
    label_bytes_per_view: float
    store: dict


@dataclass(frozen=True)
class WorkUnit:
    """One mix group [g0, g1) of a shard: what a worker decodes once and renders every pending view of."""

    shard: Shard
    g0: int
    g1: int


def byte_digest(data: bytes) -> bytes:
    """What a store records of the encoded bytes a sample was labelled from (storage/FORMAT.md)."""
    return hashlib.sha256(data).digest()[:DIGEST_BYTES]


class ViewStream(IterableDataset):
    """Yields (shard, views, ok positions, render payload, unreadable positions, digests), at most a
    batch of views at a time: several views of a small group, or slices of one view of a large
    group. The payload becomes pixels (uint8 NHWC) in the main process (``finish_batch``); digests
    (group size, 16) are those of the bytes each labelled position was decoded from (zeros: unreadable)."""

    def __init__(self, source: ImageSource, src_index: np.ndarray, renderer: Renderer, num_samples: int,
                 units: list[WorkUnit], keys: list[str], batch_size: int, sticky: np.ndarray | None = None,
                 tries: int = 4, wait: float = 0.5):
        self.source, self.src_index, self.renderer = source, src_index, renderer
        self.N, self.units, self.keys, self.batch_size = num_samples, units, keys, batch_size
        self.sticky = np.zeros(num_samples, bool) if sticky is None else sticky
        self.tries, self.wait = tries, wait

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        r, spec = self.renderer, self.renderer.spec
        for u in self.units[wid::nw]:
            sh = u.shard
            views = list(range(sh.v0 + sh.done, sh.v1))
            images, bad, failed = {}, [], None
            digests = np.zeros((u.g1 - u.g0, DIGEST_BYTES), np.uint8)
            for p in range(u.g0, u.g1):
                if self.sticky[p]:  # unreadable in another view block: the same verdict here
                    bad.append(p)
                    continue
                try:
                    data = read_with_retry(self.source, int(self.src_index[p]), self.tries, self.wait)
                except ReadFailed as e:
                    failed = f"sample {self.keys[p]!r}: {e}"
                    break
                except UserError:  # refused for what the file is (not a regular file, too large): no image
                    bad.append(p)
                    continue
                try:
                    images[p] = decode_image(data)
                except Exception:  # bytes that were read but are no image: recorded, never fatal
                    bad.append(p)
                    continue
                # the bytes labelled (an unreadable sample has none: whether it was read depends on
                # which view block found it unreadable first, and its labels are never used)
                digests[p - u.g0] = np.frombuffer(byte_digest(data), np.uint8)
            if failed is not None:  # the unit's cells arrive as "failed": its shard is not written
                yield sh, views, np.arange(u.g0, u.g1, dtype=np.int64), None, failed, None
                continue
            ok = sorted(images)
            pos, lost = np.asarray(ok, np.int64), np.asarray(bad, np.int64)
            per = max(1, self.batch_size // max(1, len(ok)))  # views per yield (a group larger than a batch: 1)
            for c in range(0, len(views), per):
                chunk = views[c:c + per]
                rows, vs, partners = [], [], []
                for v in chunk:
                    part = group_partners(spec.recipe, spec.seed, v, u.g0, u.g1 - u.g0)
                    rows += ok
                    vs += [v] * len(ok)
                    partners += [int(part[p - u.g0]) for p in ok]
                planned = [r.plan(self.keys[p], v, images[p]) for p, v in zip(rows, vs)]
                payload, _, _ = plan_batch(r, rows, vs, partners, planned)
                yield sh, chunk, pos, payload, lost, (u.g0, digests) if c == 0 else None


class _Started(NamedTuple):
    """A unit whose teacher work is queued and whose labels are not stored yet."""
    shard: Shard
    views: list
    ok: np.ndarray  # positions with pixels
    rendered: bool  # False: a read failed for good, nothing to label
    bad: np.ndarray  # unreadable positions (or, not rendered, what failed)
    labels: list | None  # [(first row, PendingTopk)] (_start_unit's)
    digests: tuple | None  # (first position, digests of the group's bytes), with a group's first chunk


class _ShardBuffer:
    def __init__(self, shard: Shard, k: int):
        nv, ns = shard.v1 - shard.v0 - shard.done, shard.s1 - shard.s0
        self.shard, self.left = shard, nv * ns  # (view, sample) cells still to come
        self.index = np.zeros((nv, ns, k), np.int64)
        self.logp = np.zeros((nv, ns, k + 1), np.float32)
        self.status = np.full(ns, STATUS_OK, np.uint8)
        self.digests = np.zeros((ns, DIGEST_BYTES), np.uint8)
        self.failed: str | None = None  # a read that failed for good: the shard stays pending


def _header_diff(old: StoreHeader, new: StoreHeader) -> list[str]:
    """Settings that must match for a store to be continued; views may grow, and the shard layout
    is the store's own (it does not change a label)."""
    out = []
    for name in ("fingerprint", "topk", "num_classes", "seed", "img_size", "class_map", "key_rule"):
        if getattr(old, name) != getattr(new, name):
            out.append(f"{name} (store: {getattr(old, name)}, now: {getattr(new, name)})")
    if old.resize_rule != new.resize_rule:
        out.append(f"resize rule (store: {old.resize_rule}, now: {new.resize_rule})")
    if json.dumps(old.recipe, sort_keys=True) != json.dumps(new.recipe, sort_keys=True):
        a, b = (json.loads(json.dumps(r)) for r in (old.recipe, new.recipe))  # as stored: lists, not tuples
        fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        what = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in fields[:3])
        out.append(f"recipe {new.recipe.get('name')!r} ({what}{' ...' if len(fields) > 3 else ''})")
    if old.encoding != new.encoding:
        out.append(f"encoding (store: {old.encoding.name}, now: {new.encoding.name})")
    a, b = teacher_identity(old.teacher), teacher_identity(new.teacher)
    own = lambda ident: [m[3] for m in ident[:-2]]  # noqa: E731
    if a[:-2] != b[:-2] and [m[:3] for m in a[:-2]] == [m[:3] for m in b[:-2]]:  # the same members
        out.append(f"{named('teacher_own_size')} (store: {any(own(a))}, now: {any(own(b))})")
    elif a[:-2] != b[:-2]:
        names = lambda t: ", ".join(f"{m.get('model')} {(m.get('checkpoint_sha256') or m.get('weights') or '')[:12]}"  # noqa: E731
                                    for m in t.get("members") or [t])
        out.append(f"teacher (store: {names(old.teacher)}, now: {names(new.teacher)})")
    for name in ("precision", "tf32"):
        if old.teacher.get(name) != new.teacher.get(name):
            out.append(f"teacher {name} (store: {old.teacher.get(name)}, now: {new.teacher.get(name)})")
    return out


def _validate(cfg: GenerateConfig, recipe: Recipe) -> None:
    """What no single setting's limits say (each setting's own limits were checked when ``cfg`` was made)."""
    if cfg.samples_per_shard * min(cfg.views, cfg.views_per_shard) > 1 << 24:
        raise ConfigError(f"{named('samples_per_shard')} x views per shard is too large to hold a shard in memory "
                          f"(at most {1 << 24} views per shard; got {cfg.samples_per_shard} x "
                          f"{min(cfg.views, cfg.views_per_shard)})")
    if cfg.samples_per_shard % recipe.mix_group:
        raise ConfigError(f"{named('samples_per_shard')} must be a positive multiple of the recipe's mix_group "
                          f"({recipe.mix_group}); got {cfg.samples_per_shard}")
    if os.path.isfile(cfg.out):
        raise ConfigError(f"{cfg.out}: is a file; {named('out')} must be a folder for the label store")
    if os.path.isdir(cfg.data) and is_inside(cfg.out, cfg.data, strict=True):  # it would become a class
        raise ConfigError(f"{cfg.out}: {named('out')} lies inside DATA ({cfg.data}); put the label store outside "
                          f"the images")


def _existing_header(out: str) -> StoreHeader | None:
    """The header of the store at ``out``, or None (no store there, or a header too damaged to read)."""
    try:
        return LabelStore.open(out).header
    except StoreError:
        return None


def _refuse_other_settings(cfg: GenerateConfig, old: StoreHeader, new: StoreHeader) -> None:
    if old.schema_version < new.schema_version:  # an older store: repaired in its own schema, never extended
        raise ConfigError(f"{cfg.out}: store schema {old.schema_version} was written by an older relabel; it can be "
                          f"read, trained on and repaired ({named('repair', True)}) but not extended: generate into "
                          f"another {named('out')}")
    diff = _header_diff(old, new)
    if diff:
        raise ConfigError(f"{cfg.out}: store was made with other settings: {'; '.join(diff)}. "
                          f"Use the same settings to resume, or another {named('out')}")


def _open_existing(cfg: GenerateConfig, header: StoreHeader) -> LabelStore:
    store = LabelStore.open(cfg.out, mode="r+")
    _refuse_other_settings(cfg, store.header, header)
    store.remove_partials()  # temp files of writes a crash cut short
    store.remove_stale_claims(cfg.claim_lease, force=cfg.repair)  # writers that died (repair: every claim)
    store.extend_views(header.views)
    return store


def open_or_create_store(cfg: GenerateConfig, header: StoreHeader, source: ImageSource, dist: Dist,
                         renderer: Renderer | None = None, device=None, on_disk: StoreHeader | None = None) -> LabelStore:
    """Rank 0 creates or checks the store; the others open it once it is ready. ``renderer``: the one
    this run renders with on ``device`` (its canonical renders go into the header's replay check);
    ``on_disk``: the header of the store already at ``cfg.out``, if one is readable."""
    if dist.rank == 0:
        try:
            keys = store_order(source.keys, cfg.seed)
            index = source.index()
            classes = np.asarray(source.labels, np.int64)[[index[k] for k in keys]]

            def record_replay_check() -> None:  # decodes a few images: only when a header is written
                r = renderer or create_renderer("pillow", ViewRenderer(create_recipe(header.recipe), header.seed,
                                                                       header.img_size))
                header.replay_check = replay_check.record(
                    r, keys, lambda k: read_with_retry(source, index[k], cfg.read_retries, cfg.retry_wait),
                    device=device)

            if os.path.isdir(cfg.out) and os.listdir(cfg.out):
                if cfg.repair:
                    if on_disk is not None:  # a repair with other settings changes nothing, not even metadata
                        _refuse_other_settings(cfg, on_disk, header)
                    record_replay_check()
                    for line in LabelStore.repair_metadata(cfg.out, header, keys, classes):
                        log.warning("repair: %s", line)
                store = _open_existing(cfg, header)
            else:
                record_replay_check()
                try:
                    store = LabelStore.create(cfg.out, header, keys, classes)
                except StoreExistsError:  # another generate made it first: join it if the settings agree
                    store = _open_existing(cfg, header)
        except OSError as e:
            raise StoreError(f"could not write the label store {cfg.out}: {e.strerror or e}; "
                            f"free space (or fix permissions) and rerun") from None
    dist.barrier()
    return LabelStore.open(cfg.out, mode="r+") if dist.rank else store


def _reset(store: LabelStore, shards: set[tuple[int, int]], dist: Dist) -> None:
    """Mark shards pending (rank 0), so this run computes them again; every rank waits for it."""
    dist.barrier()
    if dist.rank == 0:
        for vb, sb in sorted(shards):
            store.group["done"][vb, sb] = 0
    dist.barrier()


def _run_pending(cfg: GenerateConfig, recipe: Recipe, source: ImageSource, store: LabelStore, teacher,
                 dist: Dist) -> tuple[int, int, list[str]]:
    """Compute this rank's share of the pending shards a few at a time; returns (views, shards
    written, failures). Claiming a round at a time (not all up front) lets two writers on one store
    split the work; claims are kept alive while we work, so a killed writer's expire after the lease."""
    mine = store.pending_shards()[dist.rank::dist.world]
    h = store.header
    per_shard = -(-min(h.samples_per_shard, h.num_samples) // recipe.mix_group)  # units (mix groups) in a shard
    # Shards per round: enough units (mix groups) for every worker to have two; one ImageNet-sized shard
    # (256 groups) is a round. A round ends with a drain, so rounds are no smaller than that.
    per_round = max(1, -(-2 * max(1, cfg.workers) // per_shard))
    src = source.index()
    src_index = np.asarray([src[k] for k in store.keys], np.int64)
    # Unreadable in any written view block: in all. Only shards marked done count: a pending shard's
    # status (a crash's leftover, a repair's target, a foreign file) is recomputed, never built on.
    sticky = (store.trusted_block_status() == STATUS_UNREADABLE).any(0)
    known = store.sample_digests(trusted_only=True)  # the bytes other view blocks were labelled from
    renderer = create_renderer(cfg.renderer, ViewRenderer(recipe, h.seed, h.img_size, h.resize_rule,
                                                          refuse_tall=not h.resize_rule_certain),
                               teacher.device, cfg.render_kernel)
    if renderer.name != h.renderer and mine:
        log.info("rendering with %s (the store was started with %s; their bytes are equal)", renderer.name, h.renderer)
    def left(sh: Shard) -> int:  # the (view, sample) cells of a shard still to compute
        return (sh.v1 - sh.v0 - sh.done) * (sh.s1 - sh.s0)

    total = sum(left(sh) for sh in mine)
    n_views, n_shards, failed, busy = 0, 0, [], 0
    with (store.keep_claims_alive(max(0.05, cfg.claim_lease / 4)),
          progress_bar(cfg.progress and dist.rank == 0, "generate", total, unit="views") as bar):
        todo = list(mine)
        while todo:
            take = []
            while todo and len(take) < per_round:
                sh = todo.pop(0)
                if not store.claim(sh, cfg.claim_lease):
                    busy += 1
                    bar.advance(left(sh))
                    continue
                now = store.shard(sh.vb, sh.sb, int(store.group["done"][sh.vb, sh.sb]))  # another writer may be done
                if now.done >= now.v1 - now.v0:
                    store.release(sh)
                    bar.advance(left(sh))
                    continue
                problem = store.check_seal(now) if now.done else None
                if problem:  # growing views merges into the shard's files: they must be this store's
                    log.warning("%s: %s; recomputing the whole shard", now.name, problem)
                    now = replace(now, done=0)
                bar.advance(max(0, left(sh) - left(now)))  # views another writer did meanwhile
                take.append(now)
            if not take:
                continue
            try:
                v, n, f = _compute(cfg, recipe, source, store, teacher, dist, take, src_index, sticky, renderer, bar,
                                   written=n_shards, known=known)
            finally:
                for sh in take:
                    store.release(sh)
            n_views, n_shards, failed = n_views + v, n_shards + n, failed + f
    if busy:
        log.warning("%d shard(s) are being computed by another process on this store; left to it "
                    "(rerun afterwards to check the store is complete)", busy)
    return n_views, n_shards, failed


def _compute(cfg: GenerateConfig, recipe: Recipe, source: ImageSource, store: LabelStore, teacher, dist: Dist,
             mine: list[Shard], src_index: np.ndarray, sticky: np.ndarray, renderer: Renderer,
             bar, written: int = 0, known: np.ndarray | None = None) -> tuple[int, int, list[str]]:
    """Label ``mine`` (one claim round); ``written``: shards this run wrote in earlier rounds."""
    h = store.header
    G = recipe.mix_group
    units = [WorkUnit(sh, g0, min(g0 + G, sh.s1)) for sh in mine for g0 in range(sh.s0, sh.s1, G)]
    stream = ViewStream(source, src_index, renderer, h.num_samples, units, store.keys, cfg.batch_size, sticky,
                        tries=max(1, cfg.read_retries), wait=cfg.retry_wait)
    loader = DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                        pin_memory=teacher.device.type == "cuda", prefetch_factor=4 if cfg.workers else None)
    buffers: dict[tuple[int, int], _ShardBuffer] = {}
    n_views, n_shards, failed = 0, 0, []

    def render(item):  # the main process's device stage: pixels on the teacher's device (None: a failed read)
        sh, views, ok, payload, bad, digests = item
        pixels = None if payload is None else finish_batch(renderer, payload, teacher.device).permute(0, 3, 1, 2)
        return sh, views, ok, pixels, bad, digests

    # On CUDA the next unit's views render on a side stream while the teacher labels this one, and a
    # unit's labels are read back only once the next unit's teacher work is queued, so the device
    # need not wait while the host stores them.
    pending: _Started | None = None

    def store_pending() -> None:
        nonlocal pending, n_views, n_shards
        unit, pending = pending, None  # cleared first: a unit is stored at most once
        if unit is not None:
            n_views, n_shards = _label_unit(cfg, store, buffers, failed, unit, n_views, n_shards, bar, known)

    try:
        for sh, views, ok, pixels, bad, digests in prefetch_on_device(loader, render, teacher.device):
            labels = _start_unit(cfg, h, teacher, buffers, sh, ok, pixels)
            store_pending()
            pending = _Started(sh, views, ok, pixels is not None, bad, labels, digests)
        store_pending()
    except BaseException as e:  # out of memory, a worker's error, Ctrl-C: what is labelled is stored first
        store_pending()
        if isinstance(e, torch.cuda.OutOfMemoryError):
            raise ConfigError(out_of_memory(teacher.device, "the teacher", cfg.batch_size,
                                            f"; the {written + n_shards} shard(s) written so far are kept")) from None
        raise
    if buffers:
        raise RuntimeError(f"{len(buffers)} shard(s) were not completed; rerun to resume")
    return n_views, n_shards, failed


def _start_unit(cfg: GenerateConfig, h: StoreHeader, teacher, buffers: dict, sh: Shard, ok: np.ndarray,
                pixels) -> list | None:
    """Queue the teacher on one unit's views, a batch at a time (a mix group larger than a batch is
    rendered whole): [(first row, PendingTopk)], or None when there is nothing to label (a failed
    read, no readable sample, or a shard already given up)."""
    buf = buffers.get((sh.vb, sh.sb))
    if pixels is None or not len(ok) or (buf is not None and buf.failed is not None):
        return None
    return [(b0, start_topk(teacher, pixels[b0:b0 + cfg.batch_size], h.topk))
            for b0 in range(0, len(pixels), cfg.batch_size)]


def _label_unit(cfg: GenerateConfig, store: LabelStore, buffers: dict, failed: list, unit: _Started,
                n_views: int, n_shards: int, bar, known: np.ndarray | None = None):
    """Store one unit's labels in its shard's buffer; write the shard when all its units are in.
    Returns the updated (views, shards written)."""
    sh, views, ok, bad = unit.shard, unit.views, unit.ok, unit.bad
    h = store.header
    key = (sh.vb, sh.sb)
    buf = buffers.get(key)
    if buf is None:
        buf = buffers[key] = _ShardBuffer(sh, h.topk)
    if not unit.rendered:  # a read failed for good: nothing of this unit is labelled
        buf.failed = buf.failed or f"{sh.name}, {bad}"
        step = len(views) * len(ok)
    else:
        if len(bad):
            buf.status[bad - sh.s0] = STATUS_UNREADABLE
        if unit.digests is not None:
            g0, dg = unit.digests
            buf.digests[g0 - sh.s0:g0 - sh.s0 + len(dg)] = dg
        if unit.labels is not None and buf.failed is None:
            parts = []
            for b0, pending in unit.labels:
                try:
                    parts.append(pending.result())
                except NonFiniteOutput as e:
                    first = b0 + e.rows[0]
                    raise NonFiniteOutput(e.rows, e.precision, where=(
                        f" (first: sample {store.keys[int(ok[first % len(ok)])]!r}, view "
                        f"{views[first // len(ok)]}; {sh.name})")) from None
            idx = np.concatenate([p[0] for p in parts]).reshape(len(views), len(ok), h.topk)
            logp = np.concatenate([p[1] for p in parts]).reshape(len(views), len(ok), h.topk + 1)
            vi = np.asarray(views) - sh.v0 - sh.done
            buf.index[vi[:, None], ok - sh.s0] = idx
            buf.logp[vi[:, None], ok - sh.s0] = logp
        step = len(views) * (len(ok) + len(bad))
    buf.left -= step
    bar.advance(step)
    if buf.left == 0:
        del buffers[key]
        if buf.failed is not None:
            failed.append(buf.failed)
            return n_views, n_shards
        if not store.holds(sh):  # stalled past its lease: another writer took the shard over
            log.warning("%s was taken over by another writer while this one computed it; left to it", sh.name)
            return n_views, n_shards
        if known is not None:
            _same_bytes(store, sh, buf.digests, known[sh.s0:sh.s1])
        try:
            store.write_shard(sh, sh.done, buf.index, buf.logp, buf.status, buf.digests)
        except OSError as e:  # disk full, quota, I/O error: the shard stays pending
            raise StoreError(f"could not write {sh.name} to {cfg.out}: {e.strerror or e}; "
                            f"free space and rerun to resume") from None
        store.release(sh)
        n_shards += 1
        n_views += (sh.v1 - sh.v0 - sh.done) * (sh.s1 - sh.s0)  # what this run stored (not what it computed)
    return n_views, n_shards


def _same_bytes(store: LabelStore, sh: Shard, read: np.ndarray, known: np.ndarray) -> None:
    """Refuse to write a shard labelled from other bytes than the store's other view blocks of the
    same samples were: a store's views of one image must all be of the same image."""
    both = read.any(1) & known.any(1)
    differ = both & (read != known).any(1)
    if differ.any():
        first = store.keys[sh.s0 + int(np.nonzero(differ)[0][0])]
        raise SourceError(f"{int(differ.sum())} image(s) of {sh.name} (first: {first!r}) are not the bytes the store's "
                          f"other views of them were labelled from: DATA changed since; restore the images, or run "
                          f"verify to name every changed one and generate {named('repair', True)} to relabel them")


def generate(cfg: GenerateConfig, teacher=None) -> GenerateResult:
    """Stage one: label every pending shard of the store ``cfg.out`` (created, resumed or grown).

    Args:
        cfg: what to label and how.
        teacher: a ready teacher object instead of ``cfg.teacher`` (e.g. a ``relabel.FunctionTeacher``
            wrapping any ``pixels -> logits`` callable): what generate uses of it is ``logits(pixels)``,
            ``device``, ``precision``, ``num_classes``, ``input_size`` and ``record()``.
    Returns:
        A ``GenerateResult``.
    Raises:
        ConfigError: bad settings, or a store made with other settings; SourceError: unreadable data;
        StoreError: a damaged store. Shards whose images could not be read stay pending (rerun).
    """
    recipe = create_recipe(cfg.recipe)
    _validate(cfg, recipe)
    source = open_source(cfg.data, cfg.key_rule)
    dist = Dist.from_env(cfg.device)
    try:
        return _generate(cfg, recipe, source, dist, teacher)
    finally:
        dist.close()


def _as_list(x) -> list:
    return [] if x is None else [x] if isinstance(x, str) else list(x)


def _generate(cfg: GenerateConfig, recipe: Recipe, source: ImageSource, dist: Dist, teacher=None) -> GenerateResult:
    if teacher is None:
        teacher = build_teacher(_as_list(cfg.teacher), _as_list(cfg.teacher_checkpoint), cfg.teacher_weight,
                                device=dist.device_str(cfg.device), precision=cfg.precision,
                                own_size=cfg.teacher_own_size,
                                compile=cfg.compile)
    if cfg.topk > teacher.num_classes:
        raise ConfigError(f"{named('topk', cfg.topk)} is above the teacher's number of classes ({teacher.num_classes})")
    class_map = resolve_class_map(cfg.class_map, list(source.class_names), teacher.num_classes)
    img_size = cfg.img_size if cfg.img_size is not None else teacher.input_size
    # An existing store renders by its own rule (views added later must match the ones it holds, whatever
    # Pillow is installed now); a new one by the installed Pillow's. A repair keeps the store's schema.
    on_disk = _existing_header(cfg.out)
    rule = check_rule(on_disk.resize_rule) if on_disk is not None else native_rule()
    renderer = create_renderer(cfg.renderer, ViewRenderer(recipe, cfg.seed, img_size, rule), teacher.device,
                               cfg.render_kernel)
    differ = replay_check.renderer_parity(renderer, teacher.device) if renderer.name != "pillow" else []
    if differ:  # the renderers' bytes must be equal, or stores and students would not agree across them
        raise ConfigError(f"the {renderer.name} renderer on {teacher.device} renders {', '.join(differ[:4])} differently "
                          f"from Pillow; set {named('renderer', 'pillow')} (and report it)")
    schema = on_disk.schema_version if cfg.repair and on_disk is not None else SCHEMA_VERSION
    header = StoreHeader(
        num_samples=len(source), views=cfg.views, topk=cfg.topk, num_classes=teacher.num_classes,
        class_names=list(source.class_names), fingerprint=source.fingerprint_for(schema), schema_version=schema,
        teacher=teacher.record(), recipe=recipe.to_dict(), seed=cfg.seed,
        img_size=img_size, encoding=ValueEncoding(cfg.encoding), samples_per_shard=cfg.samples_per_shard,
        views_per_shard=cfg.views_per_shard, writer=__version__, class_map=class_map, renderer=renderer.name,
        key_rule=source.key_rule, render_rules={"resize": rule})
    store = open_or_create_store(cfg, header, source, dist, renderer, teacher.device, on_disk)
    if cfg.repair:  # trust nothing a check names: files, seals, and the image bytes each shard recorded
        damaged = store.check_shards()
        if store.has_digests:
            damaged += store.check_bytes(source, skip=damaged)[0]
        damaged += check_unreadable(store, source)
        if dist.rank == 0:
            for d in damaged:
                log.warning("repair: %s", d)
        _reset(store, {(d.shard.vb, d.shard.sb) for d in damaged}, dist)
    t0 = time.perf_counter()
    n_views = n_shards = 0
    failed: list[str] = []
    # A second round redoes shards that labelled a sample another view block (written at the same
    # time by another rank) found unreadable, so "unreadable" ends up the same in every block.
    for _ in range(2):
        v, s, f = _run_pending(cfg, recipe, source, store, teacher, dist)
        n_views, n_shards, failed = n_views + v, n_shards + s, failed + f
        dist.barrier()
        redo = {(sh.vb, sh.sb) for sh in store.inconsistent_shards()}
        if not redo or dist.sum(len(failed)):  # every rank takes the same decision
            break
        _reset(store, redo, dist)
    n_failed = dist.sum(len(failed))
    if n_failed:
        first = f" (first here: {failed[0]})" if failed else ""
        raise SourceError(f"{n_failed} shard(s) could not be read and stay pending{first}; the rest is written: "
                        f"fix the storage and rerun the same command to resume")
    elapsed = time.perf_counter() - t0
    summary = LabelStore.open(cfg.out).summary()
    written = dist.sum(n_views)
    return GenerateResult(out=cfg.out, views_written=written, shards_written=dist.sum(n_shards), seconds=elapsed,
                          views_per_s=written / max(elapsed, 1e-9), num_samples=summary["num_samples"],
                          views=summary["views"], complete=summary["complete"],
                          corrupt_samples=summary["corrupt_samples"],
                          label_bytes_per_view=summary["label_bytes_per_view"], store=summary)
