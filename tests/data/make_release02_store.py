"""The label store under tests/data/release02: made once by relabel 0.2.0 (commit ca55fb8), kept as files.

    git worktree add /tmp/before ca55fb8   # then a package view of it: /tmp/beforepkg/relabel with
                                           # train/ and storage/ linked in (the installed layout)
    PYTHONPATH=/tmp/beforepkg python tests/data/make_release02_store.py tests/data/release02

Schema 3 (seals, no digests), made with the Pillow renderer from the images of tests/data/pillow12 (the
same files: only the labels are kept here); its labels come from the deterministic function teacher of
make_pillow12_store.py. tests/test_render_rules.py opens, verifies, repairs and trains it.
"""
from __future__ import annotations

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(dest: str) -> None:
    sys.path.insert(0, HERE)
    import PIL

    import relabel
    from make_pillow12_store import teacher
    from relabel.generate import GenerateConfig, generate  # the release's own module path

    shutil.rmtree(dest, ignore_errors=True)
    images = os.path.join(HERE, "pillow12", "images")
    generate(GenerateConfig(data=images, out=os.path.join(dest, "labels.zarr"), views=2, topk=2,
                            samples_per_shard=64, views_per_shard=2, workers=0, progress=False, renderer="pillow"),
             teacher=teacher())
    print(f"made by relabel {relabel.__version__} ({relabel.__file__}) under Pillow {PIL.__version__}: {dest}")


if __name__ == "__main__":
    main(sys.argv[1])
