"""Publishing and pulling a label store: manifest of every file (size + sha256), upload of what
changed, checked download, and partial pulls of a range of views.

Layout of a published destination (a local folder, any fsspec URL, or ``hf://datasets/ORG/NAME``):

- the label store's own files at the root (``zarr.json``, ``topk_index/...``, ...), so
  ``LabelStore.open(DEST)`` works on the destination itself;
- ``webdataset/`` (optional): an export made by ``relabel export`` (``index.json`` + tars);
- ``README.md``: the dataset card;
- ``manifest.json``: ``{"format": "relabel-manifest", "version": 1, "files": {path: {"size", "sha256"}},
  "store": <store header>, "shards": <webdataset folder or null>}``, every file but itself, sorted.

Publishing compares the local files with the destination's manifest.json (and the sizes the
destination lists) and uploads only files whose sha256 or size differ, then writes manifest.json
last; files the old manifest listed and the new one does not are deleted. Symlinks are never
followed: a store or shard folder holding one is refused.

Pulling checks every file it downloads against the manifest (sha256 and size; a download that runs
past its listed size is cut there) and stops at the first mismatch with one line naming the file.
A pull is resumable: before it changes anything in DEST it writes ``.relabel-pull.json`` (the
source), and it keeps the store's root ``zarr.json`` aside (``.relabel-pull.zarr.json``) until every
other file is in and checked, so a copy cut short is no zarr group: nothing can open half a pull as a
store. Running the same pull again recognizes its own marker, keeps every file whose sha256
matches, fetches the rest, and only then puts ``zarr.json`` in place, writes ``manifest.json`` and
removes the marker. A finished pull (``manifest.json``, no marker) can be pulled into again. ``views=(a, b)`` fetches only the view blocks that
hold views [a, b) (label shard files ``topk_index|topk_logp/c/<view_block>/<sample_block>/0`` and
the matching ``done/c/<view_block>/<sample_block>`` and, schema 2, ``status/c/<view_block>/<sample_block>``
chunks) and rewrites the pulled copy so it opens consistently: the header's ``views`` becomes b, the
label arrays are resized to b views (``done`` and a per-view-block ``status`` to b's blocks),
``done`` is clipped to the views present, and ``attrs["relabel_pull"]`` records the source and
range. View blocks below a's block are not fetched and stay pending (absent) in the copy.

Remote access goes through fsspec (``s3://`` uses s3fs: set AWS_ENDPOINT_URL or
FSSPEC_S3_ENDPOINT_URL for a non-AWS endpoint, plus the usual AWS credentials) and, to write to the
Hugging Face Hub, ``huggingface_hub.HfApi`` (one commit per publish; token from HF_TOKEN or
``huggingface-cli login``). Reading ``hf://`` goes through huggingface_hub's fsspec filesystem.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import UserError
from .paths import check_regular, is_inside, read_regular

MANIFEST_NAME = "manifest.json"
PULL_MARKER = ".relabel-pull.json"  # present while a pull into this folder is unfinished
PULL_ROOT_META = ".relabel-pull.zarr.json"  # the store's zarr.json, kept aside until the pull is done
MAX_MANIFEST_BYTES = 64 << 20
CARD_NAME = "README.md"
SHARDS_DIR = "webdataset"
MANIFEST_FORMAT = "relabel-manifest"
MANIFEST_VERSION = 1
# Files of one view block: label shards, its done chunk and (schema 2) its status chunk.
_LABEL_BLOCK = re.compile(r"(topk_index|topk_logp)/c/(\d+)/\d+/\d+|(?:done|status)/c/(\d+)/\d+")


# --------------------------------------------------------------------------- local files
def sha256_file(path: str) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
            n += len(b)
    return n, h.hexdigest()


def sha256_bytes(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def check_relpath(rel: str, where: str = "manifest") -> str:
    """A manifest path must stay inside its root: relative, '/'-separated, no '..', no empty parts."""
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or ":" in parts[0] or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 32 for c in rel)):
        raise UserError(f"{where}: unsafe file name {rel!r}; refusing it")
    return rel


def local_files(root: str, prefix: str = "", what: str = "store") -> dict[str, str]:
    """Every regular file under ``root`` as {prefix + relative path: absolute path}.

    Symlinks are never followed: one anywhere under root (file or folder, pointing in or out) is
    refused with a message naming it, as are sockets, fifos and devices.
    """
    root = os.path.abspath(root)
    if os.path.islink(root):
        raise UserError(f"{root}: the {what} folder is itself a symlink; pass the real folder")
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root).replace(os.sep, "/")
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(p)
                inside = target == root or target.startswith(root + os.sep)
                where = "inside" if inside else "outside"
                raise UserError(f"{p}: symlink to {os.readlink(p)!r} ({where} the {what}); relabel never follows "
                                f"symlinks when publishing: replace it with the real file or remove it")
            if stat.S_ISREG(st.st_mode):
                out[prefix + check_relpath(rel, root)] = p
            elif not stat.S_ISDIR(st.st_mode):
                raise UserError(f"{p}: not a regular file; remove it from the {what} before publishing")
        dirnames.sort()
    return out


# --------------------------------------------------------------------------- manifest
def build_manifest(entries: dict[str, tuple[int, str]], store_header: dict, shards: str | None) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "files": {rel: {"size": size, "sha256": sha} for rel, (size, sha) in sorted(entries.items())},
        "store": store_header,
        "shards": shards,
    }


def dump_manifest(m: dict) -> bytes:
    return (json.dumps(m, indent=1, sort_keys=True) + "\n").encode()


def _is_int(v, lo: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def parse_manifest(data: bytes, where: str) -> dict:
    """A manifest from others: JSON, the relabel format, and every field checked for type and range."""
    try:
        m = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: manifest.json is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("files"), dict):
        raise UserError(f"{where}: manifest.json is not a relabel manifest")
    if not _is_int(m.get("version"), 1):
        raise UserError(f"{where}: manifest.json has version {str(m.get('version'))[:20]!r}, not a positive integer")
    if m["version"] > MANIFEST_VERSION:
        raise UserError(f"{where}: manifest version {m['version']} is newer than this relabel understands; upgrade")
    if not isinstance(m.get("store"), (dict, type(None))) or not isinstance(m.get("shards"), (str, type(None))):
        raise UserError(f"{where}/{MANIFEST_NAME}: 'store' must be an object and 'shards' a folder name or null")
    for rel, e in m["files"].items():
        check_relpath(rel, f"{where}/{MANIFEST_NAME}")
        if (not isinstance(e, dict) or not _is_int(e.get("size"))
                or not re.fullmatch(r"[0-9a-f]{64}", str(e.get("sha256")))):
            raise UserError(f"{where}/{MANIFEST_NAME}: entry {rel!r} lacks a size (an integer >= 0) or a sha256")
    return m


# --------------------------------------------------------------------------- destinations
def _err(url: str, what: str, e: Exception) -> UserError:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return UserError(f"{url}: {what} failed ({type(e).__name__}{': ' + msg[:200] if msg else ''})")


class Remote:
    """Where a published store lives. Paths are relative to its root, '/'-separated."""

    url: str

    def sizes(self) -> dict[str, int]:
        raise NotImplementedError

    def read(self, rel: str, cap: int = MAX_MANIFEST_BYTES) -> bytes | None:
        """The whole file (None if absent); more than ``cap`` bytes is a UserError, not an allocation."""
        raise NotImplementedError

    def open(self, rel: str):
        raise NotImplementedError

    def prepare(self, private: bool = False) -> None:
        pass

    def upload(self, puts: list[tuple[str, str | bytes]], deletes: list[str], message: str, jobs: int = 8) -> None:
        raise NotImplementedError


class FsspecRemote(Remote):
    """A local folder or any fsspec URL (s3://, gs://, memory://, file://, hf:// for reading)."""

    def __init__(self, url: str):
        import fsspec

        self.url = url
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except Exception as e:  # unknown protocol, missing driver, bad options
            raise _err(url, "opening the destination", e) from None
        self.root = root.rstrip("/")
        protocol = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.local = "file" in protocol or "local" in protocol

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def sizes(self) -> dict[str, int]:
        try:
            self.fs.invalidate_cache()
            found = self.fs.find(self.root, detail=True) if self.root else self.fs.find("", detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:
            raise _err(self.url, "listing the destination", e) from None
        n = len(self.root) + 1
        out = {}
        for p, info in found.items():
            p = p.rstrip("/")
            if p.startswith(self.root + "/") and info.get("type", "file") == "file":
                out[p[n:]] = int(info.get("size") or 0)
        return out

    def read(self, rel: str, cap: int = MAX_MANIFEST_BYTES) -> bytes | None:
        try:
            if self.local:
                return read_regular(self._path(rel), cap, f"a {rel}")
            with self.fs.open(self._path(rel), "rb") as f:
                data = f.read(cap + 1)
        except FileNotFoundError:
            return None
        except UserError:
            raise
        except Exception as e:
            raise _err(self.url, f"reading {rel}", e) from None
        if len(data) > cap:
            raise UserError(f"{self.url}/{rel}: larger than {cap >> 20} MiB; not a file relabel publish wrote")
        return data

    def open(self, rel: str):
        if self.local:  # a FIFO would block the open
            check_regular(self._path(rel), f"a published file ({rel})")
        return self.fs.open(self._path(rel), "rb")

    def prepare(self, private: bool = False) -> None:
        if self.local:
            try:
                os.makedirs(self.root, exist_ok=True)
            except OSError as e:
                raise _err(self.url, "creating the destination folder", e) from None

    def _put(self, rel: str, src: str | bytes) -> None:
        dst = self._path(rel)
        if self.local:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            tmp = dst + ".partial"
            if isinstance(src, bytes):
                with open(tmp, "wb") as f:
                    f.write(src)
            else:
                import shutil

                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        elif isinstance(src, bytes):
            self.fs.pipe_file(dst, src)
        else:
            self.fs.put_file(src, dst)

    def upload(self, puts, deletes, message, jobs: int = 8) -> None:
        manifest = [(r, s) for r, s in puts if r == MANIFEST_NAME]
        others = [(r, s) for r, s in puts if r != MANIFEST_NAME]

        def put(item):
            rel, src = item
            try:
                self._put(rel, src)
            except Exception as e:
                raise _err(self.url, f"uploading {rel}", e) from None

        with ThreadPoolExecutor(max(1, jobs)) as ex:
            list(ex.map(put, others))
        for item in manifest:  # last: a publish cut short leaves the old manifest, so the next run redoes it
            put(item)
        for rel in deletes:
            try:
                self.fs.rm_file(self._path(rel))
            except FileNotFoundError:
                pass
            except Exception as e:
                raise _err(self.url, f"deleting stale {rel}", e) from None


_HF_RE = re.compile(r"hf://datasets/([^/@]+/[^/@]+)(?:@([^/]+))?(?:/(.*))?")


class HubRemote(Remote):
    """``hf://datasets/ORG/NAME[/folder]``: reads through huggingface_hub, writes one commit."""

    def __init__(self, url: str):
        m = _HF_RE.fullmatch(url.rstrip("/"))
        if not m:
            raise UserError(f"{url}: a Hugging Face destination is hf://datasets/ORG/NAME (labels are dataset repos)")
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise UserError("hf:// needs huggingface_hub: pip install huggingface_hub") from None
        self.url, self.repo_id, self.revision = url.rstrip("/"), m.group(1), m.group(2)
        self.sub = (m.group(3) or "").strip("/")
        self.api = HfApi()

    def _path(self, rel: str) -> str:
        return f"{self.sub}/{rel}" if self.sub else rel

    def sizes(self) -> dict[str, int]:
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
        from huggingface_hub.hf_api import RepoFile

        try:
            tree = self.api.list_repo_tree(self.repo_id, path_in_repo=self.sub or None, recursive=True,
                                           repo_type="dataset", revision=self.revision)
            files = [f for f in tree if isinstance(f, RepoFile)]
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
            return {}
        except Exception as e:
            raise _err(self.url, "listing the repository", e) from None
        n = len(self.sub) + 1 if self.sub else 0
        return {f.path[n:]: int(f.size) for f in files}

    def read(self, rel: str, cap: int = MAX_MANIFEST_BYTES) -> bytes | None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            p = hf_hub_download(self.repo_id, self._path(rel), repo_type="dataset", revision=self.revision)
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        except Exception as e:
            raise _err(self.url, f"reading {rel}", e) from None
        return read_regular(p, cap, f"a {rel}")

    def open(self, rel: str):
        from huggingface_hub import HfFileSystem

        rev = f"@{self.revision}" if self.revision else ""
        return HfFileSystem().open(f"datasets/{self.repo_id}{rev}/{self._path(rel)}", "rb")

    def prepare(self, private: bool = False) -> None:
        try:
            self.api.create_repo(self.repo_id, repo_type="dataset", exist_ok=True, private=private or None)
        except Exception as e:
            raise _err(self.url, "creating the dataset repository", e) from None

    def operations(self, puts, deletes) -> list:
        """The commit: one add per changed file (manifest.json among them), one delete per stale file."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops = [CommitOperationAdd(path_in_repo=self._path(rel), path_or_fileobj=src) for rel, src in puts]
        return ops + [CommitOperationDelete(path_in_repo=self._path(rel)) for rel in deletes]

    def upload(self, puts, deletes, message, jobs: int = 8) -> None:
        ops = self.operations(puts, deletes)
        if not ops:
            return
        try:
            self.api.create_commit(self.repo_id, operations=ops, commit_message=message, repo_type="dataset",
                                   revision=self.revision)
        except Exception as e:
            raise _err(self.url, "the upload commit", e) from None


def open_remote(url: str, write: bool = False) -> Remote:
    """hf://datasets/... -> HubRemote when writing (commits); everything else through fsspec."""
    url = str(url)
    if url.startswith("hf://"):
        if not url.startswith("hf://datasets/"):
            raise UserError(f"{url}: a Hugging Face destination is hf://datasets/ORG/NAME (labels are dataset repos)")
        return HubRemote(url) if write else FsspecRemote(url)
    return FsspecRemote(url)


# --------------------------------------------------------------------------- publish
@dataclass
class PublishResult:
    dest: str
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    total_bytes: int = 0


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
            raise UserError(f"{src}: sha256 differs from its index.json; the file changed after export, export again")
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
        raise UserError(f"--views {spec!r}: give a count N (views 0..N-1) or a range A:B") from None
    if not 0 <= a < b:
        raise UserError(f"--views {spec!r}: need 0 <= A < B")
    if b > total:
        raise UserError(f"--views {spec!r}: the published store has only {total} views")
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
    m = _LABEL_BLOCK.fullmatch(rel)
    if not m:
        return True
    vb = int(m.group(2) if m.group(2) is not None else m.group(3))
    return vb in blocks


@dataclass
class PullResult:
    src: str
    dest: str
    fetched: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    fetched_bytes: int = 0
    views: tuple[int, int] | None = None


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
        raise UserError(f"{remote.url}/{rel}: listed in manifest.json but missing at the source") from None
    except Exception as e:
        _rm(tmp)
        raise _err(remote.url, f"downloading {rel}", e) from None
    if n != size or h.hexdigest() != sha:
        _rm(tmp)
        got = f"more than {size}" if n > size else f"{n} of {size}"
        raise UserError(f"{remote.url}/{rel}: sha256 mismatch (manifest {sha[:16]}..., got {h.hexdigest()[:16]}..., "
                        f"{got} bytes); the file was changed or damaged after publishing")
    os.replace(tmp, dst)
    return n


def _rm(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def unfinished_pull(path: str) -> dict | None:
    """The marker of a pull into ``path`` that has not finished ({"source": ...}), or None."""
    p = os.path.join(str(path), PULL_MARKER)
    if "://" in str(path) or not os.path.lexists(p):
        return None
    try:
        d = json.loads(read_regular(p, 1 << 16, "a pull marker"))
    except (UserError, ValueError, OSError):
        d = None
    return d if isinstance(d, dict) and isinstance(d.get("source"), str) else {"source": "?"}


def refuse_unfinished_pull(path: str) -> None:
    """One line instead of reading half a pull (the store's zarr.json is not in place yet)."""
    m = unfinished_pull(path)
    if m is not None:
        raise UserError(f"{path}: an unfinished 'relabel pull' from {m['source']}; rerun "
                        f"'relabel pull {m['source']} {path}' to finish it")


def _pull_header(header, src: str, need_blocks: bool) -> tuple[int, int]:
    """(views, views_per_shard) of the published store, checked: they size what a pull fetches."""
    if not isinstance(header, dict):
        raise UserError(f"{src}/{MANIFEST_NAME}: no store header ('store'); not a published label store")
    views, vps = header.get("views"), header.get("views_per_shard")
    if not _is_int(views, 1):
        raise UserError(f"{src}/{MANIFEST_NAME}: the store header's views is {str(views)[:20]!r}, not an integer >= 1")
    if need_blocks and not _is_int(vps, 1):
        raise UserError(f"{src}/{MANIFEST_NAME}: the store header's views_per_shard is {str(vps)[:20]!r}, "
                        f"not an integer >= 1")
    return views, vps


def _write_atomic(path: str, data: bytes) -> None:
    with open(path + ".partial", "wb") as f:
        f.write(data)
    os.replace(path + ".partial", path)


def pull_files(src: str, dest: str, views: str | None = None, shards: bool | None = None,
               jobs: int = 8) -> PullResult:
    """Download a published store into the local folder ``dest`` and check every file.

    Resumable: a pull cut short leaves its marker, and the same command again keeps every file
    whose sha256 matches and fetches the rest. Until it finishes the copy is not a zarr group.
    """
    if "://" in str(dest):
        raise UserError(f"{dest}: pull writes to a local folder")
    dest = os.path.abspath(dest)
    if "://" not in str(src):
        src = os.path.abspath(src)
        if is_inside(dest, src) or is_inside(src, dest):
            raise UserError(f"{dest}: DEST must not lie inside the source {src} or contain it; choose another DEST")
    remote = open_remote(src)
    raw = remote.read(MANIFEST_NAME)
    if raw is None:
        raise UserError(f"{src}: no manifest.json here; pass a destination 'relabel publish' wrote to")
    man = parse_manifest(raw, src)
    marker = unfinished_pull(dest)
    if os.path.lexists(dest):
        if os.path.islink(dest) or not os.path.isdir(dest):
            raise UserError(f"{dest}: exists and is not a folder; choose another DEST")
        if marker is not None and marker["source"] != src:
            raise UserError(f"{dest}: holds an unfinished pull of {marker['source']}; rerun 'relabel pull "
                            f"{marker['source']} {dest}' to finish it, or choose another DEST")
        if marker is None and os.listdir(dest) and not os.path.isfile(os.path.join(dest, MANIFEST_NAME)):
            raise UserError(f"{dest}: exists and is not an empty folder or an earlier pull; choose another DEST")
    header = man.get("store")
    total_views, _ = _pull_header(header, src, need_blocks=False)
    rng = parse_views(views, total_views)
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
    errors: list[UserError] = []

    def get(item):
        rel, dst, size, sha = item
        try:
            return rel, _download(remote, rel, dst, size, sha)
        except UserError as e:
            errors.append(e)
            return rel, -1
        except OSError as e:  # disk full, permissions in DEST
            errors.append(UserError(f"{dst}: could not write ({e.strerror or e}); fix it and rerun to resume"))
            return rel, -1

    with ThreadPoolExecutor(max(1, jobs)) as ex:
        for rel, n in ex.map(get, todo):
            if n >= 0:
                res.fetched.append(rel)
                res.fetched_bytes += n
    if errors:
        errors.sort(key=str)
        more = f" (and {len(errors) - 1} more file(s))" if len(errors) > 1 else ""
        raise UserError(f"{errors[0]}{more}; rerun the same pull to resume")
    if os.path.isfile(stash):
        os.replace(stash, root_meta)
    if rng is not None:
        trim_views(dest, rng, src, total_views)
    _write_atomic(os.path.join(dest, MANIFEST_NAME), raw)
    _rm(os.path.join(dest, PULL_MARKER))
    return res


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
    import numpy as np
    import zarr

    a, b = views
    g = zarr.open_group(path, mode="r+", zarr_format=3)
    h = dict(g.attrs["relabel"])
    vps = int(h["views_per_shard"])
    for name in ("topk_index", "topk_logp"):
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
    h["views"] = b
    g.attrs["relabel"] = h
    g.attrs["relabel_pull"] = {"source": source, "views": [a, b], "published_views": total_views}
