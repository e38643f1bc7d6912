"""The label store: a zarr v3 group holding top-k soft labels for N samples x V views.

Layout and schema are written down in storage/FORMAT.md. Sample axis = the store's own sample
order (``keys``); labels are matched to images by key, never by position.

Writes go one whole shard (a block of views x a block of samples) at a time, so processes that own
disjoint shards can write at once; each shard's completion is its own tiny chunk in ``done``.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .encoding import ValueEncoding, index_dtype
from .errors import StoreError, UserError, setting
from .order import first_out_of_order

# 2: per-view-block status, crc32c on `done`, class_map, resolved teacher precision, replay check.
# 3: `seals`, each written shard bound to its store's identity and its place.
SCHEMA_VERSION = 3
FORMAT_NAME = "relabel-labels"

STATUS_PENDING, STATUS_OK, STATUS_UNREADABLE = 0, 1, 2
LABEL_ARRAYS = ("topk_index", "topk_logp")
CLAIMS_DIR = ".claims"  # <vb>.<sb>: "<host> <pid>" of the process computing that shard (local stores)
CLAIM_LEASE = 60.0  # seconds: a claim whose file was not touched for this long is stale, whoever holds it
SEAL_ARRAY = "seals"
# Header fields that do not change what a label is: the view count grows, the writer and the decode
# environment are notes. Everything else is the store's identity, which every shard's seal names.
_NOT_IDENTITY = ("views", "writer", "replay_check", "renderer")
REPAIR_HINT = f"rerun generate {setting('repair', True)} with the same data and settings to rebuild it"


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
    # Dataset class i -> teacher class class_map[i]; None when the teacher's classes are the dataset's.
    # num_classes is always the teacher's: labels, ground truth and evaluation live in its index space.
    class_map: list[int] | None = None
    # Decode environment and hashes of canonical rendered views (relabel.replay_check); plain data.
    replay_check: dict = field(default_factory=dict)
    # The renderer that made the store ("pillow" or "torch"; their bytes are equal). A note.
    renderer: str = "pillow"

    def __post_init__(self):
        if isinstance(self.encoding, dict):
            self.encoding = ValueEncoding.from_dict(self.encoding)
        if not 1 <= self.topk <= self.num_classes:
            raise StoreError(f"top-k {self.topk} must be between 1 and the number of classes ({self.num_classes})")
        if self.views < 1:
            raise StoreError(f"views must be >= 1 (got {self.views})")
        if self.num_samples < 1:
            raise StoreError("a label store needs at least one sample")
        if self.samples_per_shard < 1 or self.views_per_shard < 1:
            raise StoreError(f"samples_per_shard and views_per_shard must be >= 1 (got {self.samples_per_shard}, "
                            f"{self.views_per_shard})")
        if self.class_map is None:
            if len(self.class_names) != self.num_classes:
                raise StoreError(f"the teacher has {self.num_classes} classes but the dataset has {len(self.class_names)}: "
                                f"their indices mean different things; a store needs the class map (generate's "
                                f"{setting('class_map')}) that says which teacher class each dataset class is")
        else:
            self.class_map = [int(c) for c in self.class_map]
            if len(self.class_map) != len(self.class_names):
                raise StoreError(f"class map has {len(self.class_map)} entries for {len(self.class_names)} dataset classes")
            bad = [c for c in self.class_map if not 0 <= c < self.num_classes]
            if bad:
                raise StoreError(f"class map points at teacher class {bad[0]}, outside 0..{self.num_classes - 1}")
            if len(set(self.class_map)) != len(self.class_map):
                raise StoreError("class map sends two dataset classes to the same teacher class")

    def teacher_class(self, dataset_class: np.ndarray) -> np.ndarray:
        """Dataset class indices -> the teacher's index space (where labels and the student live)."""
        dataset_class = np.asarray(dataset_class, np.int64)
        if self.class_map is None:
            return dataset_class
        lut = np.asarray(self.class_map, np.int64)
        return np.where(dataset_class >= 0, lut[np.clip(dataset_class, 0, None)], dataset_class)

    @property
    def index_dtype(self) -> np.dtype:
        return index_dtype(self.num_classes)

    @property
    def identity(self) -> str:
        """sha256 over what decides the labels (teacher, recipe, data, layout; not the view count or
        the device the teacher ran on): two stores share it exactly when their shards are interchangeable."""
        d = self.to_dict()
        for k in _NOT_IDENTITY:
            d.pop(k, None)

        def strip(t: dict) -> dict:
            t = {k: v for k, v in t.items() if k != "device_type"}
            if isinstance(t.get("members"), list):
                t["members"] = [strip(m) if isinstance(m, dict) else m for m in t["members"]]
            return t

        d["teacher"] = strip(dict(d["teacher"]))
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

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


@dataclass(frozen=True)
class ShardDamage:
    """A damaged file of a written shard: recompute the shard (``generate --repair``)."""

    shard: Shard
    file: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}: {self.problem}"


def _is_remote(path: str) -> bool:
    return "://" in path


class StoreExistsError(StoreError):
    """Another process created the store first; open it and check its settings instead."""


def _remove_dead_creations(base: str) -> None:
    """Folders ``<store>.creating-<pid>-<tag>`` left by creators that died (same host)."""
    parent, name = os.path.split(base)
    try:
        entries = os.listdir(parent or ".")
    except OSError:
        return
    for e in entries:
        if not e.startswith(name + ".creating"):
            continue
        pid = e[len(name) + len(".creating"):].lstrip("-").split("-")[0]
        alive = pid.isdigit() and _pid_alive(int(pid))
        if not alive:
            shutil.rmtree(os.path.join(parent, e), ignore_errors=True)


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on the store folder (flock on its directory); remote stores: none."""
    if _is_remote(path):
        yield
        return
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_label_rows(index: np.ndarray, logp: np.ndarray, num_classes: int, tolerance: float) -> np.ndarray:
    """Rows (..., k) / (..., k+1) that cannot be a real top-k: a class twice, a class out of range,
    or bins whose probabilities do not sum to one (all-zero rows of a never-written view do not).
    Returns a boolean mask of the bad rows. Runs on a whole view's labels the first time a process
    reads it, so it stays cheap: column-pair compares in the stored index dtype, a float32 sum."""
    k = index.shape[-1]
    flat = index.reshape(-1, k)
    bad = np.zeros(flat.shape[0], bool)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
        bad |= ((flat < 0) | (flat >= num_classes)).any(-1)
    if k > 1:
        cols = np.ascontiguousarray(flat.T)
        for i in range(k - 1):
            for j in range(i + 1, k):
                bad |= cols[i] == cols[j]
    total = np.exp(logp.reshape(-1, k + 1).astype(np.float32, copy=False)).sum(-1)
    lo, hi = np.float32(np.exp(-tolerance)), np.float32(np.exp(tolerance))
    bad |= ~((total >= lo) & (total <= hi))  # NaN fails too
    return bad.reshape(index.shape[:-1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LabelStore:
    """Open with ``LabelStore.open``; make with ``LabelStore.create``."""

    def __init__(self, path: str, group: zarr.Group, header: StoreHeader):
        self.path = path
        self.group = group
        self.header = header
        # View blocks found complete and present; a read-only store cannot lose them while open.
        self._ready_blocks: set[int] = set()
        self._checked_views: set[int] = set()  # views whose rows were checked (read-only stores)
        self._sealed: set[tuple[int, int, int]] = set()  # (vb, sb, done) whose seal this process checked
        self._held: set[str] = set()  # claim files this process holds (kept alive by keep_claims_alive)

    # ---------------------------------------------------------------- create / open
    @classmethod
    def create(cls, path: str | os.PathLike, header: StoreHeader, keys: list[str]) -> "LabelStore":
        path = str(path)
        if not _is_remote(path) and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise StoreError(f"{path}: already exists and is not an empty folder; choose another {setting('out')} or "
                             f"remove it")
        if len(keys) != header.num_samples:
            raise ValueError("one key per sample")
        if any("\n" in k for k in keys):
            raise StoreError("sample keys must not contain newlines")
        if first_out_of_order(list(keys), header.seed) is not None:  # what `keys` checks on every open
            raise ValueError("keys must be in the store's order: pass relabel.storage.order.store_order(keys, seed)")
        if _is_remote(path):
            return cls._build(path, header, keys)
        # Built beside its place under a name of its own and renamed in, so a crash never leaves a
        # half-made store at ``path`` and two creators never touch each other's folder: the first
        # rename wins, the other gets StoreExistsError and opens the winner's store instead.
        base = os.path.abspath(path)
        _remove_dead_creations(base)
        tmp = f"{base}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            cls._build(tmp, header, keys)
            if os.path.isdir(path):
                os.rmdir(path)  # an empty folder; fails if another creator filled it meanwhile
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if os.path.isdir(path) and os.listdir(path):
                raise StoreExistsError(f"{path}: another process created this store at the same time") from None
            raise
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
        # One status row per view block: each shard writes its own status chunk, so writers of
        # different view blocks of one sample block never overwrite each other's verdicts.
        g.create_array("status", shape=(header.n_view_blocks, N), dtype=np.uint8, chunks=(1, Bs), fill_value=0,
                       dimension_names=("view_block", "sample"), compressors=comp)
        g.create_array("done", shape=(header.n_view_blocks, header.n_sample_blocks), dtype=np.uint16,
                       chunks=(1, 1), fill_value=0, compressors=[Crc32cCodec()],
                       dimension_names=("view_block", "sample_block"))
        if header.schema_version >= 3:  # one seal per shard, written with it (see LabelStore.seal)
            g.create_array(SEAL_ARRAY, shape=(header.n_view_blocks, header.n_sample_blocks, 32), dtype=np.uint8,
                           chunks=(1, 1, 32), fill_value=0, compressors=[Crc32cCodec()],
                           dimension_names=("view_block", "sample_block", "byte"))
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
            raise StoreError(f"{path}: no label store here (not a folder); pass the {setting('out')} of generate")
        from .pull_marker import refuse_unfinished_pull

        refuse_unfinished_pull(path)  # half a pull is no store: say how to finish it
        return cls._open(path, mode)

    @classmethod
    def _open(cls, path: str, mode: str = "r") -> "LabelStore":
        """``open`` without the unfinished-pull check: for the pull itself, checking what it fetched."""
        try:
            g = zarr.open_group(path, mode=mode, zarr_format=3)
            attrs = dict(g.attrs)
        except ImportError as e:  # a URL whose fsspec driver is missing (s3fs, gcsfs, ...)
            raise StoreError(f"{path}: {e}") from None
        except Exception as e:  # zarr raises several types for "not a group"
            if not _is_remote(path) and os.path.isdir(os.path.join(path, "topk_index")):
                raise StoreError(f"{path}: the store's metadata (zarr.json) is damaged ({type(e).__name__}); "
                                f"{REPAIR_HINT}") from None
            raise StoreError(f"{path}: not a relabel label store ({type(e).__name__}); pass the {setting('out')} of "
                             f"generate") from None
        d = attrs.get("relabel")
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise StoreError(f"{path}: a zarr group but not a relabel label store (no 'relabel' header)")
        if int(d.get("schema_version", 0)) > SCHEMA_VERSION:
            raise StoreError(f"{path}: store schema version {d['schema_version']} is newer than this relabel "
                            f"understands ({SCHEMA_VERSION}); upgrade relabel")
        try:
            header = StoreHeader.from_dict(d)
        except (TypeError, ValueError) as e:
            raise StoreError(f"{path}: the store header is damaged ({e}); regenerate the store") from None
        except UserError as e:
            raise StoreError(f"{path}: the store header is inconsistent: {e}") from None
        store = cls(path, g, header)
        store._check_arrays()
        return store

    def _array(self, name: str):
        try:
            return self.group[name]
        except KeyError:
            raise StoreError(f"{self.path}: label store is missing array {name!r}; it is damaged: "
                            f"{REPAIR_HINT}") from None
        except Exception as e:  # unparsable zarr.json
            raise StoreError(f"{self.path}: metadata of array {name!r} ({name}/zarr.json) is damaged "
                            f"({type(e).__name__}); {REPAIR_HINT}") from None

    def _check_arrays(self) -> None:
        """The header is only trusted where the arrays agree with it (an edited or pulled header)."""
        h = self.header
        N, V, k = h.num_samples, h.views, h.topk
        expect = {"topk_index": ((V, N, k), h.index_dtype), "topk_logp": ((V, N, k + 1), h.encoding.dtype),
                  "done": ((h.n_view_blocks, h.n_sample_blocks), np.dtype(np.uint16)),
                  "status": ((h.n_view_blocks, N) if h.schema_version >= 2 else (N,), np.dtype(np.uint8)),
                  "keys": (None, np.dtype(np.uint8))}
        if h.schema_version >= 3:
            expect[SEAL_ARRAY] = ((h.n_view_blocks, h.n_sample_blocks, 32), np.dtype(np.uint8))
        for name, (shape, dtype) in expect.items():
            a = self._array(name)
            if (shape is not None and tuple(a.shape) != shape) or a.dtype != dtype:
                raise StoreError(f"{self.path}: the header does not match array {name!r} (header implies "
                                f"{shape or ''} {dtype}, the array is {tuple(a.shape)} {a.dtype}): the header was "
                                f"edited or the store is damaged; regenerate it or pull it again")
        if h.num_classes != int(h.teacher.get("num_classes", h.num_classes)):
            raise StoreError(f"{self.path}: the header says {h.num_classes} classes but its teacher has "
                            f"{h.teacher.get('num_classes')}: the header was edited or is damaged")

    @classmethod
    def repair_metadata(cls, path: str, header: StoreHeader, keys: list[str]) -> list[str]:
        """Rebuild what the settings and the images determine: the group's and arrays' metadata,
        the keys, and unreadable ``done`` entries (their shards become pending). Label shards are
        never touched here: damaged ones are found by ``check_shards`` and recomputed.
        ``header``/``keys``: what generate computes from its arguments and DATA. Returns what was done."""
        path = str(path)
        if _is_remote(path):
            return []
        did = []
        try:
            on_disk = StoreHeader.from_dict(dict(zarr.open_group(path, mode="r", zarr_format=3).attrs)["relabel"])
        except Exception:
            on_disk = None
        if on_disk is not None:
            header = on_disk
        else:
            try:  # the label arrays' own metadata still knows how many views exist
                with open(os.path.join(path, "topk_index", "zarr.json")) as f:
                    meta = json.load(f)
                header.views = max(header.views, int(meta["shape"][0]))
            except Exception:
                pass
        ref = f"{os.path.abspath(path)}.repair-{os.getpid()}"
        shutil.rmtree(ref, ignore_errors=True)
        try:
            cls._build(ref, header, keys)
            if on_disk is None:
                shutil.copyfile(os.path.join(ref, "zarr.json"), os.path.join(path, "zarr.json"))
                did.append("rebuilt the store header (zarr.json) from the command's settings")
            g = zarr.open_group(path, mode="r+", zarr_format=3)
            for name in (*LABEL_ARRAYS, "status", "done", "keys") + ((SEAL_ARRAY,) if header.schema_version >= 3 else ()):
                try:
                    g[name]
                except Exception:
                    os.makedirs(os.path.join(path, name), exist_ok=True)
                    shutil.copyfile(os.path.join(ref, name, "zarr.json"), os.path.join(path, name, "zarr.json"))
                    did.append(f"rebuilt the metadata of array {name!r}")
            g = zarr.open_group(path, mode="r+", zarr_format=3)
            try:
                ok = bytes(np.asarray(g["keys"][:])).decode().split("\n") == list(keys)
            except Exception:
                ok = False
            if not ok:
                shutil.rmtree(os.path.join(path, "keys"))
                shutil.copytree(os.path.join(ref, "keys"), os.path.join(path, "keys"))
                did.append("rebuilt the keys from DATA")
            done = g["done"]
            for vb in range(done.shape[0]):
                for sb in range(done.shape[1]):
                    try:
                        done[vb, sb]
                    except Exception:
                        done[vb, sb] = 0
                        did.append(f"done entry of shard {vb}/{sb} was unreadable: recomputing that shard")
        finally:
            shutil.rmtree(ref, ignore_errors=True)
        return did

    # ---------------------------------------------------------------- keys
    @cached_property
    def keys(self) -> list[str]:
        try:
            blob = np.asarray(self._array("keys")[:])
            keys = bytes(blob).decode().split("\n")
        except UserError:
            raise
        except Exception as e:  # checksum or decode failure
            raise StoreError(f"{self.path}: the keys array is damaged ({type(e).__name__}); {REPAIR_HINT}") from None
        if len(keys) != self.header.num_samples or len(set(keys)) != len(keys):
            raise StoreError(f"{self.path}: the keys array holds {len(keys)} keys ({len(set(keys))} distinct) for "
                            f"{self.header.num_samples} samples; {REPAIR_HINT}")
        bad = first_out_of_order(keys, self.header.seed)  # labels sit at positions: an edited order moves them
        if bad is not None:
            raise StoreError(f"{self.path}: the keys array is not in the store's order (first out of place: position "
                            f"{bad}, {keys[bad]!r}): it was edited, and its images would get other images' labels; "
                            f"{REPAIR_HINT}")
        return keys

    @cached_property
    def key_index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    # ---------------------------------------------------------------- shards
    def shard(self, vb: int, sb: int, done: int = 0) -> Shard:
        h = self.header
        v0, s0 = vb * h.views_per_shard, sb * h.samples_per_shard
        return Shard(vb, sb, v0, min(v0 + h.views_per_shard, h.views), s0, min(s0 + h.samples_per_shard, h.num_samples), done)

    def done_views(self) -> np.ndarray:
        try:
            return np.asarray(self._array("done")[:], dtype=np.int64)
        except UserError:
            raise
        except Exception as e:
            raise StoreError(f"{self.path}: the done array (which shards are finished) is damaged "
                            f"({type(e).__name__}); {REPAIR_HINT}") from None

    def shards(self) -> list[Shard]:
        done = self.done_views()
        return [self.shard(vb, sb, int(done[vb, sb])) for vb in range(done.shape[0]) for sb in range(done.shape[1])]

    @cached_property
    def held_views(self) -> tuple[int, int]:
        """The views [a, b) this store holds or is to hold: all of them, except in a pull of a range of
        views, whose view blocks below the range were never fetched (they are absent, not pending)."""
        pulled = self.group.attrs.get("relabel_pull")
        a = 0
        if isinstance(pulled, dict) and isinstance(pulled.get("views"), list) and pulled["views"]:
            try:
                a = max(0, min(int(pulled["views"][0]), self.header.views - 1))
            except (TypeError, ValueError):
                a = 0
        vps = self.header.views_per_shard
        return a // vps * vps, self.header.views

    def pending_shards(self) -> list[Shard]:
        first_vb = self.held_views[0] // self.header.views_per_shard
        return [s for s in self.shards() if s.done < s.v1 - s.v0 and s.vb >= first_vb]

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
        st = self.group["status"].with_config({"write_empty_chunks": True})
        st[shard.vb, shard.s0:shard.s1] = status.astype(np.uint8, copy=False)
        if self.sealed:  # after its files, before `done`: a shard marked done always has its seal
            written = replace(shard, done=b - shard.v0)
            self.group[SEAL_ARRAY][shard.vb, shard.sb] = np.frombuffer(self.seal(written), np.uint8)
            self._sealed.add((shard.vb, shard.sb, written.done))
        self.group["done"][shard.vb, shard.sb] = b - shard.v0

    def extend_views(self, views: int) -> None:
        """Grow the view axis; existing views stay as they are and new shards start pending.

        Two writers may grow one store at once: under a lock, the header read from disk at that
        moment decides, and the view axis never shrinks below what is on disk.
        """
        if views <= self.header.views:  # views only grow, so the disk has at least as many
            return
        with _locked(self.path):
            g = zarr.open_group(self.path, mode="r+", zarr_format=3)
            h = StoreHeader.from_dict(dict(g.attrs)["relabel"])
            if views > h.views:
                h.views = views
                for name in LABEL_ARRAYS:
                    arr = g[name]
                    arr.resize((views, *arr.shape[1:]))
                g["done"].resize((h.n_view_blocks, h.n_sample_blocks))
                if h.schema_version >= 3:
                    g[SEAL_ARRAY].resize((h.n_view_blocks, h.n_sample_blocks, 32))
                if h.schema_version >= 2:
                    g["status"].resize((h.n_view_blocks, h.num_samples))
                g.attrs["relabel"] = h.to_dict()
        self.group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        self.header = StoreHeader.from_dict(dict(self.group.attrs)["relabel"])

    # ---------------------------------------------------------------- reads
    def block_status(self) -> np.ndarray:
        """(view blocks, N) status as each shard recorded it; rows of unwritten shards are 0."""
        h = self.header
        if self.group.read_only and getattr(self, "_block_status", None) is not None:
            return self._block_status  # a read-only store's status cannot change while it is open
        st = self._read("status", slice(None), lambda: "the status array")
        if st.ndim == 1:  # schema 1: one shared row
            st = np.broadcast_to(st, (h.n_view_blocks, h.num_samples))
        if self.group.read_only:
            self._block_status = st
        return st

    def status(self) -> np.ndarray:
        """Per sample: 2 if any view block found it unreadable (sticky), 1 if labelled, 0 if pending.

        A store where one view block labelled a sample and another found it unreadable is refused:
        its pairs differ between blocks, so no single status is right for it.
        """
        st = self.block_status()
        bad = (st == STATUS_UNREADABLE).any(0)
        mixed = bad & (st == STATUS_OK).any(0)
        if mixed.any():
            first = int(np.nonzero(mixed)[0][0])
            raise StoreError(f"{self.path}: {int(mixed.sum())} sample(s) (first: {self.keys[first]!r}) were readable "
                            f"for some views and unreadable for others; rerun 'relabel generate' to finish the store")
        return np.where(bad, STATUS_UNREADABLE, st.max(0)).astype(np.uint8)

    def inconsistent_shards(self) -> list[Shard]:
        """Written shards that labelled a sample another view block found unreadable: to be redone."""
        st, done = self.block_status(), self.done_views()
        bad = (st == STATUS_UNREADABLE).any(0)
        out = []
        for vb in range(done.shape[0]):
            for sb in range(done.shape[1]):
                sh = self.shard(vb, sb, int(done[vb, sb]))
                if sh.done and (bad[sh.s0:sh.s1] & (st[vb, sh.s0:sh.s1] == STATUS_OK)).any():
                    out.append(sh)
        return out

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

    def _shard_files(self, sh: Shard) -> list[str]:
        """The files a written shard must have: its label shards and (schema 2) its status chunk."""
        keys = [self._shard_key(a, sh.vb, sh.sb) for a in LABEL_ARRAYS]
        if self.header.schema_version >= 2:
            keys.append(f"status/c/{sh.vb}/{sh.sb}")
        return keys

    def _check_present(self, shards: list[Shard]) -> None:
        lost = [key for sh in shards for key in self._shard_files(sh) if self._empty(key)]
        if lost:
            raise StoreError(f"{self.path}: shard file {lost[0]} is missing or empty ({len(lost)} damaged in all); "
                            f"run relabel verify, then relabel generate {setting('repair', True)}")

    def _read(self, array: str, sel, shard_names) -> np.ndarray:
        try:
            return np.asarray(self.group[array][sel])
        except Exception as e:
            raise StoreError(f"{self.path}: {array} is damaged in {shard_names()} ({type(e).__name__}: {str(e)[:80]}); "
                            f"run relabel verify, then relabel generate {setting('repair', True)}") from None

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
                raise StoreError(f"{self.path}: view {v} is not generated for {len(gone)} sample block(s) "
                                f"(first: {self.shard(vb, gone[0]).name}); finish 'relabel generate' first")
            shards = [self.shard(vb, sb, int(done[sb])) for sb in range(h.n_sample_blocks)]
            self._check_present(shards)
            self._require_seals(shards)
            if self.group.read_only and all(sh.done == sh.v1 - sh.v0 for sh in shards):
                self._ready_blocks.add(vb)
        names = lambda: ", ".join(d.file for d in self.check_shards(  # noqa: E731
            [s for s in self.shards() if s.vb == vb])) or f"view {v}"
        raw, lp = self._read_labels(v, names)
        lp = h.encoding.decode(lp)
        if v not in self._checked_views:  # once per view and process: epochs re-read the same views
            self._check_rows(raw, lp, self.block_status()[vb] == STATUS_OK, lambda: f"view {v} ({names()})")
            if self.group.read_only:
                self._checked_views.add(v)
        return raw.astype(np.int64), lp

    def _check_rows(self, idx: np.ndarray, lp: np.ndarray, ok: np.ndarray, where) -> None:
        """Refuse labels of samples marked OK that cannot be a real top-k (never silently train on them)."""
        bad = check_label_rows(idx, lp, self.header.num_classes, self.header.encoding.max_error + 1e-3) & ok
        if bad.any():
            first = np.argwhere(bad)[0]
            raise StoreError(f"{self.path}: {int(bad.sum())} stored label row(s) of {where()} cannot be a real top-k "
                            f"(first: sample {self.keys[int(first[-1])]!r}: classes {idx[tuple(first)].tolist()}); "
                            f"the store is damaged or was written wrongly: {REPAIR_HINT}")

    def _read_labels(self, sel, shard_names) -> tuple[np.ndarray, np.ndarray]:
        """Both label arrays in one event-loop pass, so their chunks are fetched and decoded together."""
        arrays = [self.group[a]._async_array for a in LABEL_ARRAYS]

        async def both():
            return await asyncio.gather(*(a.getitem(sel) for a in arrays))

        try:
            idx, lp = sync(both())
        except Exception as e:
            raise StoreError(f"{self.path}: label data is damaged in {shard_names()} ({type(e).__name__}: {str(e)[:80]}); "
                            f"run relabel verify, then relabel generate {setting('repair', True)}") from None
        return np.asarray(idx), np.asarray(lp)

    def read_shard(self, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
        sel = (slice(shard.v0, shard.v1), slice(shard.s0, shard.s1))
        nd = int(self._read("done", (shard.vb, shard.sb), lambda: "the done array"))  # one chunk, not all
        if nd:  # written: its files must be there, and be the ones this store wrote there
            self._check_present([shard])
            self._require_seals([replace(shard, done=nd)])
        idx, lp = self._read_labels(sel, lambda: shard.name)
        idx, lp = idx.astype(np.int64), self.header.encoding.decode(lp)
        rows = (shard.vb, slice(shard.s0, shard.s1)) if self.header.schema_version >= 2 else slice(shard.s0, shard.s1)
        ok = self._read("status", rows, lambda: "the status array") == STATUS_OK
        self._check_rows(idx[:nd], lp[:nd], np.broadcast_to(ok, idx[:nd].shape[:2]), lambda: shard.name)
        return idx, lp

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

    def check_shards(self, shards: list[Shard] | None = None) -> list["ShardDamage"]:
        """Read every completed shard in full (labels and status); one record per damaged file."""
        bad = []
        for sh in shards if shards is not None else self.shards():
            if sh.done == 0:
                continue
            for key in self._shard_files(sh):
                name = key.split("/")[0]
                if self._empty(key):
                    bad.append(ShardDamage(sh, key, f"missing or empty ({sh.name} is marked done)"))
                    continue
                sel = (sh.vb, slice(sh.s0, sh.s1)) if name == "status" else (slice(sh.v0, sh.v1), slice(sh.s0, sh.s1))
                try:
                    np.asarray(self.group[name][sel])
                except Exception as e:
                    bad.append(ShardDamage(sh, key, f"unreadable ({type(e).__name__}: {str(e)[:80]}) in {sh.name}"))
            if not bad or bad[-1].shard != sh:
                problem = self.check_seal(sh)
                if problem:
                    bad.append(ShardDamage(sh, sh.name, problem))
        return bad

    # ---------------------------------------------------------------- seals
    @property
    def sealed(self) -> bool:
        """Schema 3 and later bind every written shard to the store and its place."""
        return self.header.schema_version >= 3

    def _file_sha(self, key: str) -> bytes:
        full = f"{self.group.path}/{key}".lstrip("/")
        buf = sync(self.group.store.get(full, prototype=default_buffer_prototype()))
        return hashlib.sha256(b"" if buf is None else buf.to_bytes()).digest()

    def seal(self, sh: Shard) -> bytes:
        """sha256 over the store's identity, the shard's place (view block, sample block, views done)
        and the bytes of each of its files. Checksums say a file is intact; the seal says it is this
        store's file for this place, so a shard copied from another store (an rsync of two machines'
        outputs into one folder) or moved within this one is refused instead of trained on."""
        d = hashlib.sha256(f"relabel-seal-1\0{self.header.identity}\0{sh.vb}\0{sh.sb}\0{sh.done}\0".encode())
        for key in self._shard_files(sh):
            d.update(self._file_sha(key))
        return d.digest()

    def check_seal(self, sh: Shard) -> str | None:
        """None when a written shard's files are the ones this store wrote at its place; else the problem."""
        if not self.sealed or sh.done == 0:
            return None
        try:
            stored = np.asarray(self.group[SEAL_ARRAY][sh.vb, sh.sb], dtype=np.uint8).tobytes()
        except Exception as e:
            return f"its seal ({SEAL_ARRAY}/c/{sh.vb}/{sh.sb}/0) is unreadable ({type(e).__name__})"
        if stored == bytes(32):
            return "it is marked done but has no seal (its files were not written by this store)"
        if stored != self.seal(sh):
            return ("its files are not the ones this store wrote at this place (copied from another store, or "
                    "moved within this one)")
        return None

    def _require_seals(self, shards: list[Shard]) -> None:
        for sh in shards:
            if not sh.done or (sh.vb, sh.sb, sh.done) in self._sealed:
                continue
            if self.check_seal(sh):  # damaged bytes or a foreign shard: name which
                found = self.check_shards([sh])
                if not found:  # it changed under us (another process is writing it): say so, not "damaged"
                    raise StoreError(f"{self.path}: {sh.name} changed while it was read (is generate running on "
                                     f"this store?); rerun when it has finished")
                d = found[0]
                what = f"{sh.name}: {d.problem}" if d.file == sh.name else f"label data is damaged in {d}"
                raise StoreError(f"{self.path}: {what}; run relabel verify, then relabel generate "
                                 f"{setting('repair', True)} to recompute it")
            self._sealed.add((sh.vb, sh.sb, sh.done))

    def require_sealed(self) -> None:
        """Check the seal of every written shard this store holds, once, before a long read (a
        foreign shard in the last view block must not stop a run hours in)."""
        lo = self.held_views[0] // self.header.views_per_shard
        self._require_seals([sh for sh in self.shards() if sh.vb >= lo])

    def label_set_digest(self) -> str:
        """One sha256 for the whole label set: the identity, the view count, the keys (their order
        places every label) and every shard's seal. Published with the store; ``pull(expect=...)``
        refuses any other set."""
        self.keys  # noqa: B018 - checked (count, order) before they are vouched for
        keys_sha = hashlib.sha256(np.asarray(self._array("keys")[:], dtype=np.uint8).tobytes()).hexdigest()
        d = hashlib.sha256(f"relabel-labels-1\0{self.header.identity}\0{self.header.views}\0{keys_sha}\0".encode())
        seals = np.asarray(self._array(SEAL_ARRAY)[:], dtype=np.uint8)
        done = self.done_views()
        for vb in range(done.shape[0]):
            for sb in range(done.shape[1]):
                d.update(f"{vb},{sb},{int(done[vb, sb])};".encode())
                d.update(seals[vb, sb].tobytes())
        return d.hexdigest()

    # ---------------------------------------------------------------- claims
    # A claim is a file .claims/<vb>.<sb> holding "<host> <pid>", kept alive by its holder touching it
    # (keep_claims_alive). It is stale when it was not touched for `lease` seconds, whatever host or
    # PID it names (a preempted node, a new container, a reused PID), or at once when it names a dead
    # process on this host. Remote stores have no claims.
    def _claim_path(self, sh: Shard) -> str:
        return os.path.join(self.path, CLAIMS_DIR, f"{sh.vb}.{sh.sb}")

    def _now_on_store(self) -> float:
        """The store file system's clock (a probe file's mtime): claim ages never mix two clocks."""
        probe = os.path.join(self.path, CLAIMS_DIR, f".now-{os.getpid()}")
        try:
            with open(probe, "w"):
                pass
            return os.stat(probe).st_mtime
        except OSError:
            return time.time()
        finally:
            with contextlib.suppress(OSError):
                os.remove(probe)

    def _claim_stale(self, path: str, lease: float, now: float | None = None) -> bool:
        try:
            age = (self._now_on_store() if now is None else now) - os.stat(path).st_mtime
        except FileNotFoundError:
            return True
        if age > lease:
            return True
        try:
            host, pid = open(path).read().split()
            pid_n = int(pid)
        except (OSError, ValueError):
            return False  # being written (or torn): held until its lease runs out
        return host == socket.gethostname() and pid_n != os.getpid() and not _pid_alive(pid_n)

    def holds(self, sh: Shard) -> bool:
        """Whether this process still holds its claim on ``sh`` (a stalled writer's may have been
        taken over after its lease): checked before a shard is written. Remote stores: always."""
        if _is_remote(self.path):
            return True
        try:
            return open(self._claim_path(sh)).read().strip() == f"{socket.gethostname()} {os.getpid()}"
        except OSError:
            return False

    def claim(self, sh: Shard, lease: float = CLAIM_LEASE, force: bool = False) -> bool:
        """Claim a shard for this process before computing it, so two writers on one store split the
        work. False: another process holds a live claim. A stale claim (see above) is taken over;
        ``force`` takes over any claim (``generate --repair``)."""
        if _is_remote(self.path):
            return True
        os.makedirs(os.path.join(self.path, CLAIMS_DIR), exist_ok=True)
        path, me = self._claim_path(sh), f"{socket.gethostname()} {os.getpid()}"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                mine = open(path).read().strip() == me
            except OSError:
                mine = False
            if not (mine or force or self._claim_stale(path, lease)):
                return False
            tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
            with open(tmp, "w") as f:
                f.write(me)
            os.replace(tmp, path)
        else:
            with os.fdopen(fd, "w") as f:
                f.write(me)
        self._held.add(path)
        return True

    @contextlib.contextmanager
    def keep_claims_alive(self, every: float):
        """Touch this process's claims every ``every`` seconds while the block runs (a daemon thread)."""
        stop = threading.Event()

        def beat():
            while not stop.wait(every):
                for path in list(self._held):
                    with contextlib.suppress(OSError):
                        os.utime(path)

        t = threading.Thread(target=beat, name="relabel-claims", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    def remove_stale_claims(self, lease: float = CLAIM_LEASE, force: bool = False) -> int:
        """Delete stale claims (all of them with ``force``); returns how many."""
        d = os.path.join(self.path, CLAIMS_DIR)
        if _is_remote(self.path) or not os.path.isdir(d):
            return 0
        n, now = 0, self._now_on_store()
        for name in os.listdir(d):
            path = os.path.join(d, name)
            if name.startswith(".now-"):
                continue
            if force or self._claim_stale(path, lease, now):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                n += 1
        return n

    def release(self, sh: Shard) -> None:
        """Drop this process's claim on ``sh`` (never another writer's that took it over)."""
        if not _is_remote(self.path):
            path = self._claim_path(sh)
            self._held.discard(path)
            if self.holds(sh):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)

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

    def missing_files(self) -> list[str]:
        """Files that written shards must have and do not (a cheap existence check, no reads)."""
        return [key for sh in self.shards() if sh.done for key in self._shard_files(sh) if self._empty(key)]

    def summary(self) -> dict:
        h = self.header
        self.keys  # noqa: B018 - read (and checksum) the keys: a summary of a damaged store must say so
        missing = self.missing_files()
        st = self.status()
        nbytes = self.bytes_on_disk()
        return {
            "path": self.path,
            "num_samples": h.num_samples,
            "views": h.views,
            "held_views": list(self.held_views),
            "topk": h.topk,
            "num_classes": h.num_classes,
            "teacher": h.teacher,
            "recipe": h.recipe.get("name"),
            "seed": h.seed,
            "img_size": h.img_size,
            "encoding": h.encoding.to_dict(),
            "fingerprint": h.fingerprint,
            "complete": self.complete and not missing,
            "missing_files": missing,
            "corrupt_samples": int((st == STATUS_UNREADABLE).sum()),
            "bytes_on_disk": nbytes,
            "bytes_per_view": nbytes / (h.num_samples * h.views),
            "label_bytes_per_view": self.label_bytes() / (h.num_samples * h.views),
            "schema_version": h.schema_version,
            "writer": h.writer,
            "label_set_digest": self.label_set_digest() if self.sealed else None,
        }


# ---------------------------------------------------------------- store files by view block, pulled subsets
def view_block_of(rel: str) -> int | None:
    """The view block a store file belongs to, from its chunk key: a label shard
    (``topk_index|topk_logp/c/<view_block>/<sample_block>/0``) or a (schema 2) ``status`` chunk
    (``status/c/<view_block>/<sample_block>``); None for files every view needs. ``done`` and
    ``seals`` chunks are tiny and make up the label-set digest, so a pull of some views takes all."""
    parts = rel.split("/")
    if (len(parts) == 5 and parts[0] in LABEL_ARRAYS) or (len(parts) == 4 and parts[0] == "status"):
        if parts[1] == "c" and all(p.isdecimal() for p in parts[2:]):
            return int(parts[2])
    return None


def trim_views(path: str, views: tuple[int, int], source: str, total_views: int) -> None:
    """Make a pulled subset consistent: header views = b, label arrays, ``done`` and (schema 2) the
    per-view-block ``status`` resized, done counts clipped to the views present; blocks below a's
    stay pending (absent)."""
    try:
        _trim_views(path, views, source, total_views)
    except UserError:
        raise
    except Exception as e:  # metadata from others that zarr cannot take
        raise UserError(f"{source}: the pulled store's metadata cannot be trimmed to views {views[0]}-{views[1] - 1} "
                        f"({type(e).__name__}: {str(e)[:80]}); pull all views, or ask the publisher") from None


def _trim_views(path: str, views: tuple[int, int], source: str, total_views: int) -> None:
    a, b = views
    g = zarr.open_group(path, mode="r+", zarr_format=3)
    h = dict(g.attrs["relabel"])
    vps = int(h["views_per_shard"])
    for name in LABEL_ARRAYS:
        arr = g[name]
        arr.resize((b, *arr.shape[1:]))
    done = g["done"]
    nvb = -(-b // vps)
    done.resize((nvb, done.shape[1]))
    d = np.asarray(done[:], dtype=np.int64)
    for vb in range(nvb):
        d[vb] = np.minimum(d[vb], min(vps, b - vb * vps)) if vb >= a // vps else 0
    done[:] = d.astype(done.dtype)
    if g["status"].ndim == 2:  # schema 2: one status row per view block
        g["status"].resize((nvb, g["status"].shape[1]))
    if SEAL_ARRAY in g:
        g[SEAL_ARRAY].resize((nvb, *g[SEAL_ARRAY].shape[1:]))
    h["views"] = b
    g.attrs["relabel"] = h
    g.attrs["relabel_pull"] = {"source": source, "views": [a, b], "published_views": total_views}
