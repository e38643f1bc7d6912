"""The small label store under tests/data/pillow12: made once under Pillow 12.3, kept as files.

    PYTHONPATH=/tmp/pil/12.3.0 python tests/data/make_pillow12_store.py tests/data/pillow12

Twelve images (two of them taller than 100:1, two where Pillow 13 resizes vertically first and 12.3
does not), their labels from a deterministic function teacher (``teacher()``, also what the tests
verify with). tests/test_render_rules.py trains and verifies it under the installed Pillow, with both
renderers, and without ``allow_pixel_drift``.
"""
from __future__ import annotations

import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = [(90, 70), (70, 90), (40, 160), (30, 200), (3, 400), (2, 260), (120, 40), (64, 64), (50, 120), (33, 20),
         (20, 33), (45, 300)]
CLASSES = ("ant", "bee", "cat")


def teacher():
    """Logits from 4x4-pooled pixels and fixed weights: the same numbers wherever it runs (CPU, fp32)."""
    import torch

    from relabel.teacher import FunctionTeacher

    g = torch.Generator().manual_seed(12)
    w = torch.randn(3 * 16, len(CLASSES), generator=g)

    def fn(pixels):
        x = torch.nn.functional.adaptive_avg_pool2d(pixels.float() / 255, 4).flatten(1)
        return 4 * (x - 0.5) @ w

    return FunctionTeacher(fn, num_classes=len(CLASSES), name="pooled-linear-v1", input_size=32)


def write_images(folder: str) -> None:
    from PIL import Image

    for i, (w, h) in enumerate(SIZES):
        c = CLASSES[i % len(CLASSES)]
        y, x = np.mgrid[0:h, 0:w].astype(np.int64)
        arr = np.stack([(x * (31 + i) + y * 7) % 256, (x * y + 5 * i) % 251, ((x - y) * (3 + i)) % 256], -1)
        os.makedirs(os.path.join(folder, c), exist_ok=True)
        Image.fromarray(arr.astype(np.uint8)).save(os.path.join(folder, c, f"{c}_{i:02d}.png"))


def main(dest: str) -> None:
    sys.path.insert(0, ROOT)
    import PIL

    from relabel.stages.generate import GenerateConfig, generate

    shutil.rmtree(dest, ignore_errors=True)
    write_images(os.path.join(dest, "images"))
    generate(GenerateConfig(data=os.path.join(dest, "images"), out=os.path.join(dest, "labels.zarr"), views=2, topk=2,
                            samples_per_shard=64, views_per_shard=2, workers=0, progress=False, renderer="pillow"),
             teacher=teacher())
    print(f"made under Pillow {PIL.__version__}: {dest}")


if __name__ == "__main__":
    main(sys.argv[1])
