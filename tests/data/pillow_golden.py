"""Golden renders made with real Pillow versions: what each resize rule's views look like, byte for byte.

Run once per supported Pillow (each in a folder of its own, e.g. ``pip install --no-deps --target
/tmp/pil/12.3.0 pillow==12.3.0``)::

    PYTHONPATH=/tmp/pil/10.4.0 python tests/data/pillow_golden.py render /tmp/golden
    PYTHONPATH=/tmp/pil/11.3.0 python tests/data/pillow_golden.py render /tmp/golden
    PYTHONPATH=/tmp/pil/12.3.0 python tests/data/pillow_golden.py render /tmp/golden
    PYTHONPATH=/tmp/pil/13.0.0 python tests/data/pillow_golden.py render /tmp/golden
    python tests/data/pillow_golden.py pack /tmp/golden tests/data/pillow_golden.npz

``render`` draws every case with the installed Pillow's own ``Image.resize`` (no rule emulation):
views of tall, wide and photo-sized images through relabel's whole view path (crop-resize, flip,
RandAugment, erase), each RandAugment op alone, and JPEG decodes. ``pack`` checks that versions of
one resize rule agree on everything and that all versions agree on the ops and the decodes, and
writes one array per (rule, view) and one hash per op and decode. tests/test_render_rules.py renders
the same cases on the installed Pillow by each rule and compares.
"""
from __future__ import annotations

import io
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pattern(w: int, h: int, k: int = 0):
    """A busy deterministic RGB image (arithmetic only: the same on every machine and numpy)."""
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    arr = np.stack([(x * (37 + k) + y * 11) % 256, (x * y + 3 * y + 7 * k) % 251, ((x - 2 * y) * (7 + k)) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8))


# (width, height) of the images whose views are drawn: photo sizes, tall and wide extremes, 100:1 and past it
SIZES = [(500, 375), (375, 500), (300, 600), (1, 1), (3000, 40), (40, 3000), (5, 600), (2, 240), (3, 300), (12, 48),
         (20, 33), (20, 32)]
RECIPES = {"bicubic": {}, "bilinear": {"interpolation": "bilinear"}, "lanczos": {"interpolation": "lanczos",
                                                                               "randaugment": None},
           "nearest": {"interpolation": "nearest"}}
OUT = 24  # small outputs: the files stay small, and small outputs shrink heights more (the rules' domain)
VIEWS = 3


def view_cases():
    """(name, image, recipe, key, view): the same list on every version."""
    from relabel.views import create_recipe
    from relabel.views.recipe import Recipe

    base = create_recipe("usi").to_dict()
    out = []
    for rname, over in RECIPES.items():
        recipe = Recipe.from_dict({**base, **over, "name": f"usi-{rname}", "erase_prob": 0.25})
        for i, (w, h) in enumerate(SIZES):
            for v in range(VIEWS):
                out.append((f"view/{rname}/{w}x{h}/{v}", pattern(w, h, i), recipe, f"img{i}", v))
    return out


def render_views(resize_rule=None) -> dict[str, np.ndarray]:
    """Every view case through relabel's Pillow view path; ``resize_rule`` None: the installed
    Pillow's own resize order (what a store made with it holds)."""
    from relabel.views import ViewRenderer

    out = {}
    for name, img, recipe, key, v in view_cases():
        if resize_rule is None:
            from relabel.views.pillow import render_view

            r = ViewRenderer(recipe, 0, OUT, "classic")
            out[name] = render_view(img, r.params(key, v, img), recipe, OUT, erase_seed=r.erase_seed(key, v))
        else:
            out[name] = ViewRenderer(recipe, 0, OUT, resize_rule).render(key, v, img)
    return out


def render_ops() -> dict[str, np.ndarray]:
    """Each RandAugment op alone on a fixed image at three magnitudes (both signs), with each affine filter."""
    from PIL import Image

    from relabel.views.randaug import NEGATING_OPS, SUPPORTED_OPS, OpParams, apply_ops

    img = pattern(48, 40, 3)
    out = {}
    for name in SUPPORTED_OPS:
        for m in (0.0, 4.0, 9.0):
            for neg in ((False, True) if name in NEGATING_OPS else (False,)):
                for resample in (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC):
                    x = apply_ops(img, (OpParams(name, m, neg),), fill=(124, 116, 104), resample=resample,
                                  magnitude_max=10.0)
                    out[f"op/{name}/{m}/{int(neg)}/{int(resample)}"] = np.asarray(x, np.uint8)
    return out


def jpegs() -> dict[str, bytes]:
    """A few JPEG encodings of one image (baseline 4:2:0, 4:4:4, progressive, grayscale), made once."""

    img = pattern(61, 47, 5)
    out = {}
    for name, kw in (("420", {"subsampling": 2}), ("444", {"subsampling": 0}), ("422", {"subsampling": 1}),
                     ("progressive", {"progressive": True}), ("gray", {})):
        b = io.BytesIO()
        (img.convert("L") if name == "gray" else img).save(b, "JPEG", quality=87, **kw)
        out[f"jpeg/{name}"] = b.getvalue()
    return out


def render_decodes(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    from relabel.views import decode_image

    return {k.replace("jpeg/", "decode/"): np.asarray(decode_image(v), np.uint8) for k, v in files.items()}


def sha(arr: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()


def main(argv: list[str]) -> None:
    sys.path.insert(0, ROOT)
    import PIL

    from relabel.views.rules import resize_rule_for_pillow

    if argv[0] == "render":
        folder = argv[1]
        os.makedirs(folder, exist_ok=True)
        src = os.path.join(folder, "jpegs.npz")
        if not os.path.exists(src):  # the JPEG files are made once and decoded by every version
            np.savez(src, **{k: np.frombuffer(v, np.uint8) for k, v in jpegs().items()})
        files = {k: np.load(src)[k].tobytes() for k in np.load(src).files}
        arrays = {**render_views(), **render_ops(), **render_decodes(files)}
        np.savez_compressed(os.path.join(folder, f"pillow-{PIL.__version__}.npz"), **arrays)
        print(f"Pillow {PIL.__version__} ({resize_rule_for_pillow(PIL.__version__)}): {len(arrays)} renders")
        return
    if argv[0] == "pack":
        folder, dest = argv[1], argv[2]
        by_version = {f[len("pillow-"):-len(".npz")]: dict(np.load(os.path.join(folder, f)))
                      for f in sorted(os.listdir(folder)) if f.startswith("pillow-")}
        packed, report, hashes = {}, {}, {}
        for version, arrays in by_version.items():
            rule = resize_rule_for_pillow(version)
            for name, arr in arrays.items():
                if not name.startswith("view/"):  # ops and decodes: one answer for every version, kept as a hash
                    h = sha(arr)
                    if hashes.setdefault(name, h) != h:
                        raise SystemExit(f"{name} differs between Pillow versions ({version})")
                    continue
                key = f"{rule}|{name}"
                if key in hashes and hashes[key] != sha(arr):
                    raise SystemExit(f"{name} differs between two versions of rule {rule} ({version})")
                hashes[key], packed[key] = sha(arr), arr
            report[version] = rule
        rules = sorted({r for r in report.values()})
        names = sorted({k.split("|", 1)[1] for k in packed})
        sensitive = [n for n in names if len({hashes[f"{r}|{n}"] for r in rules}) > 1]
        keep = set(sensitive[::max(1, len(sensitive) // 8)][:8])  # a few whole views per rule, as pixels
        packed = {k: v for k, v in packed.items() if k.split("|", 1)[1] in keep}
        jp = np.load(os.path.join(folder, "jpegs.npz"))
        packed.update({k: jp[k] for k in jp.files})
        packed["versions"] = np.frombuffer(json.dumps(report).encode(), np.uint8)
        packed["hashes"] = np.frombuffer(json.dumps(hashes, sort_keys=True).encode(), np.uint8)
        np.savez_compressed(dest, **packed)
        differ = {f"{a} vs {b}": sum(hashes[f"{a}|{n}"] != hashes[f"{b}|{n}"] for n in names)
                  for i, a in enumerate(rules) for b in rules[i + 1:]}
        print(f"versions {report}; {len(names)} views per rule, {len(keep)} kept as pixels; views that differ "
              f"between rules {differ}; ops and decodes equal on every version: {sum('|' not in k for k in hashes)}")
        return
    raise SystemExit("usage: pillow_golden.py render FOLDER | pack FOLDER DEST")


if __name__ == "__main__":
    main(sys.argv[1:])
