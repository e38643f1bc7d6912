"""Seals: every written shard bound to its store's identity and its place (storage/FORMAT.md).

Checksums say a file is intact; a seal says it is this store's file for this place. A shard copied
from another store (an rsync of two machines' outputs into one folder) or moved within this one
is refused by readers, named by ``check_shards`` and recomputed by ``generate --repair``.
``SealedShards`` is a part of ``LabelStore`` (a mixin: it uses the store's group, header and files).
"""
from __future__ import annotations

import hashlib

import numpy as np
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .errors import StoreError, named
from .header import CLASS_ARRAY, SEAL_ARRAY, Shard


class SealedShards:
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
                                 f"{named('repair', True)} to recompute it")
            self._sealed.add((sh.vb, sh.sb, sh.done))

    def require_sealed(self) -> None:
        """Check the seal of every written shard this store holds, once, before a long read (a
        foreign shard in the last view block must not stop a run hours in)."""
        lo = self.held_views[0] // self.header.views_per_shard
        self._require_seals([sh for sh in self.shards() if sh.vb >= lo])

    def label_set_digest(self) -> str:
        """One sha256 for the whole label set: the identity, the view count, the keys (their order
        places every label) and every shard's seal. Published with the store; ``pull(expect=...)``
        refuses any other set. A read-only store cannot change while open: computed once."""
        if self.group.read_only and getattr(self, "_digest", None) is not None:
            return self._digest
        self.keys  # noqa: B018 - checked (count, order) before they are vouched for
        keys_sha = hashlib.sha256(np.asarray(self._array("keys")[:], dtype=np.uint8).tobytes()).hexdigest()
        d = hashlib.sha256(f"relabel-labels-1\0{self.header.identity}\0{self.header.views}\0{keys_sha}\0".encode())
        if self.header.schema_version >= 4:  # each key's class places its ground truth as the keys place labels
            classes = np.ascontiguousarray(np.asarray(self._array(CLASS_ARRAY)[:], dtype="<i4"))
            d.update(f"{hashlib.sha256(classes.tobytes()).hexdigest()}\0".encode())
        seals = np.asarray(self._array(SEAL_ARRAY)[:], dtype=np.uint8)
        done = self.done_views()
        for vb in range(done.shape[0]):
            for sb in range(done.shape[1]):
                d.update(f"{vb},{sb},{int(done[vb, sb])};".encode())
                d.update(seals[vb, sb].tobytes())
        if self.group.read_only:
            self._digest = d.hexdigest()
        return d.hexdigest()
