"""Image sources: an ImageFolder tree or webdataset tar shards, seen as one sorted list of samples.

Every sample has a stable key (relative path without extension, or the tar ``__key__``), a class
index and its encoded bytes. Keys, not positions, are what labels are matched by.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def fingerprint(keys: list[str], class_names: list[str]) -> str:
    """sha256 of the sorted keys and the class names: same images + classes, same fingerprint."""
    h = hashlib.sha256(b"relabel-fingerprint-v1\n")
    for name in class_names:
        h.update(name.encode() + b"\n")
    h.update(b"\0")
    for k in sorted(keys):
        h.update(k.encode() + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class _TarMember:
    shard: int
    offset: int
    size: int


class ImageSource:
    """A sorted, indexable list of (key, class index, bytes)."""

    kind: str
    root: str
    keys: list[str]
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, i: int) -> bytes:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        fp = getattr(self, "_fp", None)
        if fp is None:
            fp = self._fp = fingerprint(self.keys, self.class_names)
        return fp

    def index(self) -> dict[str, int]:
        """key -> position, built once."""
        idx = getattr(self, "_index", None)
        if idx is None:
            idx = self._index = {k: i for i, k in enumerate(self.keys)}
        return idx

    def describe(self) -> str:
        return f"{self.kind} {self.root} ({len(self)} images, {len(self.class_names)} classes)"


class ImageFolderSource(ImageSource):
    """``root/<class>/<...>/<name>.<ext>``; classes are the sorted top-level folders."""

    kind = "imagefolder"

    def __init__(self, root: str | os.PathLike):
        self.root = str(root)
        rootp = Path(root)
        classes = sorted(p.name for p in rootp.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise UserError(f"{root}: no class folders found; an ImageFolder needs one sub-folder per class")
        entries: list[tuple[str, int, str]] = []
        for ci, c in enumerate(classes):
            for dirpath, dirnames, filenames in os.walk(rootp / c):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for f in filenames:
                    stem, dot, ext = f.rpartition(".")
                    if dot and ext.lower() in IMAGE_EXTENSIONS and not f.startswith("."):
                        rel = os.path.relpath(os.path.join(dirpath, f), rootp).replace(os.sep, "/")
                        entries.append((rel.rpartition(".")[0], ci, rel))
        if not entries:
            raise UserError(f"{root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
        entries.sort()
        for a, b in zip(entries, entries[1:]):
            if a[0] == b[0]:
                raise UserError(f"{root}: two files share the key {a[0]!r} ({a[2]}, {b[2]}); keep one")
        self.keys = [e[0] for e in entries]
        self.labels = np.asarray([e[1] for e in entries], dtype=np.int64)
        self._files = [e[2] for e in entries]
        self.class_names = classes

    def read(self, i: int) -> bytes:
        with open(os.path.join(self.root, self._files[i]), "rb") as f:
            return f.read()


def _expand_shards(spec: str):
    """A folder, a glob or a brace pattern (``train-{000000..000009}.tar``), local or an fsspec URL
    (``s3://bucket/wds``) -> (filesystem, sorted tar paths)."""
    import braceexpand
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(spec)
        if fs.isdir(root):
            paths = sorted(p for p in fs.glob(root.rstrip("/") + "/*.tar"))
        else:
            paths = []
            for pat in braceexpand.braceexpand(root):
                paths.extend(sorted(fs.glob(pat)) if any(c in pat for c in "*?[") else [pat])
            missing = [p for p in paths if not fs.isfile(p)]
            if missing:
                raise UserError(f"{missing[0]}: shard not found ({len(missing)} of {len(paths)} missing)")
    except ImportError as e:  # fsspec names the driver to install (s3fs, gcsfs, ...)
        raise UserError(f"{spec}: {e}") from None
    except (OSError, ValueError) as e:  # unreachable bucket, bad credentials, ...
        raise UserError(f"{spec}: cannot list shards ({type(e).__name__}: {str(e)[:120]})") from None
    if not paths:
        raise UserError(f"{spec}: no .tar shards found")
    return fs, paths


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the key runs to the first dot of the file name."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _safe_member_name(name: str) -> bool:
    return not (name.startswith("/") or ".." in name.split("/"))


class TarShardSource(ImageSource):
    """webdataset shards: image member (jpg/jpeg/png/webp) + ``cls`` per key.

    Members are indexed once (offset, size) so any sample can be read with one seek: training reads
    by key in any order, with any number of workers and ranks, and never waits on a shard split.
    Class names come from a relabel export's ``index.json``, ``classes.txt`` (one per line) or
    ``classes.json`` (a list) beside the shards, else they are the class indices as strings.
    """

    kind = "webdataset"

    def __init__(self, spec: str):
        self.root = spec
        self._fs, self._paths = _expand_shards(spec)
        members: dict[str, dict] = {}
        for si, path in enumerate(self._paths):
            try:
                with self._fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        if not _safe_member_name(m.name):
                            raise UserError(f"{path}: member {m.name!r} has an absolute or '..' path; refusing this shard")
                        key, ext = _split_key(m.name)
                        rec = members.setdefault(key, {})
                        if ext in TAR_IMAGE_EXTENSIONS:
                            rec["img"] = _TarMember(si, m.offset_data, m.size)
                        elif ext == "cls":
                            rec["cls"] = tf.extractfile(m).read().decode().strip()
            except tarfile.TarError as e:
                raise UserError(f"{path}: not a readable tar file ({e}); re-create or remove this shard") from None
        entries = []
        for key, rec in members.items():
            if "img" not in rec:
                continue
            if "cls" not in rec:
                raise UserError(f"{spec}: sample {key!r} has no .cls member; every sample needs a class index")
            try:
                label = int(rec["cls"])
            except ValueError:
                raise UserError(f"{spec}: sample {key!r} has a non-integer .cls {rec['cls']!r}") from None
            entries.append((key, label, rec["img"]))
        if not entries:
            raise UserError(f"{spec}: no image samples found in {len(self._paths)} shard(s)")
        entries.sort(key=lambda e: e[0])
        self.keys = [e[0] for e in entries]
        self.labels = np.asarray([e[1] for e in entries], dtype=np.int64)
        self._members = [e[2] for e in entries]
        self.class_names = self._class_names(int(self.labels.max()) + 1)
        self._pid = os.getpid()

    def _class_names(self, n: int) -> list[str]:
        folder = self._paths[0].rpartition("/")[0]
        fs = self._fs

        def text(name: str) -> str | None:
            path = f"{folder}/{name}" if folder else name
            return fs.cat_file(path).decode() if fs.isfile(path) else None

        export_index = text("index.json")  # written by 'relabel export --images'
        if export_index and json.loads(export_index).get("class_names"):
            return [str(x) for x in json.loads(export_index)["class_names"]]
        if (txt := text("classes.txt")) is not None:
            names = [line.strip() for line in txt.splitlines() if line.strip()]
        elif (js := text("classes.json")) is not None:
            names = [str(x) for x in json.loads(js)]
        else:
            return [str(i) for i in range(n)]
        if len(names) < n:
            raise UserError(f"{folder}: class list has {len(names)} names but .cls goes up to {n - 1}")
        return names

    def read(self, i: int) -> bytes:
        """One ranged read: a local seek, or one HTTP range request."""
        if os.getpid() != self._pid:  # a forked worker: async filesystems (s3fs) are not fork-safe
            import fsspec

            self._fs = fsspec.core.url_to_fs(self.root, skip_instance_cache=True)[0]
            self._pid = os.getpid()
        m = self._members[i]
        return self._fs.cat_file(self._paths[m.shard], start=m.offset, end=m.offset + m.size)


def open_source(spec: str | os.PathLike) -> ImageSource:
    """An ImageFolder tree, or webdataset shards (a folder of .tar, a glob or a brace pattern; local
    or any fsspec URL such as s3://bucket/shards)."""
    spec = str(spec)
    if "://" in spec:
        return TarShardSource(spec)
    if os.path.isdir(spec):
        if glob.glob(os.path.join(spec, "*.tar")):
            return TarShardSource(spec)
        return ImageFolderSource(spec)
    if spec.endswith(".tar") or any(c in spec for c in "*?{"):
        return TarShardSource(spec)
    if os.path.exists(spec):
        raise UserError(f"{spec}: not an image folder or tar shards; pass a class-per-folder tree or .tar shards")
    raise UserError(f"{spec}: no such file or directory")
