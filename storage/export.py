"""Export a label store as webdataset tar shards, and read such shards back.

Why tars at all when the zarr store exists: streaming training straight from tars that carry the
image *and* its labels (``--images``), and loaders that only speak webdataset / Hugging Face
``datasets``. For labels alone the zarr store is smaller and random-access; prefer it.

Export format ("relabel-webdataset", version 1)
===============================================

A folder holding ``<prefix>-NNNNNN.tar`` (``train-000000.tar``, ...; six digits, from 0) and
``index.json``.

Sample order: store order (store position 0, 1, ..., N-1). The store order is a seeded shuffle of
the keys and the recipe pairs samples for mixup/cutmix inside groups of ``mix_group`` consecutive
positions, so reading the shards in order gives shuffled samples whose mix partners sit next to
them (keep the shard size a multiple of ``mix_group``; the default, the store's samples per shard,
is). Shard ``i`` holds positions ``[first_position, first_position + samples)`` (see index.json).

Members of one sample, in this order (names sorted), all regular files, USTAR/GNU headers
(``tarfile.GNU_FORMAT``; no PAX records), mtime 0, uid/gid 0, uname/gname ``root``, mode 0444:

- ``<key>.cls``            (only with ``--images``) class index, ASCII decimal, from the image source.
- ``<key>.<ext>``          (only with ``--images``) the image file's bytes, unchanged; ``ext`` is
                           sniffed from the bytes (``jpg``, ``png``, ``webp``, ``bmp``, ``gif``), else
                           the source file's extension, else ``jpg``.
- ``<key>.labels.npy``     every view of the sample, a NumPy ``.npy`` (format 1.0, no pickle)
                           holding ONE 2-D array ``A`` of shape ``(V + 1, 2k + 1)``, dtype ``<u2``
                           (``<u4`` when the store has more than 65536 classes or ``f32`` values):

      A[v, 0:k]      v < V   top-k class indices of view v, best first
      A[v, k:2k+1]   v < V   the stored log-prob values of view v exactly as in the store
                             (k top classes then the "rest" bin): for encoding ``q8`` the uint8
                             code c, log p = -c * step; for ``f16`` / ``f32`` the IEEE bit pattern
                             (``A[v, k:].astype(uint16).view(float16)`` / ``uint32 -> float32``)
      A[V, 0]                the sample's status in the store (1 ok, 2 unreadable: labels are 0)
      A[V, 1] + 65536*A[V, 2]  the sample's store position (what mix pairing is computed from)
      A[V, 3:]               0

  ``relabel.storage.export.unpack_labels(A, k, encoding)`` does this decoding.

``__key__`` is the store key (ImageFolder: path relative to the root without extension; webdataset:
the image's ``__key__``), so the shards line up with image shards that use the same keys. Keys whose
file name holds a '.' cannot be exported (webdataset cuts keys at the first dot of the file name).

``index.json`` (sorted keys, deterministic): ``format``, ``version``, ``num_samples``, ``views``,
``topk``, ``num_classes``, ``class_names``, ``encoding``, ``labels_member``, ``labels_dtype``,
``images`` (bool), ``image_fingerprint`` (fingerprint of the image source, or null),
``shard_size``, ``header`` (the full store header: recipe, seed, teacher, fingerprint, ... enough to
rebuild the views), and ``shards``: a list of ``{name, samples, first_position, bytes, sha256}``.

Running the export again on the same store (and images) writes byte-identical files.
Per-sample cost: 512-byte member header + the data rounded up to 512 bytes, per member.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator, NamedTuple

import numpy as np

from .encoding import ValueEncoding
from .errors import UserError
from .store import STATUS_PENDING, LabelStore, StoreHeader

EXPORT_FORMAT = "relabel-webdataset"
EXPORT_VERSION = 1
INDEX_NAME = "index.json"
LABELS_MEMBER = "labels.npy"
_SHARD_RE = r"{prefix}-(\d{{6}})\.tar"


# --------------------------------------------------------------------------- the labels member
def labels_dtype(num_classes: int, encoding: ValueEncoding) -> np.dtype:
    """uint16 unless class indices or stored value bits need 32 bits."""
    wide = num_classes > 1 << 16 or encoding.dtype.itemsize > 2
    return np.dtype("<u4" if wide else "<u2")


def _code_bits(stored: np.ndarray) -> np.ndarray:
    """Stored values as unsigned integers (q8: the code; f16/f32: the bit pattern)."""
    if stored.dtype.kind == "f":
        return stored.view(np.uint16 if stored.dtype.itemsize == 2 else np.uint32)
    return stored


def pack_labels(index: np.ndarray, stored: np.ndarray, position: int, status: int, dtype: np.dtype) -> np.ndarray:
    """(V, k) indices + (V, k+1) stored values + position/status -> the (V+1, 2k+1) array."""
    V, k = index.shape
    if not 0 <= position < 1 << 32:
        raise UserError(f"store position {position} does not fit the export format (< 2**32)")
    a = np.zeros((V + 1, 2 * k + 1), dtype)
    a[:V, :k] = index
    a[:V, k:] = _code_bits(stored)
    a[V, 0], a[V, 1], a[V, 2] = status, position & 0xFFFF, position >> 16
    return a


def unpack_labels(a, k: int, encoding: ValueEncoding | dict) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The (V+1, 2k+1) array -> (position, status, index int64 (V, k), log-probs float32 (V, k+1))."""
    if isinstance(encoding, dict):
        encoding = ValueEncoding.from_dict(encoding)
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] != 2 * k + 1 or a.shape[0] < 2:
        raise UserError(f"labels array has shape {a.shape}; expected (views + 1, {2 * k + 1})")
    V = a.shape[0] - 1
    meta = a[V].astype(np.int64)
    codes = a[:V, k:]
    if encoding.dtype.kind == "f":
        bits = np.uint16 if encoding.dtype.itemsize == 2 else np.uint32
        stored = codes.astype(bits).view(encoding.dtype)
    else:
        stored = codes.astype(encoding.dtype)
    return int(meta[1] + (meta[2] << 16)), int(meta[0]), a[:V, :k].astype(np.int64), encoding.decode(stored)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


# --------------------------------------------------------------------------- keys and images
def split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the key runs to the first dot of the file name; the rest is the field."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext


def check_export_key(key: str) -> str | None:
    """Why a store key cannot be a webdataset ``__key__``, or None."""
    base = key.rpartition("/")[2]
    if not base or base.startswith("."):
        return "its file name is empty or starts with '.'"
    if "." in base:
        return "its file name holds a '.', where webdataset cuts the key"
    if key.startswith("/") or ".." in key.split("/") or "\\" in key:
        return "it is an absolute path or holds '..' or '\\'"
    return None


def sniff_image_ext(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"GIF8",):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    return None


# --------------------------------------------------------------------------- tar writing
class _HashingWriter:
    """A write-only file wrapper that counts and hashes what goes through it."""

    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        self.f.flush()


class TarShardWriter:
    """Deterministic tar, written block by block: GNU headers (no PAX records), mtime 0, uid/gid 0,
    uname/gname "root", mode 0444, two zero blocks at the end and no padding to tar's 10 KiB record
    (readers do not need it); written to ``<path>.partial`` and renamed when closed."""

    def __init__(self, path: str):
        self.path, self.tmp = path, path + ".partial"
        self._f = open(self.tmp, "wb")
        self._h = _HashingWriter(self._f)

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
        raise UserError(f"{store.path}: the store is incomplete ({len(store.pending_shards())} shard(s) pending); "
                        f"finish 'relabel generate' before exporting")
    S = int(shard_size or h.samples_per_shard)
    if S < 1:
        raise UserError(f"--shard-size must be >= 1 (got {S})")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", prefix):
        raise UserError(f"--prefix {prefix!r}: use letters, digits, '_' and '-' only")
    if "://" in out:
        raise UserError(f"{out}: export writes to a local folder; use 'relabel publish --shards' to upload it")
    keys = store.keys
    bad = [(k, why) for k in keys if (why := check_export_key(k))]
    if bad:
        raise UserError(f"key {bad[0][0]!r} cannot be a webdataset __key__: {bad[0][1]} "
                        f"({len(bad)} such key(s)); rename those files")
    notes: list[str] = []
    src_index = None
    if images is not None:
        if list(images.class_names) != list(h.class_names):
            raise UserError(f"{images.root}: its classes ({len(images.class_names)}) differ from the store's "
                            f"({len(h.class_names)}); pass the images the labels were made from")
        idx = images.index()
        missing = [k for k in keys if k not in idx]
        if missing:
            raise UserError(f"{images.root}: {len(missing)} of the store's {len(keys)} keys are missing "
                            f"(first: {missing[0]!r}); pass the images the labels were made from")
        src_index = np.asarray([idx[k] for k in keys], np.int64)
        if images.fingerprint != h.fingerprint:
            notes.append(f"{images.root} has {len(images) - len(keys)} image(s) the store has no labels for; "
                         f"they are not exported")

    os.makedirs(out, exist_ok=True)
    pat = re.compile(_SHARD_RE.format(prefix=re.escape(prefix)))
    for f in os.listdir(out):  # leftovers of an export that was cut short
        if f.endswith(".partial") and (f[:-8] == INDEX_NAME or pat.fullmatch(f[:-8])):
            os.remove(os.path.join(out, f))
    foreign = sorted(f for f in os.listdir(out) if f != INDEX_NAME and not pat.fullmatch(f))
    if foreign:
        raise UserError(f"{out}: holds other files ({foreign[0]!r}, ...); export into an empty folder")
    n_shards = -(-h.num_samples // S)
    for f in os.listdir(out):  # shards of an earlier, larger export
        m = pat.fullmatch(f)
        if m and int(m.group(1)) >= n_shards:
            os.remove(os.path.join(out, f))
    if os.path.exists(os.path.join(out, INDEX_NAME)):
        os.remove(os.path.join(out, INDEX_NAME))  # an index never describes shards it did not write

    ldt = labels_dtype(h.num_classes, h.encoding)
    status = store.status()
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
                raise UserError(f"{store.path}: labels of samples {s0}-{s1 - 1} are unreadable "
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
                    raise UserError(f"{store.path}: sample {key!r} has no labels (pending); finish 'relabel generate'")
                a = pack_labels(blk_idx[:, p - s0], blk_val[:, p - s0], p, int(status[p]), ldt)
                members = [(f"{key}.{LABELS_MEMBER}", _npy_bytes(a))]
                if images is not None:
                    si = int(src_index[p])
                    data = images.read(si)
                    ext = sniff_image_ext(data) or _source_ext(images, si) or "jpg"
                    members += [(f"{key}.{ext}", data), (f"{key}.cls", str(int(images.labels[si])).encode())]
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

    index = {
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
        "image_fingerprint": images.fingerprint if images is not None else None,
        "shard_size": S,
        "header": h.to_dict(),
        "shards": shards,
    }
    with open(os.path.join(out, INDEX_NAME + ".partial"), "w") as f:
        f.write(json.dumps(index, indent=1, sort_keys=True) + "\n")
    os.replace(os.path.join(out, INDEX_NAME + ".partial"), os.path.join(out, INDEX_NAME))
    total = sum(s["bytes"] for s in shards)
    return ExportResult(out, shards, h.num_samples, total, label_bytes, image_bytes, notes)


def _source_ext(images, i: int) -> str | None:
    files = getattr(images, "_files", None)  # ImageFolderSource keeps relative file names
    if files is None:
        return None
    ext = files[i].rpartition(".")[2].lower()
    return ext or None


# --------------------------------------------------------------------------- reading back
def _open(url: str, mode: str = "rb"):
    if "://" in url:
        import fsspec

        return fsspec.open(url, mode).open()
    return open(url, mode)


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def load_index(path_or_url: str) -> dict:
    """index.json of an export folder (local or fsspec URL), or the one beside a .tar."""
    base = path_or_url
    if base.endswith(".tar"):
        base = base.rpartition("/")[0] or "."
    if base.endswith(INDEX_NAME):
        url = base
    else:
        url = _join(base, INDEX_NAME)
    try:
        with _open(url) as f:
            d = json.loads(f.read())
    except FileNotFoundError:
        raise UserError(f"{url}: not found; pass a folder written by 'relabel export'") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{url}: not valid JSON ({e})") from None
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{url}: cannot read ({type(e).__name__}: {e})") from None
    if d.get("format") != EXPORT_FORMAT:
        raise UserError(f"{url}: not a relabel webdataset export index")
    if int(d.get("version", 0)) > EXPORT_VERSION:
        raise UserError(f"{url}: export version {d['version']} is newer than this relabel understands; upgrade")
    return d


def shard_urls(path_or_url: str, index: dict | None = None) -> list[str]:
    index = index or load_index(path_or_url)
    return [_join(path_or_url, s["name"]) for s in index["shards"]]


class _HashingReader:
    def __init__(self, f):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def read(self, n=-1):
        b = self.f.read(n)
        self.sha.update(b)
        self.n += len(b)
        return b

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _resolve(urls) -> tuple[list[str], dict]:
    """A folder/URL with index.json, one .tar, a brace pattern, or a list of .tar -> (tar urls, index)."""
    if isinstance(urls, (list, tuple)):
        urls = [str(u) for u in urls]
        if not urls:
            raise UserError("no shards given")
        return urls, load_index(urls[0])
    urls = str(urls)
    if "{" in urls:
        import braceexpand

        lst = list(braceexpand.braceexpand(urls))
        return lst, load_index(lst[0])
    if urls.endswith(".tar"):
        return [urls], load_index(urls)
    index = load_index(urls)
    return shard_urls(urls, index), index


def iter_exported_samples(urls, verify: bool = False) -> Iterator[dict]:
    """Stream samples from exported shards, in shard order.

    Yields dicts: ``__key__``, ``__url__``, ``position``, ``status``, ``index`` int64 (V, k),
    ``logp`` float32 (V, k+1), ``image`` (bytes or None), ``image_ext`` (or None), ``cls`` (int or
    None). ``verify`` checks each shard's sha256 against index.json (after its last sample).
    """
    tar_urls, index = _resolve(urls)
    k, enc = int(index["topk"]), ValueEncoding.from_dict(index["encoding"])
    by_name = {s["name"]: s for s in index["shards"]}
    for url in tar_urls:
        try:
            raw = _open(url)
        except FileNotFoundError:
            raise UserError(f"{url}: shard not found") from None
        with raw:
            f = _HashingReader(raw)
            try:
                yield from _iter_tar(f, url, k, enc)
            except tarfile.TarError as e:
                raise UserError(f"{url}: not a readable tar ({e})") from None
            if verify:
                f.drain()
                want = by_name.get(url.rpartition("/")[2], {}).get("sha256")
                if want is None:
                    raise UserError(f"{url}: not listed in index.json")
                if f.sha.hexdigest() != want:
                    raise UserError(f"{url}: sha256 mismatch with index.json; the shard was changed or damaged")


def _iter_tar(f, url: str, k: int, enc: ValueEncoding) -> Iterator[dict]:
    cur: dict | None = None
    with tarfile.open(fileobj=f, mode="r|") as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, field = split_key(m.name)
            if cur is not None and cur["__key__"] != key:
                yield _finish(cur, url)
                cur = None
            if cur is None:
                cur = {"__key__": key, "__url__": url, "image": None, "image_ext": None, "cls": None, "_labels": None}
            data = tf.extractfile(m).read()
            if field == LABELS_MEMBER:
                cur["position"], cur["status"], cur["index"], cur["logp"] = unpack_labels(_load_npy(data), k, enc)
                cur["_labels"] = True
            elif field == "cls":
                cur["cls"] = int(data.decode().strip())
            else:
                cur["image"], cur["image_ext"] = data, field
    if cur is not None:
        yield _finish(cur, url)


def _finish(cur: dict, url: str) -> dict:
    if not cur.pop("_labels"):
        raise UserError(f"{url}: sample {cur['__key__']!r} has no {LABELS_MEMBER} member")
    return cur


class ExportedLabels(NamedTuple):
    header: dict
    keys: list[str]
    index: np.ndarray  # int64 (N, V, k)
    logp: np.ndarray  # float32 (N, V, k+1)
    positions: np.ndarray  # int64 (N,)
    status: np.ndarray  # uint8 (N,)


def read_exported(path_or_url, verify: bool = True) -> ExportedLabels:
    """Every sample of an export, rows sorted by store position; checks sha256s by default."""
    tar_urls, index = _resolve(path_or_url)
    rows = list(iter_exported_samples(tar_urls, verify=verify))
    rows.sort(key=lambda r: r["position"])
    V, k = int(index["views"]), int(index["topk"])
    N = len(rows)
    idx = np.zeros((N, V, k), np.int64)
    lp = np.zeros((N, V, k + 1), np.float32)
    for i, r in enumerate(rows):
        idx[i], lp[i] = r["index"], r["logp"]
    return ExportedLabels(index["header"], [r["__key__"] for r in rows], idx, lp,
                          np.asarray([r["position"] for r in rows], np.int64),
                          np.asarray([r["status"] for r in rows], np.uint8))


def read_exported_labels(path_or_url) -> tuple[dict, list[str], np.ndarray, np.ndarray]:
    """(store header dict, keys, indices int64 (N, V, k), log-probs float32 (N, V, k+1)), keyed by
    ``__key__`` in store order. ``path_or_url``: an export folder (local or fsspec URL), one of its
    .tar files, a brace pattern or a list of them; index.json must sit beside the shards."""
    r = read_exported(path_or_url)
    return r.header, r.keys, r.index, r.logp


class ExportedLabelStore:
    """An export read back as a label store (read-only, in memory): what ``relabel train --labels``
    needs from LabelStore (header, keys, status, read_view), so tars can stand in for the zarr store.

    Every shard is read once and checked against index.json's sha256; an epoch's labels are then a
    slice in memory. The trainer reads images by key with random access (relabel.storage.sources), so there
    is no shard-to-worker split and no DDP hang however few shards there are.
    """

    def __init__(self, path_or_url: str):
        r = read_exported(path_or_url, verify=True)
        self.path = str(path_or_url)
        self.header = StoreHeader.from_dict(r.header)
        n = self.header.num_samples
        if len(r.keys) != n or not np.array_equal(r.positions, np.arange(n)):
            raise UserError(f"{path_or_url}: export holds {len(r.keys)} of the store's {n} samples; "
                            f"export the whole store (or pull all shards)")
        self.keys, self._index, self._logp, self._status = r.keys, r.index, r.logp, r.status
        self.complete = True

    @cached_property
    def key_index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def status(self) -> np.ndarray:
        return self._status

    def pending_shards(self) -> list:
        return []

    def read_view(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= v < self.header.views:
            raise IndexError(f"view {v} out of range (export has {self.header.views})")
        return np.ascontiguousarray(self._index[:, v]), np.ascontiguousarray(self._logp[:, v])


def is_export(path_or_url: str) -> bool:
    """A folder (or URL) with an export's index.json, rather than a zarr store."""
    try:
        with _open(_join(str(path_or_url), INDEX_NAME)) as f:
            return json.load(f).get("format") == EXPORT_FORMAT
    except Exception:
        return False


def open_labels(path_or_url: str):
    """A zarr label store, or a webdataset export of one: both answer read_view/keys/status/header."""
    if is_export(path_or_url):
        return ExportedLabelStore(path_or_url)
    return LabelStore.open(path_or_url)


__all__ = ["export_webdataset", "ExportedLabelStore", "open_labels", "is_export", "read_exported", "read_exported_labels", "iter_exported_samples", "load_index",
           "pack_labels", "unpack_labels", "labels_dtype", "ExportResult", "ExportedLabels", "INDEX_NAME",
           "LABELS_MEMBER", "EXPORT_FORMAT"]
