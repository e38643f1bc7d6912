"""The label store: a zarr v3 group holding top-k soft labels for N samples x V views.

Layout and schema are written down in storage/FORMAT.md. Sample axis = the store's own sample
order (``keys``); labels are matched to images by key, never by position.

Writes go one whole shard (a block of views x a block of samples) at a time, so processes that own
disjoint shards can write at once; each shard's completion is its own tiny chunk in ``done``.
"""
from __future__ import annotations

import asyncio
import math
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from .encoding import ValueEncoding, index_dtype
from .errors import UserError

SCHEMA_VERSION = 1
FORMAT_NAME = "relabel-labels"

STATUS_PENDING, STATUS_OK, STATUS_UNREADABLE = 0, 1, 2
LABEL_ARRAYS = ("topk_index", "topk_logp")


@dataclass
class StoreHeader:
    """Everything needed to interpret (and regenerate) the labels; stored as attrs['relabel']."""

    num_samples: int
    views: int
    topk: int
    num_classes: int
    class_names: list[str]
    fingerprint: str
    teacher: dict
    recipe: dict
    seed: int
    img_size: int
    encoding: ValueEncoding = field(default_factory=ValueEncoding)
    samples_per_shard: int = 16384
    views_per_shard: int = 10
    schema_version: int = SCHEMA_VERSION
    writer: str = ""

    def __post_init__(self):
        if isinstance(self.encoding, dict):
            self.encoding = ValueEncoding.from_dict(self.encoding)
        if not 1 <= self.topk <= self.num_classes:
            raise UserError(f"top-k {self.topk} must be between 1 and the number of classes ({self.num_classes})")
        if self.views < 1:
            raise UserError(f"views must be >= 1 (got {self.views})")
        if self.num_samples < 1:
            raise UserError("a label store needs at least one sample")

    @property
    def index_dtype(self) -> np.dtype:
        return index_dtype(self.num_classes)

    @property
    def n_sample_blocks(self) -> int:
        return math.ceil(self.num_samples / self.samples_per_shard)

    @property
    def n_view_blocks(self) -> int:
        return math.ceil(self.views / self.views_per_shard)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoding"] = self.encoding.to_dict()
        d["format"] = FORMAT_NAME
        d["index_dtype"] = self.index_dtype.name
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StoreHeader":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Shard:
    """One write unit: views [v0, v1) x samples [s0, s1); ``done`` views of it already written."""

    vb: int
    sb: int
    v0: int
    v1: int
    s0: int
    s1: int
    done: int

    @property
    def name(self) -> str:
        return f"shard {self.vb}/{self.sb} (views {self.v0}-{self.v1 - 1}, samples {self.s0}-{self.s1 - 1})"


def _is_remote(path: str) -> bool:
    return "://" in path


class LabelStore:
    """Open with ``LabelStore.open``; make with ``LabelStore.create``."""

    def __init__(self, path: str, group: zarr.Group, header: StoreHeader):
        self.path = path
        self.group = group
        self.header = header
        # View blocks found complete and present; a read-only store cannot lose them while open.
        self._ready_blocks: set[int] = set()

    # ---------------------------------------------------------------- create / open
    @classmethod
    def create(cls, path: str | os.PathLike, header: StoreHeader, keys: list[str]) -> "LabelStore":
        path = str(path)
        if not _is_remote(path) and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise UserError(f"{path}: already exists and is not an empty folder; choose another --out or remove it")
        if len(keys) != header.num_samples:
            raise ValueError("one key per sample")
        if any("\n" in k for k in keys):
            raise UserError("sample keys must not contain newlines")
        if _is_remote(path):
            return cls._build(path, header, keys)
        # Built beside its place and renamed in, so a crash never leaves a half-made store at ``path``.
        tmp = os.path.abspath(path) + ".creating"
        shutil.rmtree(tmp, ignore_errors=True)
        cls._build(tmp, header, keys)
        if os.path.isdir(path):
            os.rmdir(path)
        os.rename(tmp, path)
        store = cls.open(path, mode="r+")
        store.__dict__["keys"] = list(keys)
        return store

    @classmethod
    def _build(cls, path: str, header: StoreHeader, keys: list[str]) -> "LabelStore":
        g = zarr.open_group(path, mode="w-", zarr_format=3)
        N, V, k = header.num_samples, header.views, header.topk
        Bs, Vb = header.samples_per_shard, header.views_per_shard
        comp = [ZstdCodec(level=9), Crc32cCodec()]
        for name, width, dtype in (("topk_index", k, header.index_dtype),
                                   ("topk_logp", k + 1, header.encoding.dtype)):
            g.create_array(name, shape=(V, N, width), dtype=dtype, chunks=(1, Bs, width),
                           shards=(Vb, Bs, width), compressors=comp, fill_value=0,
                           dimension_names=("view", "sample", "rank"))
        g.create_array("status", shape=(N,), dtype=np.uint8, chunks=(Bs,), fill_value=0,
                       dimension_names=("sample",), compressors=comp)
        g.create_array("done", shape=(header.n_view_blocks, header.n_sample_blocks), dtype=np.uint16,
                       chunks=(1, 1), fill_value=0, compressors=None, dimension_names=("view_block", "sample_block"))
        blob = np.frombuffer("\n".join(keys).encode(), dtype=np.uint8)
        ka = g.create_array("keys", shape=blob.shape, dtype=np.uint8, chunks=(max(1, min(len(blob), 1 << 24)),),
                            compressors=[ZstdCodec(level=9), Crc32cCodec()], fill_value=0)
        ka[:] = blob
        g.attrs["relabel"] = header.to_dict()
        store = cls(path, g, header)
        store.__dict__["keys"] = list(keys)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "LabelStore":
        path = str(path)
        if not _is_remote(path) and not os.path.isdir(path):
            raise UserError(f"{path}: no label store here (not a folder); pass the --out of 'relabel generate'")
        try:
            g = zarr.open_group(path, mode=mode, zarr_format=3)
            attrs = dict(g.attrs)
        except ImportError as e:  # a URL whose fsspec driver is missing (s3fs, gcsfs, ...)
            raise UserError(f"{path}: {e}") from None
        except Exception as e:  # zarr raises several types for "not a group"
            raise UserError(f"{path}: not a relabel label store ({type(e).__name__}); pass the --out of 'relabel generate'") from None
        d = attrs.get("relabel")
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise UserError(f"{path}: a zarr group but not a relabel label store (no 'relabel' header)")
        if int(d.get("schema_version", 0)) > SCHEMA_VERSION:
            raise UserError(f"{path}: store schema version {d['schema_version']} is newer than this relabel "
                            f"understands ({SCHEMA_VERSION}); upgrade relabel")
        missing = [a for a in (*LABEL_ARRAYS, "status", "done", "keys") if a not in g]
        if missing:
            raise UserError(f"{path}: label store is missing arrays {missing}; it is damaged, regenerate it")
        return cls(path, g, StoreHeader.from_dict(d))

    # ---------------------------------------------------------------- keys
    @cached_property
    def keys(self) -> list[str]:
        blob = self.group["keys"][:]
        return bytes(blob).decode().split("\n")

    @cached_property
    def key_index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    # ---------------------------------------------------------------- shards
    def shard(self, vb: int, sb: int, done: int = 0) -> Shard:
        h = self.header
        v0, s0 = vb * h.views_per_shard, sb * h.samples_per_shard
        return Shard(vb, sb, v0, min(v0 + h.views_per_shard, h.views), s0, min(s0 + h.samples_per_shard, h.num_samples), done)

    def done_views(self) -> np.ndarray:
        return np.asarray(self.group["done"][:], dtype=np.int64)

    def shards(self) -> list[Shard]:
        done = self.done_views()
        return [self.shard(vb, sb, int(done[vb, sb])) for vb in range(done.shape[0]) for sb in range(done.shape[1])]

    def pending_shards(self) -> list[Shard]:
        return [s for s in self.shards() if s.done < s.v1 - s.v0]

    @property
    def complete(self) -> bool:
        return not self.pending_shards()

    def write_shard(self, shard: Shard, v_from: int, index: np.ndarray, logp: np.ndarray, status: np.ndarray) -> None:
        """Write views [shard.v0 + v_from, shard.v1) of one shard, then its status, then mark it done.

        ``logp`` is float log-probabilities (k+1 bins); it is encoded here. Marking last means a
        crash leaves the shard pending, never half-written and marked done; each file is written
        under a temporary name and renamed (zarr's LocalStore), so no file is ever torn.
        """
        h = self.header
        a, b = shard.v0 + v_from, shard.v1
        exp_shape = (b - a, shard.s1 - shard.s0)
        if index.shape != (*exp_shape, h.topk) or logp.shape != (*exp_shape, h.topk + 1):
            raise ValueError(f"shard arrays have shapes {index.shape}, {logp.shape}; expected {exp_shape} x k")
        if v_from == 0:  # the whole shard: drop what a crash or damage left there instead of merging into it
            for name in LABEL_ARRAYS:
                key = self._shard_key(name, shard.vb, shard.sb)
                if self._exists(key):
                    sync(self.group.store.delete(f"{self.group.path}/{key}".lstrip("/")))
        # write_empty_chunks: a completed shard always has its file, so a missing one is damage
        for name, values in (("topk_index", index.astype(h.index_dtype, copy=False)),
                             ("topk_logp", h.encoding.encode(logp))):
            self.group[name].with_config({"write_empty_chunks": True})[a:b, shard.s0:shard.s1] = values
        self.group["status"][shard.s0:shard.s1] = status.astype(np.uint8, copy=False)
        self.group["done"][shard.vb, shard.sb] = b - shard.v0

    def extend_views(self, views: int) -> None:
        """Grow the view axis; existing views stay as they are and new shards start pending."""
        h = self.header
        if views <= h.views:
            return
        h.views = views
        for name in LABEL_ARRAYS:
            arr = self.group[name]
            arr.resize((views, *arr.shape[1:]))
        self.group["done"].resize((h.n_view_blocks, h.n_sample_blocks))
        self.group.attrs["relabel"] = h.to_dict()

    # ---------------------------------------------------------------- reads
    def status(self) -> np.ndarray:
        return self._read("status", slice(None), lambda: "the status array")

    def _shard_key(self, array: str, vb: int, sb: int) -> str:
        return f"{array}/c/{vb}/{sb}/0"

    def _exists(self, key: str) -> bool:
        return bool(sync(self.group.store.exists(f"{self.group.path}/{key}".lstrip("/"))))

    def _empty(self, key: str) -> bool:
        """No file, or an empty one: zarr reads both as fill values (zeros), never as an error."""
        full = f"{self.group.path}/{key}".lstrip("/")
        try:
            return sync(self.group.store.getsize(full)) == 0
        except (FileNotFoundError, KeyError):
            return True

    def _check_present(self, shards: list[Shard]) -> None:
        lost = [self._shard_key(a, sh.vb, sh.sb) for sh in shards for a in LABEL_ARRAYS
                if self._empty(self._shard_key(a, sh.vb, sh.sb))]
        if lost:
            raise UserError(f"{self.path}: shard file {lost[0]} is missing or empty ({len(lost)} damaged in all); "
                            f"run 'relabel verify' and 'relabel generate --repair'")

    def _read(self, array: str, sel, shard_names) -> np.ndarray:
        try:
            return np.asarray(self.group[array][sel])
        except Exception as e:
            raise UserError(f"{self.path}: {array} is damaged in {shard_names()} ({type(e).__name__}: {str(e)[:80]}); "
                            f"run 'relabel verify' and 'relabel generate --repair'") from None

    def read_view(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        """One view of every sample: (indices int64 (N, k), log-probs float32 (N, k+1))."""
        h = self.header
        if not 0 <= v < h.views:
            raise IndexError(f"view {v} out of range (store has {h.views})")
        vb = v // h.views_per_shard
        shards = None
        if vb not in self._ready_blocks:
            done = self.done_views()[vb]
            gone = [sb for sb in range(h.n_sample_blocks) if done[sb] <= v - vb * h.views_per_shard]
            if gone:
                raise UserError(f"{self.path}: view {v} is not generated for {len(gone)} sample block(s) "
                                f"(first: {self.shard(vb, gone[0]).name}); finish 'relabel generate' first")
            shards = [self.shard(vb, sb, int(done[sb])) for sb in range(h.n_sample_blocks)]
            self._check_present(shards)
            if self.group.read_only and all(sh.done == sh.v1 - sh.v0 for sh in shards):
                self._ready_blocks.add(vb)
        names = lambda: ", ".join(b.split(":")[0] for b in self.check_shards(  # noqa: E731
            [s for s in self.shards() if s.vb == vb])) or f"view {v}"
        idx, lp = self._read_labels(v, names)
        return idx.astype(np.int64), h.encoding.decode(lp)

    def _read_labels(self, sel, shard_names) -> tuple[np.ndarray, np.ndarray]:
        """Both label arrays in one event-loop pass, so their chunks are fetched and decoded together."""
        arrays = [self.group[a]._async_array for a in LABEL_ARRAYS]

        async def both():
            return await asyncio.gather(*(a.getitem(sel) for a in arrays))

        try:
            idx, lp = sync(both())
        except Exception as e:
            raise UserError(f"{self.path}: label data is damaged in {shard_names()} ({type(e).__name__}: {str(e)[:80]}); "
                            f"run 'relabel verify' and 'relabel generate --repair'") from None
        return np.asarray(idx), np.asarray(lp)

    def read_shard(self, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
        sel = (slice(shard.v0, shard.v1), slice(shard.s0, shard.s1))
        if self.group["done"][shard.vb, shard.sb]:  # written: its files must be there
            self._check_present([shard])
        idx, lp = self._read_labels(sel, lambda: shard.name)
        return idx.astype(np.int64), self.header.encoding.decode(lp)

    def gather(self, positions: np.ndarray, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels of arbitrary (sample, view) pairs, reading each touched shard once."""
        h = self.header
        positions, views = np.asarray(positions, np.int64), np.asarray(views, np.int64)
        idx = np.empty((len(positions), h.topk), np.int64)
        lp = np.empty((len(positions), h.topk + 1), np.float32)
        vb, sb = views // h.views_per_shard, positions // h.samples_per_shard
        cache = getattr(self, "_shard_cache", None)
        if cache is None:
            cache = self._shard_cache = {}
        for b in np.unique(vb * h.n_sample_blocks + sb):
            sel = np.nonzero(vb * h.n_sample_blocks + sb == b)[0]
            key = divmod(int(b), h.n_sample_blocks)
            if key not in cache:
                if len(cache) >= 64:
                    cache.pop(next(iter(cache)))
                cache[key] = self.read_shard(self.shard(*key))
            s_idx, s_lp = cache[key]
            sh = self.shard(*key)
            idx[sel] = s_idx[views[sel] - sh.v0, positions[sel] - sh.s0]
            lp[sel] = s_lp[views[sel] - sh.v0, positions[sel] - sh.s0]
        return idx, lp

    def check_shards(self, shards: list[Shard] | None = None) -> list[str]:
        """Read every completed shard in full; return a line for each one that is damaged."""
        bad = []
        for sh in shards if shards is not None else self.shards():
            if sh.done == 0:
                continue
            for name in LABEL_ARRAYS:
                key = self._shard_key(name, sh.vb, sh.sb)
                if self._empty(key):
                    bad.append(f"{key}: missing or empty ({sh.name} is marked done)")
                    continue
                try:
                    np.asarray(self.group[name][sh.v0:sh.v1, sh.s0:sh.s1])
                except Exception as e:
                    bad.append(f"{key}: unreadable ({type(e).__name__}: {str(e)[:80]}) in {sh.name}")
        return bad

    def remove_partials(self) -> int:
        """Delete the temporary files (``<name>.<uuid>.partial``) a killed writer left; returns how many."""
        if _is_remote(self.path):
            return 0
        n = 0
        for dirpath, _, files in os.walk(self.path):
            for f in files:
                if f.endswith(".partial"):
                    os.remove(os.path.join(dirpath, f))
                    n += 1
        return n

    def bytes_on_disk(self) -> int:
        if _is_remote(self.path):
            import fsspec

            fs, root = fsspec.core.url_to_fs(self.path)
            return int(fs.du(root))
        total = 0
        for dirpath, _, files in os.walk(self.path):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        return total

    def label_bytes(self) -> int:
        """Bytes of the label arrays alone (what a view costs)."""
        if _is_remote(self.path):
            return self.bytes_on_disk()
        total = 0
        for name in LABEL_ARRAYS:
            for dirpath, _, files in os.walk(os.path.join(self.path, name)):
                total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        return total

    def summary(self) -> dict:
        h = self.header
        st = self.status()
        nbytes = self.bytes_on_disk()
        return {
            "path": self.path,
            "num_samples": h.num_samples,
            "views": h.views,
            "topk": h.topk,
            "num_classes": h.num_classes,
            "teacher": h.teacher,
            "recipe": h.recipe.get("name"),
            "seed": h.seed,
            "img_size": h.img_size,
            "encoding": h.encoding.to_dict(),
            "fingerprint": h.fingerprint,
            "complete": self.complete,
            "corrupt_samples": int((st == STATUS_UNREADABLE).sum()),
            "bytes_on_disk": nbytes,
            "bytes_per_view": nbytes / (h.num_samples * h.views),
            "label_bytes_per_view": self.label_bytes() / (h.num_samples * h.views),
            "schema_version": h.schema_version,
            "writer": h.writer,
        }
