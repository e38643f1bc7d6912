"""What every image source is: a sorted list of (key, class index, bytes), its limits, and the dataset
fingerprint. The sources themselves (an ImageFolder tree, webdataset tars, Hugging Face parquet) are
``storage.sources`` and ``storage.parquet``; ``open_source`` picks one for a DATA argument.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .errors import SourceError
from .keys import DEFAULT_KEY_RULE, KEY_RULES, imagenet_index_classes, keyed

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# The extension-agnostic image member of relabel's own exports (storage/export_format.py, version 2).
TAR_IMAGE_MEMBER = "image"

# Bounds checked before anything is allocated: data from others is never trusted to be small.
MAX_IMAGE_BYTES = 256 << 20  # one image file or tar member
MAX_CLS_BYTES = 32  # a .cls member: an ASCII decimal class index
MAX_TEXT_BYTES = 64 << 20  # index.json, classes.txt, classes.json beside shards
MAX_CLASSES = 1 << 20  # class names in any source
MAX_UNNAMED_CLASSES = 1 << 16  # .cls values without a class list (each becomes a class name "0", "1", ...)


def fingerprint(keys: list[str], class_names: list[str], labels=None) -> str:
    """sha256 of the sorted keys and the class names (v1, ``labels`` None: stores of schema 3 and
    before), and of each key's class (v2: a copy with one image filed under another class differs)."""
    if labels is None:
        h = hashlib.sha256(b"relabel-fingerprint-v1\n")
        for name in class_names:
            h.update(name.encode() + b"\n")
        h.update(b"\0")
        for k in sorted(keys):
            h.update(k.encode() + b"\n")
        return h.hexdigest()
    h = hashlib.sha256(b"relabel-fingerprint-v2\n")
    for name in class_names:
        h.update(name.encode() + b"\n")
    h.update(b"\0")
    for k, c in sorted(zip(keys, (int(x) for x in labels))):
        h.update(f"{k}\t{c}\n".encode())
    return h.hexdigest()


def _utf8(name: str, where: str) -> str:
    """Keys are UTF-8 (fingerprints, the store's keys array): a name the OS gave us undecodable
    (surrogate-escaped bytes) is refused with its bytes shown, never a UnicodeEncodeError later."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        raise SourceError(f"{where}: the name {raw!r} is not valid UTF-8; rename it (sample keys and class "
                        f"names must be UTF-8)") from None
    return name


class ImageSource:
    """A sorted, indexable list of (key, class index, bytes)."""

    kind: str
    root: str
    keys: list[str]
    labels: np.ndarray
    class_names: list[str]
    key_rule: str = DEFAULT_KEY_RULE

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, i: int) -> bytes:
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """The fingerprint stores of the current schema record (keys, class names, each key's class)."""
        fp = getattr(self, "_fp", None)
        if fp is None:
            fp = self._fp = fingerprint(self.keys, self.class_names, self.labels)
        return fp

    def fingerprint_for(self, schema_version: int) -> str:
        """The fingerprint a store of ``schema_version`` records: keys and class names only before 4."""
        return self.fingerprint if schema_version >= 4 else fingerprint(self.keys, self.class_names)

    def index(self) -> dict[str, int]:
        """key -> position, built once."""
        idx = getattr(self, "_index", None)
        if idx is None:
            idx = self._index = {k: i for i, k in enumerate(self.keys)}
        return idx

    def describe(self) -> str:
        return f"{self.kind} {self.root} ({len(self)} images, {len(self.class_names)} classes)"

    def _keyed(self, entries: list[tuple[str, str, object]], copy_classes: list[str], rule: str) -> list[object]:
        """Set keys, labels and class names from the copy's (name, class name, locator) entries under
        ``rule`` (storage.keys); returns the locators in key order."""
        if rule not in KEY_RULES:
            raise SourceError(f"unknown key rule {rule!r}; use one of {', '.join(KEY_RULES)}")
        by_index = imagenet_index_classes(copy_classes) if rule == "imagenet" else None
        keys, classes, locs = keyed(entries, rule, self.root, by_index)
        names = sorted(set(classes)) if rule == "imagenet" else list(copy_classes)
        index = {n: i for i, n in enumerate(names)}
        self.keys, self.class_names, self.key_rule = keys, names, rule
        self.labels = np.asarray([index[c] for c in classes], dtype=np.int64)
        return locs
