"""Key rules: how a sample's name in one copy of the images becomes the key its labels are stored by.

A label set made from one copy of a dataset must replay on every other copy (a folder tree, timm's
webdataset tars, Hugging Face parquet), so keys, view seeds, mix groups and the fingerprint all use
the key a rule gives, never a copy's own layout:

- ``path``: the name as the copy gives it (an ImageFolder's path without extension, a tar's
  ``__key__``, a parquet row's ``image.path`` without extension). The rule of stores made before
  key rules existed; it matches only copies laid out alike.
- ``stem``: the file name without folders and extension. Two equal stems are refused, naming both.
- ``imagenet``: every common ImageNet naming to one key, and every class to its WordNet synset:
  ``n01440764/n01440764_10026.JPEG`` (folders), ``n01440764_10026`` (webdataset),
  ``n01440764_10026_n01440764.JPEG`` (Hugging Face) -> ``n01440764_10026``;
  ``ILSVRC2012_val_00000001.JPEG`` and ``ILSVRC2012_val_00000001_n01751748.JPEG`` ->
  ``ILSVRC2012_val_00000001``. Classes are matched by synset (from the name, the class folder, or an
  index in ImageNet-1k's sorted synset order), never by display names.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache

from .errors import SourceError

KEY_RULES = ("path", "stem", "imagenet")
DEFAULT_KEY_RULE = "path"

_SYNSET = re.compile(r"n[0-9]{8}")
_TRAIN = re.compile(r"(n[0-9]{8})_([0-9]+)(?:_(n[0-9]{8}))?")
_VAL = re.compile(r"(ILSVRC2012_(?:val|test)_[0-9]{8})(?:_(n[0-9]{8}))?")


@lru_cache(maxsize=1)
def imagenet1k_synsets() -> tuple[str, ...]:
    """ImageNet-1k's classes in their standard order (sorted WordNet ids: n01440764 is 0), as the
    integer labels of timm's webdataset tars and of Hugging Face's ``ILSVRC/imagenet-1k`` count them."""
    with open(os.path.join(os.path.dirname(__file__), "imagenet1k_synsets.txt"), encoding="ascii") as f:
        return tuple(line.strip() for line in f if line.strip())


def is_synset(name: str) -> bool:
    return _SYNSET.fullmatch(name) is not None


def _base(name: str) -> str:
    """The last path component of a copy's own key (its extension already dropped by the copy)."""
    return name.replace("\\", "/").rpartition("/")[2]


def rule_key(rule: str, name: str, where: str) -> tuple[str, str | None]:
    """(key, the synset the name itself names or None) of a sample whose key in its copy is ``name``
    (a relative path without extension, a webdataset key); ``where`` names the copy in messages."""
    if rule == "path":
        return name, None
    if rule == "stem":
        return _base(name), None
    if rule != "imagenet":
        raise SourceError(f"unknown key rule {rule!r}; use one of {', '.join(KEY_RULES)}")
    base = _base(name)
    m = _TRAIN.fullmatch(base)
    if m is not None:
        if m.group(3) is not None and m.group(3) != m.group(1):
            raise SourceError(f"{where}: {name!r} names two classes ({m.group(1)}, {m.group(3)}); fix its name")
        return f"{m.group(1)}_{m.group(2)}", m.group(1)
    m = _VAL.fullmatch(base)
    if m is not None:
        return m.group(1), m.group(2)
    raise SourceError(f"{where}: {name!r} is not an ImageNet file name (n01440764_10026, ILSVRC2012_val_00000001, "
                      f"with or without a _<synset> suffix); use the key rule 'path' or 'stem' for this data")


def keyed(entries: list[tuple[str, str, object]], rule: str, where: str,
          class_of_index: dict[str, str] | None = None) -> tuple[list[str], list[str], list[object]]:
    """Apply a key rule to a copy's samples: ``entries`` = (name in the copy, class name in the copy,
    how to read it). Returns (keys sorted, class name per key, how to read each), refusing two
    samples with one key (naming both).

    Under ``imagenet`` a sample's class is its synset: the one its name carries, else its class
    name when that is a synset, else ``class_of_index[class name]`` (``imagenet_index_classes``: a
    copy whose classes are indices or display names in ImageNet-1k's order, as the webdataset
    ``.cls`` and Hugging Face ``label`` columns are); a name and a class that disagree are refused.
    """
    rows: list[tuple[str, str, object, str]] = []
    for name, cls, loc in entries:
        key, synset = rule_key(rule, name, where)
        if rule == "imagenet":
            own = cls if is_synset(cls) else (class_of_index or {}).get(cls)
            if synset is not None and own is not None and synset != own:
                raise SourceError(f"{where}: {name!r} names class {synset} but the copy files it under {own}; "
                                  f"fix the name or its class")
            if synset is None and own is None:
                raise SourceError(f"{where}: {name!r} carries no ImageNet class and its class {cls!r} is no synset; "
                                  f"the key rule 'imagenet' needs synsets (class folders named n01440764, ...)")
            cls = synset or own
        shown = (loc if isinstance(loc, str) else getattr(loc, "name", None)  # the file (or tar member) itself
                 or f"row {loc} ({name})")  # a parquet row
        rows.append((key, cls, loc, shown))
    rows.sort(key=lambda r: r[0])
    for a, b in zip(rows, rows[1:]):
        if a[0] == b[0]:
            raise SourceError(f"{where}: two samples have the key {a[0]!r} under the key rule {rule!r} ({a[3]}, "
                              f"{b[3]}); keep one, or use another key rule")
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def imagenet_index_classes(class_names: list[str]) -> dict[str, str] | None:
    """A copy's class names that are ImageNet-1k indices ("0".."999", a webdataset without a class
    list) or its 1000 display names in synset order (Hugging Face's ClassLabel): name -> synset."""
    syn = imagenet1k_synsets()
    if all(c.isdigit() and int(c) < len(syn) for c in class_names):
        return {c: syn[int(c)] for c in class_names}
    if len(class_names) == len(syn):
        return dict(zip(class_names, syn))
    return None
