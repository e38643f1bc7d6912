"""The manifest of a published label store: every file's size and sha256, plus the store header.

Layout of a published destination (a local folder, any fsspec URL, or ``hf://datasets/ORG/NAME``):

- the label store's own files at the root (``zarr.json``, ``topk_index/...``, ...), so
  ``LabelStore.open(DEST)`` works on the destination itself;
- ``webdataset/`` (optional): an export made by ``relabel export`` (``index.json`` + tars);
- ``README.md``: the dataset card;
- ``manifest.json``: ``{"format": "relabel-manifest", "version": 1, "files": {path: {"size", "sha256"}},
  "store": <store header>, "shards": <webdataset folder or null>}``, every file but itself, sorted.

Manifest paths are relative, '/'-separated and stay inside their root; a manifest from others is
checked field by field before anything uses it. Symlinks are never followed: a store or shard
folder holding one is refused. Publishing and pulling are storage/publish.py; where the files live,
storage/remotes.py.
"""
from __future__ import annotations

import json
import os
import re
import stat

from .errors import StoreError

MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
CARD_NAME = "README.md"
SHARDS_DIR = "webdataset"
MANIFEST_FORMAT = "relabel-manifest"
MANIFEST_VERSION = 1


# --------------------------------------------------------------------------- local files
def check_relpath(rel: str, where: str = "manifest") -> str:
    """A manifest path must stay inside its root: relative, '/'-separated, no '..', no empty parts."""
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or ":" in parts[0] or any(p in ("", ".", "..") for p in parts)
            or any(ord(c) < 32 for c in rel)):
        raise StoreError(f"{where}: unsafe file name {rel!r}; refusing it")
    return rel


def local_files(root: str, prefix: str = "", what: str = "store") -> dict[str, str]:
    """Every regular file under ``root`` as {prefix + relative path: absolute path}.

    Symlinks are never followed: one anywhere under root (file or folder, pointing in or out) is
    refused with a message naming it, as are sockets, fifos and devices.
    """
    root = os.path.abspath(root)
    if os.path.islink(root):
        raise StoreError(f"{root}: the {what} folder is itself a symlink; pass the real folder")
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
                raise StoreError(f"{p}: symlink to {os.readlink(p)!r} ({where} the {what}); relabel never follows "
                                 f"symlinks when publishing: replace it with the real file or remove it")
            if stat.S_ISREG(st.st_mode):
                out[prefix + check_relpath(rel, root)] = p
            elif not stat.S_ISDIR(st.st_mode):
                raise StoreError(f"{p}: not a regular file; remove it from the {what} before publishing")
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


def is_int(v, lo: int = 0) -> bool:
    """An integer from JSON (never a bool) of at least ``lo``."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def parse_manifest(data: bytes, where: str) -> dict:
    """A manifest from others: JSON, the relabel format, and every field checked for type and range."""
    try:
        m = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{where}: manifest.json is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(m.get("files"), dict):
        raise StoreError(f"{where}: manifest.json is not a relabel manifest")
    if not is_int(m.get("version"), 1):
        raise StoreError(f"{where}: manifest.json has version {str(m.get('version'))[:20]!r}, not a positive integer")
    if m["version"] > MANIFEST_VERSION:
        raise StoreError(f"{where}: manifest version {m['version']} is newer than this relabel understands; upgrade")
    if not isinstance(m.get("store"), (dict, type(None))) or not isinstance(m.get("shards"), (str, type(None))):
        raise StoreError(f"{where}/{MANIFEST_NAME}: 'store' must be an object and 'shards' a folder name or null")
    for rel, e in m["files"].items():
        check_relpath(rel, f"{where}/{MANIFEST_NAME}")
        if (not isinstance(e, dict) or not is_int(e.get("size"))
                or not re.fullmatch(r"[0-9a-f]{64}", str(e.get("sha256")))):
            raise StoreError(f"{where}/{MANIFEST_NAME}: entry {rel!r} lacks a size (an integer >= 0) or a sha256")
    return m


__all__ = ["MANIFEST_NAME", "MAX_MANIFEST_BYTES", "CARD_NAME", "SHARDS_DIR", "MANIFEST_FORMAT", "MANIFEST_VERSION",
           "check_relpath", "local_files", "build_manifest", "dump_manifest", "is_int", "parse_manifest"]
