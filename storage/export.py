"""Writing a webdataset export of a label store: deterministic tar shards + index.json.

Why tars at all when the zarr store exists: streaming training straight from tars that carry the
image *and* its labels (``--images``), and loaders that only speak webdataset / Hugging Face
``datasets``. For labels alone the zarr store is smaller and random-access; prefer it.

The format (members, the labels array, index.json) is specified in storage/export_format.py;
reading an export back is storage/exported.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, SourceError, StoreError, named
from .export_format import (EXPORT_FORMAT, EXPORT_VERSION, IMAGE_MEMBER, INDEX_NAME, LABELS_MEMBER, SHARD_NAME_PATTERN,
                            SIDE_FILES, check_export_key, labels_dtype, npy_bytes, pack_labels, write_npy)
from .hashing import HashingWriter
from .store import STATUS_PENDING, LabelStore


# --------------------------------------------------------------------------- tar writing
# Not webdataset.TarWriter: tarfile's close pads to a 10 KiB record, changing every shard's bytes and sha256.
class TarShardWriter:
    """Deterministic tar, written block by block: GNU headers (no PAX records), mtime 0, uid/gid 0,
    uname/gname "root", mode 0444, two zero blocks at the end and no padding to tar's 10 KiB record
    (readers do not need it); written to ``<path>.partial`` and renamed when closed."""

    def __init__(self, path: str):
        self.path, self.tmp = path, path + ".partial"
        self._f = open(self.tmp, "wb")
        self._h = HashingWriter(self._f)

    def add(self, name: str, data: bytes) -> None:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.type = len(data), 0, 0o444, tarfile.REGTYPE
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        self._h.write(ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        self._h.write(data)
        pad = -len(data) % tarfile.BLOCKSIZE
        if pad:
            self._h.write(b"\0" * pad)

    def close(self) -> tuple[int, str]:
        self._h.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self._f.close()
        os.replace(self.tmp, self.path)
        return self._h.n, self._h.sha.hexdigest()

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


# --------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    out: str
    shards: list[dict]
    num_samples: int
    total_bytes: int
    label_bytes: int  # bytes of the labels members with their headers (the labels' own cost)
    image_bytes: int
    notes: list[str]

    @property
    def bytes_per_sample(self) -> float:
        return self.total_bytes / max(1, self.num_samples)

    @property
    def label_bytes_per_sample(self) -> float:
        return self.label_bytes / max(1, self.num_samples)


def _member_cost(name: str, size: int) -> int:
    hdr = 512 + (512 + -(-len(name.encode()) // 512) * 512 if len(name.encode()) > 100 else 0)
    return hdr + -(-size // 512) * 512


def export_webdataset(store: LabelStore, out: str, images=None, shard_size: int | None = None,
                      prefix: str = "train", progress=None) -> ExportResult:
    """Write the store (all views of every sample) as tar shards + index.json into ``out``.

    ``images``: an ``ImageSource`` whose image bytes (and class index) go into each sample, or None.
    ``progress``: optional callable(samples_done) for a progress bar.
    """
    h = store.header
    if store.pending_shards():
        raise StoreError(f"{store.path}: the store is incomplete ({len(store.pending_shards())} shard(s) pending); "
                         f"finish 'relabel generate' before exporting")
    S = int(shard_size or h.samples_per_shard)
    if S < 1:
        raise ConfigError(f"{named('shard_size')} must be >= 1 (got {S})")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", prefix):
        raise ConfigError(f"{named('prefix')} {prefix!r}: use letters, digits, '_' and '-' only")
    if "://" in out:
        raise StoreError(f"{out}: export writes to a local folder; use publish with {named('shards')} to upload it")
    keys = store.keys
    damaged = store.check_shards()  # every shard readable and this store's own (seals): an export vouches for it
    if damaged:
        raise StoreError(f"{store.path}: {damaged[0]} ({len(damaged)} damaged in all); run relabel verify, then "
                         f"relabel generate {named('repair', True)} before exporting")
    digest = store.label_set_digest() if store.sealed else None
    bad = [(k, why) for k in keys if (why := check_export_key(k))]
    if bad:
        raise SourceError(f"key {bad[0][0]!r} cannot be a webdataset __key__: {bad[0][1]} "
                          f"({len(bad)} such key(s)); rename those files")
    notes: list[str] = []
    src_index = None
    if images is not None:
        if list(images.class_names) != list(h.class_names):
            raise SourceError(f"{images.root}: its classes ({len(images.class_names)}) differ from the store's "
                              f"({len(h.class_names)}); pass the images the labels were made from")
        idx = images.index()
        missing = [k for k in keys if k not in idx]
        if missing:
            raise SourceError(f"{images.root}: {len(missing)} of the store's {len(keys)} keys are missing "
                              f"(first: {missing[0]!r}); pass the images the labels were made from")
        src_index = np.asarray([idx[k] for k in keys], np.int64)
        stored = store.sample_classes()
        if stored is not None:  # an image filed under another class here carries the wrong .cls
            moved = (stored >= 0) & (stored != np.asarray(images.labels)[src_index])
            if moved.any():
                first = keys[int(np.argmax(moved))]
                raise SourceError(f"{images.root}: {int(moved.sum())} image(s) (first: {first!r}) are filed under "
                                  f"another class than the labels were made for; pass the images the labels were "
                                  f"made from")
        if images.fingerprint_for(h.schema_version) != h.fingerprint:
            notes.append(f"{images.root} has {len(images) - len(keys)} image(s) the store has no labels for; "
                         f"they are not exported")

    os.makedirs(out, exist_ok=True)
    pat = re.compile(SHARD_NAME_PATTERN.format(prefix=re.escape(prefix)))
    for f in os.listdir(out):  # leftovers of an export that was cut short
        if f.endswith(".partial") and (f[:-8] == INDEX_NAME or pat.fullmatch(f[:-8])):
            os.remove(os.path.join(out, f))
    foreign = sorted(f for f in os.listdir(out) if f not in (INDEX_NAME, *SIDE_FILES) and not pat.fullmatch(f))
    if foreign:
        raise StoreError(f"{out}: holds other files ({foreign[0]!r}, ...); export into an empty folder")
    n_shards = -(-h.num_samples // S)
    for f in os.listdir(out):  # shards of an earlier, larger export
        m = pat.fullmatch(f)
        if m and int(m.group(1)) >= n_shards:
            os.remove(os.path.join(out, f))
    if os.path.exists(os.path.join(out, INDEX_NAME)):
        os.remove(os.path.join(out, INDEX_NAME))  # an index never describes shards it did not write

    ldt = labels_dtype(h.num_classes, h.encoding)
    status = store.status()
    digests = store.sample_digests() if images is not None else None  # each image checked before it is written
    g_idx, g_val = store.group["topk_index"], store.group["topk_logp"]
    shards: list[dict] = []
    writer: TarShardWriter | None = None
    label_bytes = image_bytes = 0
    Bs = h.samples_per_shard
    try:
        for s0 in range(0, h.num_samples, Bs):  # one store sample block (all views) at a time
            s1 = min(s0 + Bs, h.num_samples)
            try:
                blk_idx = np.asarray(g_idx[:, s0:s1])
                blk_val = np.asarray(g_val[:, s0:s1])
            except Exception as e:
                raise StoreError(f"{store.path}: labels of samples {s0}-{s1 - 1} are unreadable "
                                 f"({type(e).__name__}); run 'relabel verify'") from None
            for p in range(s0, s1):
                if p % S == 0:
                    if writer is not None:
                        shards[-1]["bytes"], shards[-1]["sha256"] = writer.close()
                    name = f"{prefix}-{p // S:06d}.tar"
                    writer = TarShardWriter(os.path.join(out, name))
                    shards.append({"name": name, "first_position": p, "samples": 0})
                key = keys[p]
                if status[p] == STATUS_PENDING:
                    raise StoreError(f"{store.path}: sample {key!r} has no labels (pending); finish 'relabel generate'")
                a = pack_labels(blk_idx[:, p - s0], blk_val[:, p - s0], p, int(status[p]), ldt)
                members = [(f"{key}.{LABELS_MEMBER}", npy_bytes(a))]
                if images is not None:
                    si = int(src_index[p])
                    data = images.read(si)
                    if digests is not None and digests[p].any() and (
                            hashlib.sha256(data).digest()[:len(digests[p])] != digests[p].tobytes()):
                        raise SourceError(f"{images.root}: image {key!r} is not the image its labels were made from "
                                          f"(its bytes differ); pass the images the labels were made from")
                    members += [(f"{key}.{IMAGE_MEMBER}", data), (f"{key}.cls", str(int(images.labels[si])).encode())]
                    image_bytes += _member_cost(members[-2][0], len(data))
                for name, data in sorted(members):
                    writer.add(name, data)
                label_bytes += _member_cost(members[0][0], len(members[0][1]))
                shards[-1]["samples"] += 1
                if progress is not None:
                    progress(1)
        if writer is not None:
            shards[-1]["bytes"], shards[-1]["sha256"] = writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()

    side = {}  # what binds labels to image bytes and classes (schema 4): one small file each, beside index.json
    if store.has_digests:
        for name, arr in (("digests", store.sample_digests()), ("sample_class", store.sample_classes().astype("<i4"))):
            side[name] = {"file": SIDE_FILES[name], "sha256": write_npy(os.path.join(out, SIDE_FILES[name]), arr)}
    else:
        for f in SIDE_FILES.values():
            if os.path.exists(os.path.join(out, f)):
                os.remove(os.path.join(out, f))
    index = {
        **side,
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "num_samples": h.num_samples,
        "views": h.views,
        "topk": h.topk,
        "num_classes": h.num_classes,
        "class_names": list(h.class_names),
        "encoding": h.encoding.to_dict(),
        "labels_member": LABELS_MEMBER,
        "labels_dtype": ldt.str,
        "images": images is not None,
        "image_member": IMAGE_MEMBER if images is not None else None,
        "image_fingerprint": images.fingerprint if images is not None else None,
        "shard_size": S,
        "header": h.to_dict(),
        "label_set_digest": digest,
        "shards": shards,
    }
    with open(os.path.join(out, INDEX_NAME + ".partial"), "w") as f:
        f.write(json.dumps(index, indent=1, sort_keys=True) + "\n")
    os.replace(os.path.join(out, INDEX_NAME + ".partial"), os.path.join(out, INDEX_NAME))
    total = sum(s["bytes"] for s in shards)
    return ExportResult(out, shards, h.num_samples, total, label_bytes, image_bytes, notes)


__all__ = ["TarShardWriter", "ExportResult", "export_webdataset"]
