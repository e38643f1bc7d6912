"""Export a label store as webdataset tar shards, and read such shards back.

Why tars at all when the zarr store exists: streaming training straight from tars that carry the
image *and* its labels (``--images``), and loaders that only speak webdataset / Hugging Face
``datasets``. For labels alone the zarr store is smaller and random-access; prefer it.

Export format ("relabel-webdataset", version 2)
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
- ``<key>.image``          (only with ``--images``) the image file's bytes, unchanged, whatever their
                           format (JPEG, PNG, WebP, ...: readers sniff it from the bytes, as PIL does).
                           One member name for every sample, so that loaders which require every
                           sample to have the same fields (Hugging Face ``datasets``) accept a folder
                           that mixes formats. Version 1 named it ``<key>.<ext>`` (``jpg``, ``png``,
                           ...); readers here accept both.
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
``images`` (bool), ``image_member`` (``"image"``, or null without images), ``image_fingerprint``
(fingerprint of the image source, or null),
``shard_size``, ``header`` (the full store header: recipe, seed, teacher, fingerprint, ... enough to
rebuild the views), and ``shards``: a list of ``{name, samples, first_position, bytes, sha256}``.

Running the export again on the same store (and images) writes byte-identical files.
Per-sample cost: 512-byte member header + the data rounded up to 512 bytes, per member.

Readers treat an export as data from others: index.json is size-capped and checked field by field
(shard names are plain ``*.tar`` file names beside it, never paths or URLs), every member's size is
checked before it is read, a labels member's ``.npy`` header is parsed and checked against the
index's views and top-k before anything is allocated (no pickles, ever), and any violation is one
``UserError`` naming the file and member.
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
from .paths import check_regular
from .sources import MAX_CLS_BYTES, MAX_IMAGE_BYTES, MAX_TEXT_BYTES, TAR_IMAGE_MEMBER, _parse_cls
from .store import STATUS_PENDING, LabelStore, StoreHeader

EXPORT_FORMAT = "relabel-webdataset"
EXPORT_VERSION = 2  # 2: one image member name, ``<key>.image``, whatever the image format
INDEX_NAME = "index.json"
LABELS_MEMBER = "labels.npy"
IMAGE_MEMBER = TAR_IMAGE_MEMBER
_SHARD_RE = r"{prefix}-(\d{{6}})\.tar"
# Image fields of version-1 exports and of other webdatasets, besides ``image``.
_IMAGE_FIELDS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", IMAGE_MEMBER}
MAX_LABELS_BYTES = 64 << 20  # one sample's labels member: (views + 1) x (2k + 1) x 4 bytes at most
_NPY_HEADER_MAX = 4096


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


def _load_npy(data: bytes, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A labels member: its header is parsed and checked (shape, dtype, byte count) before any array
    exists, so a header claiming 10^18 elements costs nothing; object dtypes (pickles) are refused."""
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            got, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=_NPY_HEADER_MAX)
        elif version in ((2, 0), (3, 0)):
            got, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=_NPY_HEADER_MAX)
        else:
            raise ValueError(f"npy version {version}")
    except Exception as e:
        raise UserError(f"{where}: not a readable .npy ({type(e).__name__}: {str(e)[:80]})") from None
    if dtype.str not in ("<u2", "<u4") or fortran:
        raise UserError(f"{where}: .npy dtype {dtype.str}{' (Fortran order)' if fortran else ''}; expected <u2 or <u4")
    if tuple(got) != tuple(shape):
        raise UserError(f"{where}: .npy shape {tuple(got)}; index.json says {tuple(shape)} (views + 1, 2k + 1)")
    payload = data[fp.tell():]
    if len(payload) != int(np.prod(shape)) * dtype.itemsize:
        raise UserError(f"{where}: .npy holds {len(payload)} data bytes; its header says "
                        f"{int(np.prod(shape)) * dtype.itemsize}")
    return np.frombuffer(payload, dtype).reshape(shape)


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
        "image_member": IMAGE_MEMBER if images is not None else None,
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


# --------------------------------------------------------------------------- reading back
def _open(url: str, mode: str = "rb"):
    if "://" in url:
        import fsspec

        return fsspec.open(url, mode).open()
    check_regular(url, "an export file")  # a FIFO would block the open
    return open(url, mode)


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _read_capped(url: str, cap: int) -> bytes:
    with _open(url) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise UserError(f"{url}: larger than {cap >> 20} MiB; not an index written by 'relabel export'")
    return data


_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")


def _check_index(d, url: str) -> dict:
    """index.json from others: every field the readers use has its type and a sane range, and shard
    names are plain file names beside index.json (no '/', '..', absolute paths or URLs)."""
    if not isinstance(d, dict) or d.get("format") != EXPORT_FORMAT:
        raise UserError(f"{url}: not a relabel webdataset export index")

    def bad(field: str, why: str) -> UserError:
        return UserError(f"{url}: field {field!r} {why}; not a valid export index (export again)")

    def integer(field: str, lo: int, hi: int, obj=d) -> int:
        v = obj.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise bad(field, f"is {str(v)[:40]!r}, not an integer in [{lo}, {hi}]")
        return v

    if integer("version", 1, 1 << 30) > EXPORT_VERSION:
        raise UserError(f"{url}: export version {d['version']} is newer than this relabel understands; upgrade")
    V, k = integer("views", 1, 1 << 24), integer("topk", 1, 1 << 24)
    integer("num_samples", 0, 1 << 32)
    integer("num_classes", 1, 1 << 32)
    if (V + 1) * (2 * k + 1) * 4 > MAX_LABELS_BYTES:
        raise bad("views", f"and topk ({V} x {k}) make a labels member above {MAX_LABELS_BYTES >> 20} MiB")
    try:
        ValueEncoding.from_dict(d.get("encoding"))
    except Exception:
        raise bad("encoding", f"is {str(d.get('encoding'))[:60]!r}") from None
    if not isinstance(d.get("header"), dict):
        raise bad("header", "is not an object")
    if not isinstance(d.get("class_names", []), list):
        raise bad("class_names", "is not a list")
    shards = d.get("shards")
    if not isinstance(shards, list):
        raise bad("shards", "is not a list")
    for s in shards:
        if not isinstance(s, dict):
            raise bad("shards", "holds an entry that is not an object")
        name = s.get("name")
        if not isinstance(name, str) or not _SHARD_NAME.fullmatch(name):
            raise UserError(f"{url}: shard name {str(name)[:80]!r} is not a plain .tar file name beside index.json; "
                            f"refusing it")
        integer("samples", 0, 1 << 32, s)
        integer("first_position", 0, 1 << 32, s)
        if "sha256" in s and not (isinstance(s["sha256"], str) and re.fullmatch(r"[0-9a-f]{64}", s["sha256"])):
            raise bad("shards", f"has a malformed sha256 for {name}")
    return d


def load_index(path_or_url: str) -> dict:
    """index.json of an export folder (local or fsspec URL), or the one beside a .tar; checked."""
    base = str(path_or_url)
    if base.endswith(".tar"):
        base = base.rpartition("/")[0] or "."
    if base.endswith(INDEX_NAME):
        url = base
    else:
        url = _join(base, INDEX_NAME)
    try:
        d = json.loads(_read_capped(url, MAX_TEXT_BYTES))
    except FileNotFoundError:
        raise UserError(f"{url}: not found; pass a folder written by 'relabel export'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{url}: not valid JSON ({str(e)[:80]})") from None
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{url}: cannot read ({type(e).__name__}: {str(e)[:120]})") from None
    return _check_index(d, url)


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
    ``logp`` float32 (V, k+1), ``image`` (bytes or None), ``image_ext`` (the format sniffed from the
    bytes: ``jpg``, ``png``, ...; a version-1 member's own extension; or None), ``cls`` (int or None). ``verify`` checks each shard's sha256 against index.json (after its last sample).
    """
    tar_urls, index = _resolve(urls)
    V, k, enc = index["views"], index["topk"], ValueEncoding.from_dict(index["encoding"])
    by_name = {s["name"]: s for s in index["shards"]}
    for url in tar_urls:
        try:
            raw = _open(url)
        except FileNotFoundError:
            raise UserError(f"{url}: shard not found") from None
        with raw:
            f = _HashingReader(raw)
            try:
                yield from _iter_tar(f, url, V, k, enc)
            except tarfile.TarError as e:
                raise UserError(f"{url}: not a readable tar ({e})") from None
            except UnicodeError as e:  # a member name that is not UTF-8, ...
                raise UserError(f"{url}: unreadable member ({type(e).__name__}: {str(e)[:80]})") from None
            if verify:
                f.drain()
                want = by_name.get(url.rpartition("/")[2], {}).get("sha256")
                if want is None:
                    raise UserError(f"{url}: not listed in index.json")
                if f.sha.hexdigest() != want:
                    raise UserError(f"{url}: sha256 mismatch with index.json; the shard was changed or damaged")


def _iter_tar(f, url: str, V: int, k: int, enc: ValueEncoding) -> Iterator[dict]:
    cur: dict | None = None
    labels_cap = _NPY_HEADER_MAX + (V + 1) * (2 * k + 1) * 4
    with tarfile.open(fileobj=f, mode="r|") as tf:
        for m in tf:
            if not m.isfile():
                continue
            where = f"{url}: member {m.name!r}"
            if m.name.startswith("/") or ".." in m.name.split("/") or "\\" in m.name:
                raise UserError(f"{where} has an absolute or '..' path; refusing this shard")
            key, field = split_key(m.name)
            cap = {LABELS_MEMBER: labels_cap, "cls": MAX_CLS_BYTES}.get(field, MAX_IMAGE_BYTES)
            if field != LABELS_MEMBER and field != "cls" and field.lower() not in _IMAGE_FIELDS:
                continue  # a field this reader does not use: skipped unread
            if m.size > cap:  # checked before the read
                raise UserError(f"{where} is {m.size:,} bytes, above the {cap:,} a {field} member may have")
            if cur is not None and cur["__key__"] != key:
                yield _finish(cur, url)
                cur = None
            if cur is None:
                cur = {"__key__": key, "__url__": url, "image": None, "image_ext": None, "cls": None, "_labels": None}
            data = tf.extractfile(m).read()
            if field == LABELS_MEMBER:
                a = _load_npy(data, (V + 1, 2 * k + 1), where)
                cur["position"], cur["status"], cur["index"], cur["logp"] = unpack_labels(a, k, enc)
                cur["_labels"] = True
            elif field == "cls":
                cur["cls"] = _parse_cls(data, key, url)
            else:
                ext = field.lower()
                cur["image"], cur["image_ext"] = data, sniff_image_ext(data) if ext == IMAGE_MEMBER else ext
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
        try:
            self.header = StoreHeader.from_dict(r.header)
        except UserError as e:
            raise UserError(f"{path_or_url}: index.json's store header: {e}") from None
        except Exception as e:  # missing or mistyped fields in a header from others
            raise UserError(f"{path_or_url}: index.json's store header is malformed ({type(e).__name__}: "
                            f"{str(e)[:80]}); export again") from None
        if (self.header.views, self.header.topk) != (r.index.shape[1], r.index.shape[2]):
            raise UserError(f"{path_or_url}: index.json's store header ({self.header.views} views, top-"
                            f"{self.header.topk}) does not match its labels; export again")
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
    url = _join(str(path_or_url), INDEX_NAME)
    local = "://" not in url
    try:
        if local and not os.path.lexists(url):
            return False
        d = json.loads(_read_capped(url, MAX_TEXT_BYTES))
    except Exception:  # a broken index.json in a folder that is no zarr store: load_index says what is wrong
        return local and not os.path.exists(_join(str(path_or_url), "zarr.json"))
    return isinstance(d, dict) and d.get("format") == EXPORT_FORMAT


def open_labels(path_or_url: str):
    """A zarr label store, or a webdataset export of one: both answer read_view/keys/status/header."""
    from .manifest import refuse_unfinished_pull

    refuse_unfinished_pull(str(path_or_url))  # half a pull: say so rather than "damaged"
    if is_export(path_or_url):
        return ExportedLabelStore(path_or_url)
    return LabelStore.open(path_or_url)


__all__ = ["export_webdataset", "ExportedLabelStore", "open_labels", "is_export", "read_exported", "read_exported_labels", "iter_exported_samples", "load_index",
           "pack_labels", "unpack_labels", "labels_dtype", "ExportResult", "ExportedLabels", "INDEX_NAME",
           "LABELS_MEMBER", "EXPORT_FORMAT"]
