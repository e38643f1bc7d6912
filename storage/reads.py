"""Reading a label store: status, whole views (an epoch's labels), shards and arbitrary rows.

Every read refuses what cannot be a right label before it is returned: missing or damaged files, a
shard that is not this store's (its seal), rows that cannot be a real top-k. ``LabelReads`` is a
part of ``LabelStore`` (a mixin: it uses the store's group, header, keys and seals).
"""
from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
from zarr.core.sync import sync

from .errors import StoreError, named
from .header import CLASS_ARRAY, DIGEST_ARRAY, DIGEST_BYTES, LABEL_ARRAYS, STATUS_OK, STATUS_UNREADABLE, Shard, ShardDamage
from .rows import check_label_rows

REPAIR_HINT = f"rerun generate {named('repair', True)} with the same data and settings to rebuild it"


class LabelReads:
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

    def trusted_block_status(self) -> np.ndarray:
        """``block_status`` with the rows of shards not marked done zeroed: what a writer may build on.
        A pending shard's status chunk is a crash's leftover, a repair's target or a foreign file;
        its "unreadable" marks must not spread to other view blocks (the sticky rule)."""
        st = np.array(self.block_status())
        st[self.pending_rows()] = 0
        return st

    def pending_rows(self) -> np.ndarray:
        """(view blocks, N) bool: the rows of shards not marked done, whose per-shard records (status,
        digests) nothing may build on."""
        h, done = self.header, self.done_views()
        return np.repeat(done == 0, h.samples_per_shard, axis=1)[:, :h.num_samples]

    @property
    def has_digests(self) -> bool:
        """Schema 4 and later record, per shard, the digests of the image bytes it was labelled from."""
        return self.header.schema_version >= 4

    def block_digests(self) -> np.ndarray:
        """(view blocks, N, 16) digests as each shard recorded them; zeros: not written, or no bytes read."""
        if self.group.read_only and getattr(self, "_block_digests", None) is not None:
            return self._block_digests
        d = self._read(DIGEST_ARRAY, slice(None), lambda: "the digests array")
        if self.group.read_only:
            self._block_digests = d
        return d

    def sample_digests(self, trusted_only: bool = False) -> np.ndarray | None:
        """(N, 16): the digest of the bytes every sample was labelled from (zeros: none recorded), or
        None for stores made before digests. View blocks that recorded two different digests for a
        sample (its image changed between them) are refused, naming the sample. ``trusted_only``:
        only shards marked done count (what a writer may build on)."""
        if not self.has_digests:
            return None
        d = np.array(self.block_digests())
        if trusted_only:
            d[self.pending_rows()] = 0
        written = d.any(-1)  # (view blocks, N)
        first = np.argmax(written, axis=0)
        out = d[first, np.arange(d.shape[1])]
        out[~written.any(0)] = 0
        differ = (written & (d != out[None]).any(-1)).any(0)
        if differ.any():
            i = int(np.nonzero(differ)[0][0])
            raise StoreError(f"{self.path}: {int(differ.sum())} sample(s) (first: {self.keys[i]!r}) were labelled from "
                             f"different image bytes in different view blocks (the images changed while the store was "
                             f"made); restore them and rerun generate {named('repair', True)}")
        return out

    def check_bytes(self, source, threads: int = 16, skip=()) -> tuple[list["ShardDamage"], list[str]]:
        """Read every sample's bytes from ``source`` (the images, keyed as the store keys them) and
        compare their digest with what each written shard recorded: (damaged shards, keys whose bytes
        differ or are missing). ``skip``: ShardDamage already found (a foreign or damaged file says
        nothing about the images: those shards are not named again, nor their samples called
        changed). Stores made before digests: nothing to compare ([], [])."""
        if not self.has_digests:
            return [], []
        import hashlib
        from concurrent.futures import ThreadPoolExecutor

        index, keys, blocks = source.index(), self.keys, self.block_digests()

        def digest(i: int) -> bytes | None:
            j = index.get(keys[i])
            if j is None:
                return None
            try:
                return hashlib.sha256(source.read(j)).digest()[:DIGEST_BYTES]
            except Exception:  # unreadable now: it differs from what was read, if anything was
                return b""

        now = np.zeros((len(keys), DIGEST_BYTES), np.uint8)
        missing = np.zeros(len(keys), bool)
        with ThreadPoolExecutor(max(1, threads)) as pool:  # reads are I/O; sha256 releases the GIL
            for i, d in enumerate(pool.map(digest, range(len(keys)), chunksize=64)):
                if d is None:
                    missing[i] = True
                elif len(d) == DIGEST_BYTES:
                    now[i] = np.frombuffer(d, np.uint8)
        done = self.done_views()
        written = blocks.any(-1) & ~self.pending_rows()  # (view blocks, N): recorded by a trusted shard
        for d in skip:
            written[d.shard.vb, d.shard.s0:d.shard.s1] = False
        differ = written & ((blocks != now[None]).any(-1) | missing[None])
        bad_keys = [keys[i] for i in np.nonzero(differ.any(0))[0]]
        damaged = []
        for vb in range(done.shape[0]):
            for sb in range(done.shape[1]):
                sh = self.shard(vb, sb, int(done[vb, sb]))
                rows = differ[vb, sh.s0:sh.s1]
                if sh.done and rows.any():
                    first = keys[sh.s0 + int(np.nonzero(rows)[0][0])]
                    damaged.append(ShardDamage(sh, sh.name, f"{int(rows.sum())} of its images are not the bytes it was "
                                                            f"labelled from (first: {first!r})"))
        return damaged, bad_keys

    def sample_classes(self) -> np.ndarray | None:
        """The dataset class index of every sample (-1: unknown), or None for stores before schema 4."""
        if self.header.schema_version < 4:
            return None
        return self._read(CLASS_ARRAY, slice(None), lambda: "the sample_class array").astype(np.int64)

    def inconsistent_shards(self) -> list[Shard]:
        """Written shards that labelled a sample another view block found unreadable: to be redone."""
        st, done = self.trusted_block_status(), self.done_views()
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
        if self.header.schema_version >= 4:
            keys.append(self._shard_key(DIGEST_ARRAY, sh.vb, sh.sb))
        return keys

    def _check_present(self, shards: list[Shard]) -> None:
        lost = [key for sh in shards for key in self._shard_files(sh) if self._empty(key)]
        if lost:
            raise StoreError(f"{self.path}: shard file {lost[0]} is missing or empty ({len(lost)} damaged in all); "
                            f"run relabel verify, then relabel generate {named('repair', True)}")

    def _read(self, array: str, sel, shard_names) -> np.ndarray:
        try:
            return np.asarray(self.group[array][sel])
        except Exception as e:
            raise StoreError(f"{self.path}: {array} is damaged in {shard_names()} ({type(e).__name__}: {str(e)[:80]}); "
                            f"run relabel verify, then relabel generate {named('repair', True)}") from None

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
                            f"run relabel verify, then relabel generate {named('repair', True)}") from None
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
                sel = (sh.vb, slice(sh.s0, sh.s1)) if name in ("status", DIGEST_ARRAY) else (
                    slice(sh.v0, sh.v1), slice(sh.s0, sh.s1))
                try:
                    np.asarray(self.group[name][sel])
                except Exception as e:
                    bad.append(ShardDamage(sh, key, f"unreadable ({type(e).__name__}: {str(e)[:80]}) in {sh.name}"))
            if not bad or bad[-1].shard != sh:
                problem = self.check_seal(sh)
                if problem:
                    bad.append(ShardDamage(sh, sh.name, problem))
        return bad
