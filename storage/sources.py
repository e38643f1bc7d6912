"""Image sources: an ImageFolder tree, webdataset tar shards or Hugging Face parquet, seen as one
sorted list of samples.

Every sample has a stable key, a class index and its encoded bytes. Keys, not positions, are what
labels are matched by; a key rule (``storage.keys``: ``path``, ``stem``, ``imagenet``) turns each
copy's own names (a relative path without extension, a tar ``__key__``, a parquet row's
``image.path``) into the keys a label set is stored by, so one label set serves every copy.
"""
from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path


from .errors import SourceError, UserError
from .image_source import (IMAGE_EXTENSIONS, MAX_CLASSES, MAX_CLS_BYTES, MAX_IMAGE_BYTES, MAX_TEXT_BYTES,  # noqa: F401
                           MAX_UNNAMED_CLASSES, TAR_IMAGE_EXTENSIONS, TAR_IMAGE_MEMBER, ImageSource, _utf8,
                           fingerprint)
from .keys import DEFAULT_KEY_RULE, KEY_RULES
from .paths import check_regular, read_regular

@dataclass(frozen=True)
class _TarMember:
    shard: int
    offset: int
    size: int
    name: str


class ImageFolderSource(ImageSource):
    """``root/<class>/<...>/<name>.<ext>``; classes are the sorted top-level folders."""

    kind = "imagefolder"

    def __init__(self, root: str | os.PathLike, key_rule: str = DEFAULT_KEY_RULE):
        self.root = str(root)
        rootp = Path(root)
        classes = sorted(_utf8(p.name, str(root)) for p in rootp.iterdir()
                         if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise SourceError(f"{root}: no class folders found; an ImageFolder needs one sub-folder per class")
        entries: list[tuple[str, str, str]] = []
        for c in classes:
            for dirpath, dirnames, filenames in os.walk(rootp / c):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for f in filenames:
                    stem, dot, ext = f.rpartition(".")
                    if dot and ext.lower() in IMAGE_EXTENSIONS and not f.startswith("."):
                        rel = os.path.relpath(os.path.join(dirpath, f), rootp).replace(os.sep, "/")
                        _utf8(rel, str(root))
                        entries.append((rel.rpartition(".")[0], c, rel))
        if not entries:
            raise SourceError(f"{root}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
        if key_rule == "path":  # the message stores made before key rules printed
            entries.sort()
            for a, b in zip(entries, entries[1:]):
                if a[0] == b[0]:
                    raise SourceError(f"{root}: two files share the key {a[0]!r} ({a[2]}, {b[2]}); keep one")
        self._files = self._keyed(entries, classes, key_rule)

    def read(self, i: int) -> bytes:
        """Regular files only, at most MAX_IMAGE_BYTES: a FIFO or /dev/zero named *.jpg is an error
        (stage one records the sample unreadable), never a hang or an endless read."""
        return read_regular(os.path.join(self.root, self._files[i]), MAX_IMAGE_BYTES, "an image")


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
                raise SourceError(f"{missing[0]}: shard not found ({len(missing)} of {len(paths)} missing)")
        if _is_local(fs):
            for p in paths:
                check_regular(p, "a tar shard")
    except UserError:
        raise
    except ImportError as e:  # fsspec names the driver to install (s3fs, gcsfs, ...)
        raise SourceError(f"{spec}: {e}") from None
    except (OSError, ValueError) as e:  # unreachable bucket, bad credentials, ...
        raise SourceError(f"{spec}: cannot list shards ({type(e).__name__}: {str(e)[:120]})") from None
    if not paths:
        raise SourceError(f"{spec}: no .tar shards found")
    return fs, paths


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _read_small(fs, path: str, cap: int = MAX_TEXT_BYTES, what: str = "a file") -> bytes:
    """A small side file (index.json, classes.txt): size checked before it is read."""
    if _is_local(fs):
        return read_regular(path, cap, what)
    size = fs.size(path)
    if size is not None and size > cap:
        raise SourceError(f"{path}: {size:,} bytes, above the {cap / (1 << 20):,.0f} MiB limit for {what}")
    return fs.cat_file(path, start=0, end=cap + 1)


def _parse_cls(data: bytes, key: str, where: str) -> int:
    """A .cls member: ASCII decimal, optional surrounding whitespace, nothing else."""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SourceError(f"{where}: sample {key!r} has a .cls that is not UTF-8 text ({data[:16]!r})") from None
    if re.fullmatch(r"[0-9]+", text, re.ASCII):
        return int(text)
    if re.fullmatch(r"-[0-9]+", text, re.ASCII):
        raise SourceError(f"{where}: sample {key!r} has a negative class index {text}; classes are 0, 1, ...")
    raise SourceError(f"{where}: sample {key!r} has a non-integer .cls {text[:40]!r}")


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

    def __init__(self, spec: str, key_rule: str = DEFAULT_KEY_RULE):
        self.root = spec
        self._fs, self._paths = _expand_shards(spec)
        members: dict[str, dict] = {}

        def twice(key: str, first: tuple[int, str], path: str, name: str) -> SourceError:
            # A key met twice drops a sample whichever one wins: refuse, naming both places.
            return SourceError(f"{spec}: sample key {key!r} appears twice: {self._paths[first[0]]} ({first[1]}) and "
                             f"{path} ({name}); keep one image and one .cls per key")

        for si, path in enumerate(self._paths):
            try:
                with self._fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        _utf8(m.name, path)
                        if not _safe_member_name(m.name):
                            raise SourceError(f"{path}: member {m.name!r} has an absolute or '..' path; refusing this shard")
                        key, ext = _split_key(m.name)
                        rec = members.setdefault(key, {})
                        if ext in TAR_IMAGE_EXTENSIONS or ext == TAR_IMAGE_MEMBER:
                            if "img" in rec:
                                raise twice(key, (rec["img"].shard, rec["img"].name), path, m.name)
                            rec["img"] = _TarMember(si, m.offset_data, m.size, m.name)
                        elif ext == "cls":
                            if "cls" in rec:
                                raise twice(key, rec["cls_at"], path, m.name)
                            if m.size > MAX_CLS_BYTES:
                                raise SourceError(f"{path}: sample {key!r} has a {m.size:,}-byte .cls member ({m.name}); "
                                                f"a class index is at most {MAX_CLS_BYTES} bytes of ASCII digits")
                            rec["cls"] = _parse_cls(tf.extractfile(m).read(), key, path)
                            rec["cls_at"] = (si, m.name)
            except tarfile.TarError as e:
                raise SourceError(f"{path}: not a readable tar file ({e}); re-create or remove this shard") from None
        entries = []
        for key, rec in members.items():
            if "img" not in rec:
                continue
            if "cls" not in rec:
                raise SourceError(f"{spec}: sample {key!r} has no .cls member; every sample needs a class index")
            entries.append((key, rec["cls"], rec["img"]))
        if not entries:
            raise SourceError(f"{spec}: no image samples found in {len(self._paths)} shard(s)")
        entries.sort(key=lambda e: e[0])
        names = self._class_list()
        bound = len(names) if names is not None else MAX_UNNAMED_CLASSES
        top = max(entries, key=lambda e: e[1])
        if top[1] >= bound:  # checked before any array or name list is sized by it
            where = self._paths[top[2].shard]
            if names is not None:
                raise SourceError(f"{where}: sample {top[0]!r} has class {top[1]} but the class list beside the shards "
                                f"has {len(names)} names; fix the .cls or the class list")
            raise SourceError(f"{where}: sample {top[0]!r} has class {top[1]}; without a class list classes must be "
                            f"below {MAX_UNNAMED_CLASSES:,}: put classes.txt (one name per line) beside the shards")
        copy_classes = names if names is not None else [str(i) for i in range(top[1] + 1)]
        self._members = self._keyed([(e[0], copy_classes[e[1]], e[2]) for e in entries], copy_classes, key_rule)
        self._pid = os.getpid()

    def _class_list(self) -> list[str] | None:
        """Class names beside the shards (index.json of an export, classes.txt, classes.json), or None."""
        folder = self._paths[0].rpartition("/")[0]
        fs = self._fs

        def text(name: str) -> tuple[str, str | None]:
            path = f"{folder}/{name}" if folder else name
            if not fs.isfile(path):
                return path, None
            try:
                return path, _read_small(fs, path, what=f"a {name}").decode("utf-8")
            except UnicodeDecodeError:
                raise SourceError(f"{path}: not UTF-8 text; write the class names as UTF-8") from None

        def load(path: str, data: str):
            try:
                return json.loads(data)
            except ValueError as e:
                raise SourceError(f"{path}: not valid JSON ({str(e)[:80]})") from None

        names = None
        path, export_index = text("index.json")  # written by 'relabel export --images'
        if export_index is not None:
            d = load(path, export_index)
            if isinstance(d, dict) and d.get("class_names"):
                names = d["class_names"]
        if names is None:
            path, txt = text("classes.txt")
            if txt is not None:
                names = [line.strip() for line in txt.splitlines() if line.strip()]
            else:
                path, js = text("classes.json")
                if js is None:
                    return None
                names = load(path, js)
        if not isinstance(names, list) or not all(isinstance(x, (str, int)) for x in names):
            raise SourceError(f"{path}: the class names must be a list of strings")
        if len(names) > MAX_CLASSES:
            raise SourceError(f"{path}: {len(names):,} class names, above the limit of {MAX_CLASSES:,}")
        return [_utf8(str(x), path) for x in names]

    def read(self, i: int) -> bytes:
        """One ranged read: a local seek, or one HTTP range request."""
        if os.getpid() != self._pid:  # a forked worker: async filesystems (s3fs) are not fork-safe
            import fsspec

            self._fs = fsspec.core.url_to_fs(self.root, skip_instance_cache=True)[0]
            self._pid = os.getpid()
        m = self._members[i]
        if m.size > MAX_IMAGE_BYTES:  # checked before the read: the member header says how much would come
            raise SourceError(f"{self._paths[m.shard]}: member {m.name} is {m.size:,} bytes, above the "
                            f"{MAX_IMAGE_BYTES >> 20} MiB limit for an image")
        return self._fs.cat_file(self._paths[m.shard], start=m.offset, end=m.offset + m.size)


def _first_image_folder(root: str) -> str | None:
    """The first top-level folder holding an image file (what an ImageFolder would read), or None."""
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(entry.path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if any(f.rpartition(".")[2].lower() in IMAGE_EXTENSIONS and not f.startswith(".") for f in filenames):
                return entry.name
    return None


def open_source(spec: str | os.PathLike, key_rule: str = DEFAULT_KEY_RULE) -> ImageSource:
    """An ImageFolder tree, webdataset shards (a folder of .tar, a glob or a brace pattern; local or
    any fsspec URL such as s3://bucket/shards), or Hugging Face parquet (a file, glob or folder of
    them, or hf://datasets/ORG/NAME), its samples keyed by ``key_rule`` (storage.keys)."""
    from .parquet import ParquetSource, is_parquet_spec

    spec = str(spec)
    if key_rule not in KEY_RULES:
        raise SourceError(f"unknown key rule {key_rule!r}; use one of {', '.join(KEY_RULES)}")
    if is_parquet_spec(spec):
        return ParquetSource(spec, key_rule)
    if "://" in spec:
        return TarShardSource(spec, key_rule)
    if os.path.isdir(spec):
        tars = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")))
        if tars:
            cls = _first_image_folder(spec)
            if cls is not None:  # never guess which half the user meant
                raise SourceError(f"{spec}: holds both .tar shards ({len(tars)}, e.g. {os.path.basename(tars[0])}) and "
                                f"class folders with images (e.g. {cls}/); pass '{os.path.join(spec, '*.tar')}' to "
                                f"read the shards, or move the .tar files out to read the class folders")
            return TarShardSource(spec, key_rule)
        return ImageFolderSource(spec, key_rule)
    if spec.endswith(".tar") or any(c in spec for c in "*?{"):
        return TarShardSource(spec, key_rule)
    if os.path.exists(spec):
        raise SourceError(f"{spec}: not an image folder, tar shards or parquet; pass a class-per-folder tree, .tar "
                          f"shards or parquet files")
    raise SourceError(f"{spec}: no such file or directory")
