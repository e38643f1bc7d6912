"""Which teacher class each dataset class is: the bridge between two class spaces.

A teacher trained on ImageNet-1k labelling an ImageNet-100 folder has 1000 outputs for 100 folders;
its index 7 is not folder 7. Without a map the two index spaces are silently confused, so a teacher
whose class count differs from the dataset's is refused unless a map is given.
"""
from __future__ import annotations

import json
import os
import unicodedata

from relabel.storage.errors import ConfigError, named

BUILTIN = ("imagenet1k",)
_MAX_BYTES = 64 << 20


def imagenet1k_synsets() -> list[str]:
    """The standard ImageNet-1k class order (sorted WordNet ids: n01440764 = 0, ...), from timm."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def load_class_map(spec: str) -> dict[str, int]:
    """``imagenet1k``, or a file: JSON ``{"folder name": teacher index}`` or lines ``name index``."""
    if spec in BUILTIN:
        return {name: i for i, name in enumerate(imagenet1k_synsets())}
    if not os.path.isfile(spec):
        raise ConfigError(f"{named('class_map')} {spec}: no such file; give a JSON object "
                        f"{{folder name: teacher class index}}, a text file of 'name index' lines, "
                        f"or one of: {', '.join(BUILTIN)}")
    if os.path.getsize(spec) > _MAX_BYTES:
        raise ConfigError(f"{named('class_map')} {spec}: larger than {_MAX_BYTES >> 20} MiB; not a class map")
    try:
        text = open(spec, encoding="utf-8").read()
    except UnicodeDecodeError:
        raise ConfigError(f"{named('class_map')} {spec}: not UTF-8 text") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    out: dict[str, int] = {}
    if isinstance(obj, dict):
        items = obj.items()
    elif obj is None:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise ConfigError(f"{named('class_map')} {spec}: line {n} is not 'name index'")
            items.append((parts[0].strip(), parts[1]))
    else:
        raise ConfigError(f"{named('class_map')} {spec}: JSON must be an object {{folder name: teacher class index}}")
    for name, idx in items:
        try:
            i = int(idx)
            if isinstance(idx, float) or str(idx).strip() != str(i):
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"{named('class_map')} {spec}: class {name!r} maps to {idx!r}, "
                            f"not a whole number") from None
        if name in out and out[name] != i:
            raise ConfigError(f"{named('class_map')} {spec}: class {name!r} is given twice")
        out[str(name)] = i
    return out


def resolve_class_map(spec: str | None, class_names: list[str], num_classes: int) -> list[int] | None:
    """Dataset class i -> teacher class; None when the teacher's classes are the dataset's."""
    if spec is None:
        if len(class_names) != num_classes:
            raise ConfigError(f"the teacher has {num_classes} classes but the dataset has {len(class_names)}: "
                            f"their indices mean different things; pass {named('class_map')} (a file mapping "
                            f"each folder name to the teacher's class index, or 'imagenet1k' for ImageNet "
                            f"synset folders)")
        return None
    mapping = load_class_map(spec)
    # Folder names and map entries may be spelled in different Unicode normal forms (macOS writes
    # 'café' decomposed, most editors composed): they name the same class, so they match in NFC.
    nfc = lambda t: unicodedata.normalize("NFC", t)  # noqa: E731
    folded: dict[str, int] = {}
    for name, i in mapping.items():
        if folded.setdefault(nfc(name), i) != i:
            raise ConfigError(f"{named('class_map')} {spec}: class {name!r} is given twice (spelled in two Unicode "
                              f"normal forms) with different indices")
    seen: dict[str, str] = {}
    for c in class_names:
        if seen.setdefault(nfc(c), c) != c:
            raise ConfigError(f"dataset classes {seen[nfc(c)]!r} and {c!r} differ only in Unicode normalization "
                              f"(NFC/NFD); rename one folder")
    mapping = {c: folded[nfc(c)] for c in class_names if nfc(c) in folded}
    missing = [c for c in class_names if c not in mapping]
    if missing:
        raise ConfigError(f"{named('class_map')} {spec}: no entry for dataset class {missing[0]!r} "
                        f"({len(missing)} of {len(class_names)} missing)")
    out = [mapping[c] for c in class_names]
    bad = [(c, i) for c, i in zip(class_names, out) if not 0 <= i < num_classes]
    if bad:
        raise ConfigError(f"{named('class_map')} {spec}: class {bad[0][0]!r} maps to {bad[0][1]}, "
                        f"outside the teacher's 0..{num_classes - 1}")
    if len(set(out)) != len(out):
        raise ConfigError(f"{named('class_map')} {spec}: two dataset classes map to the same teacher class")
    return out
