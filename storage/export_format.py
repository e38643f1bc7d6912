"""The webdataset export format ("relabel-webdataset"): its spec, the labels member, key and
shard-name rules. Writing an export is storage/export.py, reading one back storage/exported.py.

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

  ``relabel.storage.export_format.unpack_labels(A, k, encoding)`` does this decoding.

``__key__`` is the store key (ImageFolder: path relative to the root without extension; webdataset:
the image's ``__key__``), so the shards line up with image shards that use the same keys. Keys whose
file name holds a '.' cannot be exported (webdataset cuts keys at the first dot of the file name).

``index.json`` (sorted keys, deterministic): ``format``, ``version``, ``num_samples``, ``views``,
``topk``, ``num_classes``, ``class_names``, ``encoding``, ``labels_member``, ``labels_dtype``,
``images`` (bool), ``image_member`` (``"image"``, or null without images), ``image_fingerprint``
(fingerprint of the image source, or null),
``shard_size``, ``header`` (the full store header: recipe, seed, teacher, fingerprint, ... enough to
rebuild the views), ``label_set_digest`` (the exported store's, storage/FORMAT.md; null for a
schema-2 store), and ``shards``: a list of ``{name, samples, first_position, bytes, sha256}``.
Exports of schema-4 stores also carry, beside index.json, ``digests.npy`` ((N, 16) uint8: the first
16 bytes of the sha256 of the image bytes each sample was labelled from, zeros for none) and
``sample_class.npy`` ((N,) int32: each sample's class index), both in store order and named in
index.json as ``digests`` / ``sample_class``: ``{file, sha256}``; training from the export checks
every image it reads against its digest, as from the store.

Running the export again on the same store (and images) writes byte-identical files.
Per-sample cost: 512-byte member header + the data rounded up to 512 bytes, per member.

Readers treat an export as data from others: index.json is size-capped and checked field by field
(shard names are plain ``*.tar`` file names beside it, never paths or URLs), every member's size is
checked before it is read, a labels member's ``.npy`` header is parsed and checked against the
index's views and top-k before anything is allocated (no pickles, ever), and any violation is one
``StoreError`` naming the file and member.
"""
from __future__ import annotations

import io
import os

import numpy as np

from .encoding import ValueEncoding
from .errors import StoreError
from .sources import TAR_IMAGE_MEMBER

EXPORT_FORMAT = "relabel-webdataset"
EXPORT_VERSION = 2  # 2: one image member name, ``<key>.image``, whatever the image format
INDEX_NAME = "index.json"
LABELS_MEMBER = "labels.npy"
IMAGE_MEMBER = TAR_IMAGE_MEMBER
SHARD_NAME_PATTERN = r"{prefix}-(\d{{6}})\.tar"  # format with prefix=re.escape(prefix); group 1: the shard number
# Image fields of version-1 exports and of other webdatasets, besides ``image``.
IMAGE_FIELDS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", IMAGE_MEMBER}
MAX_LABELS_BYTES = 64 << 20  # one sample's labels member: (views + 1) x (2k + 1) x 4 bytes at most
NPY_HEADER_MAX = 4096  # bytes of a labels member's .npy header a reader parses at most


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
        raise StoreError(f"store position {position} does not fit the export format (< 2**32)")
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
        raise StoreError(f"labels array has shape {a.shape}; expected (views + 1, {2 * k + 1})")
    V = a.shape[0] - 1
    meta = a[V].astype(np.int64)
    codes = a[:V, k:]
    if encoding.dtype.kind == "f":
        bits = np.uint16 if encoding.dtype.itemsize == 2 else np.uint32
        stored = codes.astype(bits).view(encoding.dtype)
    else:
        stored = codes.astype(encoding.dtype)
    return int(meta[1] + (meta[2] << 16)), int(meta[0]), a[:V, :k].astype(np.int64), encoding.decode(stored)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


# Beside index.json (stores of schema 4): the digest of each sample's image bytes, (N, 16) uint8, and
# each sample's class, (N,) int32, in store order; index.json names each with its sha256.
SIDE_FILES = {"digests": "digests.npy", "sample_class": "sample_class.npy"}
SIDE_DTYPES = {"digests": ("|u1", 16), "sample_class": ("<i4", None)}


def write_npy(path: str, a: np.ndarray) -> str:
    """Write ``a`` as .npy (format 1.0, no pickle), atomically; its sha256 (hex)."""
    import hashlib

    data = npy_bytes(np.ascontiguousarray(a))
    with open(path + ".partial", "wb") as f:
        f.write(data)
    os.replace(path + ".partial", path)
    return hashlib.sha256(data).hexdigest()


def load_npy(data: bytes, shape: tuple[int, ...], where: str, dtypes: tuple[str, ...] = ("<u2", "<u4")) -> np.ndarray:
    """A labels member: its header is parsed and checked (shape, dtype, byte count) before any array
    exists, so a header claiming 10^18 elements costs nothing; object dtypes (pickles) are refused."""
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            got, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=NPY_HEADER_MAX)
        elif version in ((2, 0), (3, 0)):
            got, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=NPY_HEADER_MAX)
        else:
            raise ValueError(f"npy version {version}")
    except Exception as e:
        raise StoreError(f"{where}: not a readable .npy ({type(e).__name__}: {str(e)[:80]})") from None
    if dtype.str not in dtypes or fortran:
        raise StoreError(f"{where}: .npy dtype {dtype.str}{' (Fortran order)' if fortran else ''}; expected "
                         f"{' or '.join(dtypes)}")
    if tuple(got) != tuple(shape):
        raise StoreError(f"{where}: .npy shape {tuple(got)}; index.json says {tuple(shape)}")
    payload = data[fp.tell():]
    if len(payload) != int(np.prod(shape)) * dtype.itemsize:
        raise StoreError(f"{where}: .npy holds {len(payload)} data bytes; its header says "
                         f"{int(np.prod(shape)) * dtype.itemsize}")
    return np.frombuffer(payload, dtype).reshape(shape)


# --------------------------------------------------------------------------- keys and images
# Not webdataset's base_plus_ext: it gives (None, None) for a file name with no dot or an empty stem.
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


__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "INDEX_NAME", "LABELS_MEMBER", "IMAGE_MEMBER", "SHARD_NAME_PATTERN",
           "IMAGE_FIELDS", "MAX_LABELS_BYTES", "NPY_HEADER_MAX", "labels_dtype", "pack_labels", "unpack_labels",
           "npy_bytes", "load_npy", "split_key", "check_export_key", "sniff_image_ext"]
