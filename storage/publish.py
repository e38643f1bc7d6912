"""Publishing and pulling a label store: upload of what changed, with its manifest; checked,
resumable download, optionally of a range of views.

Publishing compares the local files with the destination's manifest.json (and the sizes the
destination lists) and uploads only files whose sha256 or size differ, then writes manifest.json
last; files the old manifest listed and the new one does not are deleted. The layout of a published
destination and the manifest are storage/manifest.py; the transports, storage/remotes.py.

Pulling checks every file it downloads against the manifest (sha256 and size; a download that runs
past its listed size is cut there) and stops at the first mismatch with one line naming the file.
A pull is resumable: before it changes anything in DEST it writes ``.relabel-pull.json`` (the
source; storage/pull_marker.py), and it keeps the store's root ``zarr.json`` aside
(``.relabel-pull.zarr.json``) until every other file is in and checked, so a copy cut short is no
zarr group: nothing can open half a pull as a store. Running the same pull again recognizes its own
marker, keeps every file whose sha256 matches, fetches the rest, and only then puts ``zarr.json`` in
place, writes ``manifest.json`` and removes the marker. A finished pull (``manifest.json``, no
marker) can be pulled into again. ``views=(a, b)`` fetches only the view blocks that hold views
[a, b) (the store files ``storage.store.view_block_of`` places in those blocks) and rewrites the
pulled copy so it opens consistently (``storage.store.trim_views``): the header's ``views`` becomes
b, the label arrays are resized to b views (``done`` and a per-view-block ``status`` to b's
blocks), ``done`` is clipped to the views present, and ``attrs["relabel_pull"]`` records the source
and range. View blocks below a's block are not fetched and stay pending (absent) in the copy.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import ConfigError, StoreError, UserError, named
from .hashing import sha256_bytes, sha256_file
from .manifest import MANIFEST_NAME, SHARDS_DIR, build_manifest, check_relpath, dump_manifest, is_int, parse_manifest
from .paths import is_inside
from .pull_marker import PULL_MARKER, PULL_ROOT_META, unfinished_pull
from .remotes import Remote, open_remote, remote_error
from .store import LabelStore, trim_views, view_block_of


# --------------------------------------------------------------------------- publish
@dataclass
class PublishResult:
    dest: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    total_bytes: int = 0
    digest: str | None = None  # the label-set digest (``LabelStore.label_set_digest``) a puller can pin


def publish_files(dest: str, files: dict[str, str | bytes], store_header: dict, shards: str | None = None,
                  message: str = "relabel publish", private: bool = False, jobs: int = 8,
                  expected: dict[str, str] | None = None) -> PublishResult:
    """Upload ``files`` ({relative path: local path or bytes}) + a manifest to ``dest``, skipping
    those whose sha256 and size match the destination's manifest. ``expected``: sha256s some files
    must have (a shard index's), checked while hashing."""
    remote = open_remote(dest, write=True)
    entries: dict[str, tuple[int, str]] = {}
    for rel, src in sorted(files.items()):
        check_relpath(rel, "publish")
        entries[rel] = sha256_bytes(src) if isinstance(src, bytes) else sha256_file(src)
        if expected and rel in expected and entries[rel][1] != expected[rel]:
            raise StoreError(f"{src}: sha256 differs from its index.json; the file changed after export, export again")
    manifest = build_manifest(entries, store_header, shards)
    mbytes = dump_manifest(manifest)
    remote.prepare(private=private)
    old_raw = remote.read(MANIFEST_NAME)
    old = parse_manifest(old_raw, dest)["files"] if old_raw is not None else {}
    sizes = remote.sizes() if old else {}
    res = PublishResult(dest, total_bytes=sum(s for s, _ in entries.values()) + len(mbytes))
    puts: list[tuple[str, str | bytes]] = []
    for rel, (size, sha) in entries.items():
        o = old.get(rel)
        if o is not None and o["sha256"] == sha and o["size"] == size and sizes.get(rel) == size:
            res.unchanged.append(rel)
        else:
            puts.append((rel, files[rel]))
            res.uploaded.append(rel)
            res.uploaded_bytes += size
    res.deleted = sorted(set(old) - set(entries))
    if puts or res.deleted or old_raw != mbytes:
        puts.append((MANIFEST_NAME, mbytes))
        res.uploaded.append(MANIFEST_NAME)
        res.uploaded_bytes += len(mbytes)
    else:
        res.unchanged.append(MANIFEST_NAME)
    remote.upload(puts, res.deleted, message, jobs=jobs)
    return res


# --------------------------------------------------------------------------- pull
def parse_views(spec: str | None, total: int) -> tuple[int, int] | None:
    """'N' -> views [0, N); 'A:B' -> [A, B); None -> all."""
    if spec is None or str(spec).strip() == "":
        return None
    s = str(spec).strip()
    try:
        if ":" in s:
            a_s, b_s = s.split(":", 1)
            a, b = int(a_s or 0), int(b_s or total)
        else:
            a, b = 0, int(s)
    except ValueError:
        raise ConfigError(f"{named('views')} {spec!r}: give a count N (views 0..N-1) or a range A:B") from None
    if not 0 <= a < b:
        raise ConfigError(f"{named('views')} {spec!r}: need 0 <= A < B")
    if b > total:
        raise ConfigError(f"{named('views')} {spec!r}: the published store has only {total} views")
    return a, b


def view_blocks_for(views: tuple[int, int], views_per_shard: int) -> range:
    a, b = views
    return range(a // views_per_shard, -(-b // views_per_shard))


def wanted(rel: str, blocks: range | None, shards: bool) -> bool:
    """Whether a published file belongs in a pull of view blocks ``blocks`` (None: all)."""
    if not shards and rel.startswith(SHARDS_DIR + "/"):
        return False
    if blocks is None:
        return True
    vb = view_block_of(rel)
    return vb is None or vb in blocks


@dataclass
class PullResult:
    src: str
    dest: str
    fetched: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fetched_bytes: int = 0
    views: tuple[int, int] | None = None  # the views the copy holds (whole view blocks), None: all
    digest: str | None = None  # the published label set's digest (schema 3 and later)


def _download(remote: Remote, rel: str, dst: str, size: int, sha: str) -> int:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = dst + ".partial"
    h, n = hashlib.sha256(), 0
    try:
        with remote.open(rel) as f, open(tmp, "wb") as out:
            while n <= size:  # never past the listed size (+1 to see that there is more): /dev/zero ends here
                b = f.read(min(1 << 20, size + 1 - n))
                if not b:
                    break
                h.update(b)
                n += len(b)
                out.write(b)
    except UserError:
        _rm(tmp)
        raise
    except FileNotFoundError:
        _rm(tmp)
        raise StoreError(f"{remote.url}/{rel}: listed in manifest.json but missing at the source") from None
    except Exception as e:
        _rm(tmp)
        raise remote_error(remote.url, f"downloading {rel}", e) from None
    if n != size or h.hexdigest() != sha:
        _rm(tmp)
        got = f"more than {size}" if n > size else f"{n} of {size}"
        raise StoreError(f"{remote.url}/{rel}: sha256 mismatch (manifest {sha[:16]}..., got {h.hexdigest()[:16]}..., "
                         f"{got} bytes); the file was changed or damaged after publishing")
    os.replace(tmp, dst)
    return n


def _rm(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _same_header(root_meta: str, header: dict, src: str) -> None:
    """The manifest's copy of the store header (which sized the pull: views, view blocks) must be the
    fetched zarr.json's, field for field; an edited manifest is refused, naming the field."""
    try:
        with open(root_meta, "rb") as f:
            real = json.loads(f.read())["attributes"]["relabel"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StoreError(f"{src}: the published zarr.json holds no readable store header; ask the publisher to "
                         f"republish") from None
    if not isinstance(real, dict):
        raise StoreError(f"{src}: the published zarr.json's store header is not an object; ask the publisher to "
                         f"republish")
    for key in sorted(set(real) | set(header)):
        if real.get(key) != header.get(key):
            raise StoreError(f"{src}/{MANIFEST_NAME}: its copy of the store header says {key} = "
                             f"{str(header.get(key))[:40]!r} but the store's zarr.json says {str(real.get(key))[:40]!r}: "
                             f"the manifest was edited; nothing was kept as a store (ask the publisher to republish)")


def _pull_header(header, src: str, need_blocks: bool) -> tuple[int, int]:
    """(views, views_per_shard) of the published store, checked: they size what a pull fetches."""
    if not isinstance(header, dict):
        raise StoreError(f"{src}/{MANIFEST_NAME}: no store header ('store'); not a published label store")
    views, vps = header.get("views"), header.get("views_per_shard")
    if not is_int(views, 1):
        raise StoreError(f"{src}/{MANIFEST_NAME}: the store header's views is {str(views)[:20]!r}, not an integer >= 1")
    if need_blocks and not is_int(vps, 1):
        raise StoreError(f"{src}/{MANIFEST_NAME}: the store header's views_per_shard is {str(vps)[:20]!r}, "
                         f"not an integer >= 1")
    return views, vps


def _check_label_set(dest: str, src: str, blocks: range | None, expect: str | None) -> str | None:
    """Every fetched shard is this store's shard for its place, and the whole label set is the one
    expected. Raises before the pull is finished, so DEST stays an unfinished pull, never a store."""
    st = LabelStore._open(dest)
    if not st.sealed:
        if expect:
            raise StoreError(f"{src}: the published store has schema {st.header.schema_version}, which has no "
                             f"label-set digest; {named('expect')} cannot be checked (ask the publisher to regenerate "
                             f"and republish)")
        return None
    damaged = st.check_shards([sh for sh in st.shards() if blocks is None or sh.vb in blocks])
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise StoreError(f"{src}: {damaged[0]}{more}: the published files do not belong together although each "
                         f"matches manifest.json; ask the publisher to verify and republish")
    digest = st.label_set_digest()
    if expect and digest != expect.strip().lower():
        raise StoreError(f"{src}: label-set digest {digest} is not the expected {expect.strip().lower()}: these are "
                         f"other labels than the ones pinned (republished, or another store); nothing was kept as a store")
    return digest


def _write_atomic(path: str, data: bytes) -> None:
    with open(path + ".partial", "wb") as f:
        f.write(data)
    os.replace(path + ".partial", path)


def pull_files(src: str, dest: str, views: str | None = None, shards: bool | None = None,
               jobs: int = 8, expect: str | None = None) -> PullResult:
    """Download a published store into the local folder ``dest`` and check every file.

    Resumable: a pull cut short leaves its marker, and the same command again keeps every file
    whose sha256 matches and fetches the rest. Until it finishes the copy is not a zarr group.
    The manifest only says the files arrived as published; each fetched shard is also checked
    against its seal (its store and place), and ``expect`` (a label-set digest, as publish prints
    it) refuses any other label set.
    """
    if expect is not None and not re.fullmatch(r"[0-9a-f]{64}", expect.strip().lower()):
        raise ConfigError(f"{named('expect')} {expect!r}: give the 64-hex-digit label-set digest that "
                          f"'relabel publish' printed")
    if "://" in str(dest):
        raise StoreError(f"{dest}: pull writes to a local folder")
    dest = os.path.abspath(dest)
    if "://" not in str(src):
        src = os.path.abspath(src)
        if is_inside(dest, src) or is_inside(src, dest):
            raise StoreError(f"{dest}: DEST must not lie inside the source {src} or contain it; choose another DEST")
    remote = open_remote(src)
    raw = remote.read(MANIFEST_NAME)
    if raw is None:
        raise StoreError(f"{src}: no manifest.json here; pass a destination 'relabel publish' wrote to")
    man = parse_manifest(raw, src)
    marker = unfinished_pull(dest)
    if os.path.lexists(dest):
        if os.path.islink(dest) or not os.path.isdir(dest):
            raise StoreError(f"{dest}: exists and is not a folder; choose another DEST")
        if marker is not None and marker["source"] != src:
            raise StoreError(f"{dest}: holds an unfinished pull of {marker['source']}; rerun 'relabel pull "
                             f"{marker['source']} {dest}' to finish it, or choose another DEST")
        if marker is None and os.listdir(dest) and not os.path.isfile(os.path.join(dest, MANIFEST_NAME)):
            raise StoreError(f"{dest}: exists and is not an empty folder or an earlier pull; choose another DEST")
    header = man.get("store")
    total_views, _ = _pull_header(header, src, need_blocks=False)
    rng = parse_views(views, total_views)
    if rng is not None:  # whole view blocks: their files hold them all, and a shard's seal names its whole block
        vps = _pull_header(header, src, need_blocks=True)[1]
        rng = (rng[0] // vps * vps, min(total_views, -(-rng[1] // vps) * vps))
    if rng is not None and rng == (0, total_views):
        rng = None
    blocks = view_blocks_for(rng, _pull_header(header, src, need_blocks=True)[1]) if rng is not None else None
    with_shards = shards if shards is not None else rng is None

    # From here on DEST is a pull in progress: the marker first, then the old copy stops being a store.
    os.makedirs(dest, exist_ok=True)
    _write_atomic(os.path.join(dest, PULL_MARKER), (json.dumps({"source": src}) + "\n").encode())
    _rm(os.path.join(dest, MANIFEST_NAME))
    root_meta, stash = os.path.join(dest, "zarr.json"), os.path.join(dest, PULL_ROOT_META)
    if os.path.isfile(root_meta) and not os.path.islink(root_meta):
        os.replace(root_meta, stash)
    for dirpath, _, files in os.walk(dest):  # temp files of downloads a kill cut short
        for f in files:
            if f.endswith(".partial"):
                _rm(os.path.join(dirpath, f))

    res = PullResult(src, dest, views=rng)
    todo = []
    for rel, e in sorted(man["files"].items()):
        if not wanted(rel, blocks, with_shards):
            res.skipped.append(rel)
            continue
        dst = stash if rel == "zarr.json" else os.path.join(dest, *rel.split("/"))
        if os.path.isfile(dst) and not os.path.islink(dst) and sha256_file(dst) == (e["size"], e["sha256"]):
            res.reused.append(rel)
            continue
        todo.append((rel, dst, e["size"], e["sha256"]))
    errors: list[StoreError] = []

    def get(item):
        rel, dst, size, sha = item
        try:
            return rel, _download(remote, rel, dst, size, sha)
        except UserError as e:
            errors.append(e)
            return rel, -1
        except OSError as e:  # disk full, permissions in DEST
            errors.append(StoreError(f"{dst}: could not write ({e.strerror or e}); fix it and rerun to resume"))
            return rel, -1

    with ThreadPoolExecutor(max(1, jobs)) as ex:
        for rel, n in ex.map(get, todo):
            if n >= 0:
                res.fetched.append(rel)
                res.fetched_bytes += n
    if errors:
        errors.sort(key=str)
        more = f" (and {len(errors) - 1} more file(s))" if len(errors) > 1 else ""
        raise StoreError(f"{errors[0]}{more}; rerun the same pull to resume")
    if os.path.isfile(stash):
        _same_header(stash, header, src)  # what decided which files to fetch is the store's own header
        os.replace(stash, root_meta)
    res.digest = _check_label_set(dest, src, blocks, expect)
    if rng is not None:
        trim_views(dest, rng, src, total_views)
        res.views = rng  # whole view blocks: what the copy holds can start below A and end past B
    _write_atomic(os.path.join(dest, MANIFEST_NAME), raw)
    _rm(os.path.join(dest, PULL_MARKER))
    return res


__all__ = ["PublishResult", "publish_files", "parse_views", "view_blocks_for", "wanted", "PullResult", "pull_files"]
