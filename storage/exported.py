"""Reading a webdataset export back (local or any fsspec URL): the index checks, streaming its
samples, and ``ExportedLabelStore``, an export standing in for a label store.

The format is specified in storage/export_format.py. An export is data from others: index.json is
size-capped and checked field by field, member sizes are checked before reads, and every violation
is one ``StoreError`` naming the file and member.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from functools import cached_property
from typing import Iterator, NamedTuple

import numpy as np

from .encoding import ValueEncoding
from .errors import StoreError, UserError
from .export_format import (EXPORT_FORMAT, EXPORT_VERSION, IMAGE_FIELDS, IMAGE_MEMBER, INDEX_NAME, LABELS_MEMBER,
                            MAX_LABELS_BYTES, NPY_HEADER_MAX, SIDE_DTYPES, SIDE_FILES, load_npy, sniff_image_ext,
                            split_key, unpack_labels)
from .hashing import HashingReader
from .paths import check_regular
from .sources import MAX_CLS_BYTES, MAX_IMAGE_BYTES, MAX_TEXT_BYTES, _parse_cls
from .store import StoreHeader


def _open(url: str, mode: str = "rb"):
    if "://" in url:
        import fsspec

        return fsspec.open(url, mode).open()
    check_regular(url, "an export file", error=StoreError)  # a FIFO would block the open
    return open(url, mode)


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _read_capped(url: str, cap: int) -> bytes:
    with _open(url) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise StoreError(f"{url}: larger than {cap >> 20} MiB; not an index written by 'relabel export'")
    return data


_SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")


def _check_index(d, url: str) -> dict:
    """index.json from others: every field the readers use has its type and a sane range, and shard
    names are plain file names beside index.json (no '/', '..', absolute paths or URLs)."""
    if not isinstance(d, dict) or d.get("format") != EXPORT_FORMAT:
        raise StoreError(f"{url}: not a relabel webdataset export index")

    def bad(field: str, why: str) -> StoreError:
        return StoreError(f"{url}: field {field!r} {why}; not a valid export index (export again)")

    def integer(field: str, lo: int, hi: int, obj=d) -> int:
        v = obj.get(field)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise bad(field, f"is {str(v)[:40]!r}, not an integer in [{lo}, {hi}]")
        return v

    if integer("version", 1, 1 << 30) > EXPORT_VERSION:
        raise StoreError(f"{url}: export version {d['version']} is newer than this relabel understands; upgrade")
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
            raise StoreError(f"{url}: shard name {str(name)[:80]!r} is not a plain .tar file name beside index.json; "
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
        raise StoreError(f"{url}: not found; pass a folder written by 'relabel export'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{url}: not valid JSON ({str(e)[:80]})") from None
    except UserError:
        raise
    except Exception as e:
        raise StoreError(f"{url}: cannot read ({type(e).__name__}: {str(e)[:120]})") from None
    return _check_index(d, url)


def shard_urls(path_or_url: str, index: dict | None = None) -> list[str]:
    index = index or load_index(path_or_url)
    return [_join(path_or_url, s["name"]) for s in index["shards"]]


def _resolve(urls) -> tuple[list[str], dict]:
    """A folder/URL with index.json, one .tar, a brace pattern, or a list of .tar -> (tar urls, index)."""
    if isinstance(urls, (list, tuple)):
        urls = [str(u) for u in urls]
        if not urls:
            raise StoreError("no shards given")
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
            raise StoreError(f"{url}: shard not found") from None
        with raw:
            f = HashingReader(raw)
            try:
                yield from _iter_tar(f, url, V, k, enc)
            except tarfile.TarError as e:
                raise StoreError(f"{url}: not a readable tar ({e})") from None
            except UnicodeError as e:  # a member name that is not UTF-8, ...
                raise StoreError(f"{url}: unreadable member ({type(e).__name__}: {str(e)[:80]})") from None
            if verify:
                f.drain()
                want = by_name.get(url.rpartition("/")[2], {}).get("sha256")
                if want is None:
                    raise StoreError(f"{url}: not listed in index.json")
                if f.sha.hexdigest() != want:
                    raise StoreError(f"{url}: sha256 mismatch with index.json; the shard was changed or damaged")


# Not webdataset's tar_file_iterator + group_by_keys: they read a member before its size can be checked.
def _iter_tar(f, url: str, V: int, k: int, enc: ValueEncoding) -> Iterator[dict]:
    cur: dict | None = None
    labels_cap = NPY_HEADER_MAX + (V + 1) * (2 * k + 1) * 4
    with tarfile.open(fileobj=f, mode="r|") as tf:
        for m in tf:
            if not m.isfile():
                continue
            where = f"{url}: member {m.name!r}"
            if m.name.startswith("/") or ".." in m.name.split("/") or "\\" in m.name:
                raise StoreError(f"{where} has an absolute or '..' path; refusing this shard")
            key, field = split_key(m.name)
            cap = {LABELS_MEMBER: labels_cap, "cls": MAX_CLS_BYTES}.get(field, MAX_IMAGE_BYTES)
            if field != LABELS_MEMBER and field != "cls" and field.lower() not in IMAGE_FIELDS:
                continue  # a field this reader does not use: skipped unread
            if m.size > cap:  # checked before the read
                raise StoreError(f"{where} is {m.size:,} bytes, above the {cap:,} a {field} member may have")
            if cur is not None and cur["__key__"] != key:
                yield _finish(cur, url)
                cur = None
            if cur is None:
                cur = {"__key__": key, "__url__": url, "image": None, "image_ext": None, "cls": None, "_labels": None}
            data = tf.extractfile(m).read()
            if field == LABELS_MEMBER:
                a = load_npy(data, (V + 1, 2 * k + 1), where)
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
        raise StoreError(f"{url}: sample {cur['__key__']!r} has no {LABELS_MEMBER} member")
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
            raise StoreError(f"{path_or_url}: index.json's store header: {e}") from None
        except Exception as e:  # missing or mistyped fields in a header from others
            raise StoreError(f"{path_or_url}: index.json's store header is malformed ({type(e).__name__}: "
                             f"{str(e)[:80]}); export again") from None
        if (self.header.views, self.header.topk) != (r.index.shape[1], r.index.shape[2]):
            raise StoreError(f"{path_or_url}: index.json's store header ({self.header.views} views, top-"
                             f"{self.header.topk}) does not match its labels; export again")
        n = self.header.num_samples
        if len(r.keys) != n or not np.array_equal(r.positions, np.arange(n)):
            raise StoreError(f"{path_or_url}: export holds {len(r.keys)} of the store's {n} samples; "
                             f"export the whole store (or pull all shards)")
        self.keys, self._index, self._logp, self._status = r.keys, r.index, r.logp, r.status
        self.complete = True
        index = load_index(path_or_url)
        self._side = {name: _side_file(path_or_url, index, name, n) for name in SIDE_FILES}

    def sample_digests(self) -> np.ndarray | None:
        """The digest of the image bytes each sample was labelled from (zeros: none), or None for
        exports of stores made before digests."""
        return self._side["digests"]

    def sample_classes(self) -> np.ndarray | None:
        c = self._side["sample_class"]
        return None if c is None else c.astype(np.int64)

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


def _side_file(base: str, index: dict, name: str, n: int) -> np.ndarray | None:
    """One of the files index.json names beside the shards (``SIDE_FILES``), size and sha256 checked."""
    entry = index.get(name)
    if entry is None:
        return None
    if not (isinstance(entry, dict) and entry.get("file") == SIDE_FILES[name]
            and isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
        raise StoreError(f"{base}: index.json's {name!r} entry is malformed; export again")
    dtype, width = SIDE_DTYPES[name]
    shape = (n, width) if width else (n,)
    url = _join(str(base), SIDE_FILES[name])
    try:
        data = _read_capped(url, 256 + n * (width or 1) * np.dtype(dtype).itemsize)
    except UserError:
        raise
    except Exception as e:
        raise StoreError(f"{url}: cannot read ({type(e).__name__}: {str(e)[:120]}); export again") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise StoreError(f"{url}: sha256 does not match index.json; the file was changed or damaged after export")
    return np.array(load_npy(data, shape, url, dtypes=(dtype,)))


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


__all__ = ["load_index", "shard_urls", "iter_exported_samples", "ExportedLabels", "read_exported",
           "read_exported_labels", "ExportedLabelStore", "is_export"]
