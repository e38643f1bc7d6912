"""The label store: a zarr v3 group holding top-k soft labels for N samples x V views.

Layout and schema are written down in storage/FORMAT.md. Sample axis = the store's own sample
order (``keys``); labels are matched to images by key, never by position.

Writes go one whole shard (a block of views x a block of samples) at a time, so processes that own
disjoint shards can write at once; each shard's completion is its own tiny chunk in ``done``.
This module creates, opens, repairs, writes and reads a store; the header and shard records are
``header``, the row checks ``rows``, the seals ``seals``, the writers' claims ``claims`` and pulled
subsets ``subset`` (their names are re-exported here).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from dataclasses import replace
from functools import cached_property

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from .claims import CLAIM_LEASE, CLAIMS_DIR, ShardClaims, _is_remote, _pid_alive
from .errors import StoreError, UserError, named
from .header import (CLASS_ARRAY, DIGEST_ARRAY, DIGEST_BYTES, FORMAT_NAME, LABEL_ARRAYS, SCHEMA_VERSION, SEAL_ARRAY,
                     STATUS_OK, STATUS_PENDING, STATUS_UNREADABLE, Shard, ShardDamage, StoreHeader)
from .order import first_out_of_order
from .reads import REPAIR_HINT, LabelReads
from .rows import check_label_rows
from .seals import SealedShards
from .subset import trim_views, view_block_of



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


class LabelStore(LabelReads, SealedShards, ShardClaims):
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
    def create(cls, path: str | os.PathLike, header: StoreHeader, keys: list[str],
               classes: np.ndarray | None = None) -> "LabelStore":
        """A new, empty store at ``path``: ``keys`` in store order (``store_order``), ``classes`` the
        dataset class of each (schema 4 records them; default: unknown, -1)."""
        path = str(path)
        if not _is_remote(path) and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise StoreError(f"{path}: already exists and is not an empty folder; choose another {named('out')} or "
                             f"remove it")
        if len(keys) != header.num_samples:
            raise ValueError("one key per sample")
        if any("\n" in k for k in keys):
            raise StoreError("sample keys must not contain newlines")
        if first_out_of_order(list(keys), header.seed) is not None:  # what `keys` checks on every open
            raise ValueError("keys must be in the store's order: pass relabel.storage.order.store_order(keys, seed)")
        if _is_remote(path):
            return cls._build(path, header, keys, classes)
        # Built beside its place under a name of its own and renamed in, so a crash never leaves a
        # half-made store at ``path`` and two creators never touch each other's folder: the first
        # rename wins, the other gets StoreExistsError and opens the winner's store instead.
        base = os.path.abspath(path)
        _remove_dead_creations(base)
        tmp = f"{base}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            cls._build(tmp, header, keys, classes)
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
    def _build(cls, path: str, header: StoreHeader, keys: list[str], classes: np.ndarray | None = None) -> "LabelStore":
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
        if header.schema_version >= 4:  # each shard records the bytes it was labelled from (see write_shard)
            g.create_array(DIGEST_ARRAY, shape=(header.n_view_blocks, N, DIGEST_BYTES), dtype=np.uint8,
                           chunks=(1, Bs, DIGEST_BYTES), fill_value=0, compressors=[Crc32cCodec()],
                           dimension_names=("view_block", "sample", "byte"))
            cl = g.create_array(CLASS_ARRAY, shape=(N,), dtype=np.int32, chunks=(max(1, min(N, 1 << 22)),),
                                fill_value=-1, compressors=comp, dimension_names=("sample",))
            cl[:] = (np.full(N, -1, np.int32) if classes is None else np.asarray(classes, np.int32))
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
            raise StoreError(f"{path}: no label store here (not a folder); pass the {named('out')} of generate")
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
            raise StoreError(f"{path}: not a relabel label store ({type(e).__name__}); pass the {named('out')} of "
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
        if h.schema_version >= 4:
            expect[DIGEST_ARRAY] = ((h.n_view_blocks, N, DIGEST_BYTES), np.dtype(np.uint8))
            expect[CLASS_ARRAY] = ((N,), np.dtype(np.int32))
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
    def repair_metadata(cls, path: str, header: StoreHeader, keys: list[str],
                        classes: np.ndarray | None = None) -> list[str]:
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
            cls._build(ref, header, keys, classes)
            if on_disk is None:
                shutil.copyfile(os.path.join(ref, "zarr.json"), os.path.join(path, "zarr.json"))
                did.append("rebuilt the store header (zarr.json) from the command's settings")
            g = zarr.open_group(path, mode="r+", zarr_format=3)
            for name in (*LABEL_ARRAYS, "status", "done", "keys") + ((SEAL_ARRAY,) if header.schema_version >= 3 else ()) \
                    + ((DIGEST_ARRAY, CLASS_ARRAY) if header.schema_version >= 4 else ()):
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
            if header.schema_version >= 4 and classes is not None:
                try:  # unreadable only: a readable array that differs is other data (the fingerprint says so)
                    ok = np.asarray(g[CLASS_ARRAY][:]).shape == (header.num_samples,)
                except Exception:
                    ok = False
                if not ok:
                    shutil.rmtree(os.path.join(path, CLASS_ARRAY), ignore_errors=True)
                    shutil.copytree(os.path.join(ref, CLASS_ARRAY), os.path.join(path, CLASS_ARRAY))
                    did.append("rebuilt each sample's class from DATA")
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

    def write_shard(self, shard: Shard, v_from: int, index: np.ndarray, logp: np.ndarray, status: np.ndarray,
                    digests: np.ndarray | None = None) -> None:
        """Write views [shard.v0 + v_from, shard.v1) of one shard, then its status (and, schema 4, the
        digests of the image bytes it was labelled from: (samples, 16) uint8, zeros where none were
        read), then its seal, then mark it done.

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
        if h.schema_version >= 4:
            if digests is None:  # labels of no image's bytes (synthetic stores, benchmarks): nothing to check
                digests = np.zeros((shard.s1 - shard.s0, DIGEST_BYTES), np.uint8)
            if digests.shape != (shard.s1 - shard.s0, DIGEST_BYTES):
                raise ValueError(f"digests have shape {digests.shape}; expected ({shard.s1 - shard.s0}, {DIGEST_BYTES})")
            dg = self.group[DIGEST_ARRAY].with_config({"write_empty_chunks": True})
            dg[shard.vb, shard.s0:shard.s1] = digests.astype(np.uint8, copy=False)
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
                if h.schema_version >= 4:
                    g[DIGEST_ARRAY].resize((h.n_view_blocks, h.num_samples, DIGEST_BYTES))
                g.attrs["relabel"] = h.to_dict()
        self.group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        self.header = StoreHeader.from_dict(dict(self.group.attrs)["relabel"])

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
            "key_rule": h.key_rule,
            "resize_rule": h.resize_rule,
            "digests": self.has_digests,
        }


__all__ = ["LabelStore", "StoreExistsError", "DIGEST_ARRAY", "CLASS_ARRAY", "DIGEST_BYTES", "StoreHeader", "Shard", "ShardDamage", "check_label_rows", "trim_views",
           "view_block_of", "SCHEMA_VERSION", "FORMAT_NAME", "STATUS_PENDING", "STATUS_OK", "STATUS_UNREADABLE",
           "LABEL_ARRAYS", "SEAL_ARRAY", "CLAIMS_DIR", "CLAIM_LEASE", "REPAIR_HINT"]
