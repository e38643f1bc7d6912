"""Hugging Face datasets as an image source: parquet in the Hub's layout, local or ``hf://``.

A Hub image dataset (``ILSVRC/imagenet-1k`` and most others) is parquet files with an ``image``
column ``{bytes, path}`` and an integer ``label`` whose ClassLabel names are the classes. Parquet is
read a row group at a time, so stage two's random access (any sample, any worker) would re-read a
row group per image; Hugging Face ``datasets`` converts the files once into memory-mapped Arrow
files in its cache (what timm's ``hfds/`` reader uses too), and reads here index that table row by
row: one lookup and one copy of the image's bytes.

DATA may be a parquet file, a glob of them, a folder holding them (in the Hub's layout,
``data/<split>-*.parquet``: the ``train`` split), or ``hf://datasets/ORG/NAME`` (the ``train``
split; name another with a glob: ``hf://datasets/ORG/NAME/data/validation-*.parquet``).
"""
from __future__ import annotations

import bisect
import glob
import os

from .errors import SourceError, UserError
from .keys import DEFAULT_KEY_RULE
from .image_source import MAX_CLASSES, MAX_IMAGE_BYTES, ImageSource, _utf8

PARQUET_HELP = ("a parquet file, a glob or folder of them (the Hub's layout: data/train-*.parquet), or "
                "hf://datasets/ORG/NAME")
DEFAULT_SPLIT = "train"


def is_parquet_spec(spec: str) -> bool:
    """DATA that names Hugging Face parquet rather than images or tar shards."""
    if spec.startswith(("hf://", "hfds/")):
        return not spec.endswith(".tar") and "*.tar" not in spec
    if spec.endswith(".parquet"):
        return True
    if os.path.isdir(spec):
        return bool(_local_files(spec, quiet=True))
    return False


def _local_files(spec: str, quiet: bool = False) -> list[str]:
    if os.path.isdir(spec):
        here = sorted(glob.glob(os.path.join(glob.escape(spec), "*.parquet")))
        if here:
            return here
        data = os.path.join(glob.escape(spec), "data")
        split = sorted(glob.glob(os.path.join(data, f"{DEFAULT_SPLIT}-*.parquet")) +
                       glob.glob(os.path.join(data, f"{DEFAULT_SPLIT}/*.parquet")))
        if split or quiet:
            return split
        others = sorted(glob.glob(os.path.join(data, "*.parquet")))
        if others:
            raise SourceError(f"{spec}: no '{DEFAULT_SPLIT}' split under data/ (found e.g. {os.path.basename(others[0])}); "
                              f"name the files: '{os.path.join(spec, 'data', '<split>-*.parquet')}'")
        return []
    return sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else ([spec] if os.path.isfile(spec) else [])


def _hub_files(spec: str) -> list[str]:
    """hf://datasets/ORG/NAME (the train split) or a path/glob inside it, as hf:// file URLs."""
    if spec.startswith("hfds/"):  # timm's name for the same thing
        spec = "hf://datasets/" + spec[len("hfds/"):]
    try:
        from huggingface_hub import HfFileSystem
    except ImportError:
        raise SourceError(f"{spec}: reading from the Hub needs huggingface_hub: pip install 'relabel[hub]'") from None
    fs = HfFileSystem()
    root = spec[len("hf://"):].rstrip("/")
    try:
        if any(c in root for c in "*?["):
            found = fs.glob(root)
        elif root.endswith(".parquet"):
            found = [root]
        else:
            found = fs.glob(f"{root}/data/{DEFAULT_SPLIT}-*.parquet") or fs.glob(f"{root}/**/{DEFAULT_SPLIT}*.parquet")
    except Exception as e:  # offline, no such repo, no access
        raise SourceError(f"{spec}: cannot list the dataset's files ({type(e).__name__}: {str(e)[:120]})") from None
    return ["hf://" + f for f in sorted(found)]


def _cache_dir(files: list[str], datasets) -> str | None:
    """Where ``datasets`` keeps the Arrow copy of local files: a folder named by their contents
    (size, mtime and a sha256 of each file's first and last MiB, where parquet keeps its footer), not
    only by path and mtime as ``datasets`` keys its cache: a file rewritten in place (its mtime kept)
    is converted again, never read from an old copy. Remote (hf://) files: ``datasets``' own key (the
    Hub's content hash)."""
    import hashlib

    if any("://" in f for f in files):
        return os.environ.get("HF_DATASETS_CACHE")
    h = hashlib.sha256(b"relabel-parquet-cache-1\n")
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(f, "rb") as fh:
            h.update(hashlib.sha256(fh.read(1 << 20)).digest())
            fh.seek(max(0, st.st_size - (1 << 20)))
            h.update(hashlib.sha256(fh.read(1 << 20)).digest())
    base = os.environ.get("HF_DATASETS_CACHE") or str(datasets.config.HF_DATASETS_CACHE)
    return os.path.join(base, "relabel-parquet", h.hexdigest()[:20])


def _features_error(spec: str, what: str) -> SourceError:
    return SourceError(f"{spec}: {what}; a parquet image dataset needs an 'image' column {{bytes, path}} and an "
                       f"integer 'label' column (the Hub's layout)")


class ParquetSource(ImageSource):
    """Rows of Hub-layout parquet: key from ``image.path`` (without extension) under the key rule,
    class from ``label`` (named by its ClassLabel), bytes from ``image.bytes``."""

    kind = "parquet"

    def __init__(self, spec: str, key_rule: str = DEFAULT_KEY_RULE):
        self.root = spec
        files = _hub_files(spec) if spec.startswith(("hf://", "hfds/")) else _local_files(spec)
        if not files:
            raise SourceError(f"{spec}: no parquet files found; DATA may be {PARQUET_HELP}")
        self._ds = self._load(spec, files)
        names = self._class_names(spec)
        table = self._ds.data.table
        try:
            paths = table.column("image").combine_chunks().field("path").to_pylist()
            labels = table.column("label").to_pylist()
        except Exception as e:
            raise _features_error(spec, f"unreadable columns ({type(e).__name__}: {str(e)[:80]})") from None
        bound = len(names) if names is not None else MAX_CLASSES
        entries = []
        for row, (path, label) in enumerate(zip(paths, labels)):
            if not isinstance(path, str) or not path:
                raise SourceError(f"{spec}: row {row} has no image.path; every row needs the image's file name "
                                  f"(its key)")
            if not isinstance(label, int) or not 0 <= label < bound:
                raise SourceError(f"{spec}: row {row} ({path}) has label {label!r}, outside the "
                                  f"{'ClassLabel names' if names is not None else 'class indices'} (0.."
                                  f"{bound - 1}); fix the label column")
            name = _utf8(path, spec).replace("\\", "/")
            stem, dot, ext = name.rpartition(".")
            entries.append((stem if dot and "/" not in ext else name, label, row))
        if not entries:
            raise SourceError(f"{spec}: no rows")
        top = max(e[1] for e in entries)
        copy_classes = names if names is not None else [str(i) for i in range(top + 1)]
        self._rows = self._keyed([(n, copy_classes[c], r) for n, c, r in entries], copy_classes, key_rule)
        self._pid, self._bytes = None, None

    @staticmethod
    def _load(spec: str, files: list[str]):
        try:
            import datasets
        except ImportError:
            raise SourceError(f"{spec}: reading parquet needs Hugging Face datasets: pip install datasets") from None
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        try:
            ds = datasets.Dataset.from_parquet(files, cache_dir=_cache_dir(files, datasets))
        except UserError:
            raise
        except Exception as e:  # a truncated or foreign file: pyarrow, datasets and fsspec raise many types
            raise SourceError(f"{spec}: not readable as parquet ({type(e).__name__}: {str(e)[:160]}); re-download "
                              f"or remove the damaged file") from None
        cols = set(ds.column_names)
        for col in ("image", "label"):
            if col not in cols:
                raise _features_error(spec, f"no {col!r} column (columns: {', '.join(sorted(cols))[:120]})")
        import pyarrow as pa

        typ = ds.data.table.schema.field("image").type
        if not (pa.types.is_struct(typ) and {"bytes", "path"} <= {typ.field(i).name for i in range(typ.num_fields)}):
            raise _features_error(spec, f"the 'image' column is {typ}, not a struct of bytes and path")
        if not pa.types.is_integer(ds.data.table.schema.field("label").type):
            raise _features_error(spec, f"the 'label' column is {ds.data.table.schema.field('label').type}, not "
                                        f"integers")
        return ds

    def _class_names(self, spec: str) -> list[str] | None:
        feature = self._ds.features.get("label")
        names = getattr(feature, "names", None)
        if not names:
            return None
        if len(names) > MAX_CLASSES:
            raise SourceError(f"{spec}: {len(names):,} class names, above the limit of {MAX_CLASSES:,}")
        return [_utf8(str(n), spec) for n in names]

    def _chunks(self):
        """Per process: the bytes column's chunks and their first rows (memory-mapped: no copy)."""
        if self._pid != os.getpid() or self._bytes is None:
            col = self._ds.data.table.column("image")
            chunks = [c.field("bytes") for c in col.chunks]
            starts, n = [], 0
            for c in chunks:
                starts.append(n)
                n += len(c)
            self._bytes, self._starts, self._pid = chunks, starts, os.getpid()
        return self._bytes, self._starts

    def read(self, i: int) -> bytes:
        chunks, starts = self._chunks()
        row = self._rows[i]
        c = bisect.bisect_right(starts, row) - 1
        value = chunks[c][row - starts[c]]
        if not value.is_valid:
            return b""  # a row without bytes: not an image (stage one records it unreadable)
        data = value.as_buffer()  # a view of the memory-mapped file: its size is known before any copy
        if data.size > MAX_IMAGE_BYTES:
            raise SourceError(f"{self.root}: row {row} holds {data.size:,} bytes, above the "
                              f"{MAX_IMAGE_BYTES >> 20} MiB limit for an image")
        return data.to_pybytes()

    def __getstate__(self):  # a worker re-derives its chunk views; the dataset pickles by its cache files
        d = dict(self.__dict__)
        d["_bytes"], d["_pid"] = None, None
        return d
