"""One label set for every copy of the images (issue 29): key rules and Hugging Face parquet.

A store made with ``--key-rule imagenet`` from an ImageNet-named folder trains, verifies and replays
the same bytes on three other copies of the same images: timm's webdataset tars, Hub-layout parquet,
and a folder with Hugging Face's file names.
"""
from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_inprocess as cli, save_teacher, write_image
from relabel.storage import SourceError, open_source

SYNSETS = ("n01440764", "n01443537", "n01484850")  # ImageNet-1k classes 0, 1, 2
GEN = ["--teacher", "test_resnet", "--views", "2", "--topk", "2", "--img-size", "32", "--samples-per-shard", "64",
       "--views-per-shard", "2", "--workers", "0", "--quiet"]


def _images(rng) -> list[tuple[str, str, bytes]]:
    """(synset, ImageNet file stem, JPEG bytes): 8 training images and 3 validation images per class."""
    out = []
    val = 1
    for ci, syn in enumerate(SYNSETS):
        for i in range(11):
            p = Path("/nonexistent")
            buf = io.BytesIO()
            from PIL import Image

            w, h = 40 + 4 * (i % 3), 30 + 6 * (i % 4)
            arr = np.clip(rng.normal(90 + 50 * ci, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(buf, "JPEG", quality=90)
            del p
            if i < 8:
                out.append((syn, f"{syn}_{1000 + i * 17}", buf.getvalue()))
            else:
                out.append((syn, f"ILSVRC2012_val_{val:08d}", buf.getvalue()))
                val += 1
    return out


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("portable")
    items = _images(np.random.default_rng(3))
    folder = root / "folder"  # ImageNet's own layout: synset folders, train and val file names
    for syn, stem, data in items:
        (folder / syn).mkdir(parents=True, exist_ok=True)
        (folder / syn / f"{stem}.JPEG").write_bytes(data)
    wds = root / "wds"  # timm's imagenet-1k-wds: keys without folders, .jpg + .cls (ImageNet-1k index), no class list
    wds.mkdir()
    for s in range(2):
        with tarfile.open(wds / f"imagenet1k-train-{s:04d}.tar", "w") as tf:
            for syn, stem, data in items[s::2]:
                for name, payload in ((f"{stem}.jpg", data), (f"{stem}.cls", str(SYNSETS.index(syn)).encode())):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(payload)
                    tf.addfile(ti, io.BytesIO(payload))
    hf = root / "hf"  # the Hub's parquet: image {bytes, path "<stem>_<synset>.JPEG"}, label with ClassLabel names
    import datasets

    names = [f"display name {i}" for i in range(1000)]  # display names in ImageNet-1k's order, not synsets
    rows = {"image": [{"bytes": d, "path": f"{stem}_{syn}.JPEG"} for syn, stem, d in items],
            "label": [SYNSETS.index(syn) for syn, _, _ in items]}
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}))
    (hf / "data").mkdir(parents=True)
    ds.to_parquet(str(hf / "data" / "train-00000-of-00001.parquet"))
    hfnames = root / "hfnames"  # a folder with Hugging Face's file names (validation with its _synset suffix)
    for syn, stem, data in items:
        (hfnames / syn).mkdir(parents=True, exist_ok=True)
        (hfnames / syn / f"{stem}_{syn}.JPEG").write_bytes(data)
    ckpt = save_teacher(root / "t.pth")
    return dict(root=root, folder=folder, wds=wds, hf=hf, hfnames=hfnames, ckpt=ckpt)


def test_every_copy_gives_the_same_keys_classes_and_fingerprint(copies):
    ref = open_source(copies["folder"], "imagenet")
    assert ref.class_names == list(SYNSETS) and "ILSVRC2012_val_00000001" in ref.keys
    for name in ("wds", "hf", "hfnames"):
        s = open_source(str(copies[name]), "imagenet")
        assert (s.keys, s.class_names, s.labels.tolist(), s.fingerprint) == (
            ref.keys, ref.class_names, ref.labels.tolist(), ref.fingerprint), name
        assert [s.read(i) for i in range(len(s))] == [ref.read(i) for i in range(len(ref))], name
    assert open_source(copies["folder"]).fingerprint != open_source(str(copies["wds"])).fingerprint  # path rule


def test_a_label_set_made_from_one_copy_trains_verifies_and_replays_on_every_copy(copies, tmp_path, capsys):
    import relabel

    store = tmp_path / "labels"
    r = cli(capsys, "generate", copies["folder"], "--out", store, "--teacher-checkpoint", copies["ckpt"],
            "--key-rule", "imagenet", *GEN)
    assert r.returncode == 0, r.stderr
    r = cli(capsys, "info", store)
    from relabel.views.rules import native_rule

    assert "imagenet" in r.stdout and f"render rule  resize {native_rule()}" in r.stdout, r.stdout
    r = cli(capsys, "publish", store, tmp_path / "pub")
    card = (tmp_path / "pub" / "README.md").read_text()
    assert "| key rule | `imagenet`" in card and "timm's webdataset tars" in card and "| render rule | resize `" in card
    ref = None
    for name in ("folder", "wds", "hf", "hfnames"):
        data = copies[name]
        r = cli(capsys, "verify", store, data, "--samples", "8", "--teacher-checkpoint", copies["ckpt"])
        assert r.returncode == 0 and "verify OK" in r.stdout, (name, r.stdout + r.stderr)
        r = cli(capsys, "train", data, "--labels", store, "--mode", "cached", "--out", tmp_path / f"run-{name}",
                "--student", "test_resnet", "--epochs", "1", "-b", "8", "--img-size", "32", "-j", "0", "--quiet")
        assert r.returncode == 0, (name, r.stderr)
        loader = relabel.ReplayLoader(str(data), str(store), batch_size=8, workers=0)
        got = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            got += [(b["pixels"].numpy().tobytes(), b["topk_index"].tolist(), b["topk_logp"].numpy().tobytes(),
                     b["y"].tolist()) for b in loader]
        if ref is None:
            ref = got
        assert got == ref, name  # byte-identical pixels and labels on every copy


def test_the_stem_rule_refuses_two_files_with_one_name(tmp_path):
    for c in ("a", "b"):
        write_image(tmp_path / "d" / c / "same.png", np.random.default_rng(0), 0)
    with pytest.raises(SourceError, match=r"two samples have the key 'same'.*a/same.png.*b/same.png"):
        open_source(tmp_path / "d", "stem")
    assert open_source(tmp_path / "d", "path").keys == ["a/same", "b/same"]


def test_the_imagenet_rule_refuses_names_it_cannot_place(tmp_path):
    write_image(tmp_path / "d" / "n01440764" / "holiday.png", np.random.default_rng(0), 0)
    with pytest.raises(SourceError, match="not an ImageNet file name"):
        open_source(tmp_path / "d", "imagenet")
    shutil.rmtree(tmp_path / "d")
    write_image(tmp_path / "d" / "n01440764" / "n01443537_5.png", np.random.default_rng(0), 0)
    with pytest.raises(SourceError, match="names class n01443537 but the copy files it under n01440764"):
        open_source(tmp_path / "d", "imagenet")


def _parquet(path: Path, rows: dict, features=None) -> Path:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


@pytest.mark.parametrize("case, needle", [
    ("no-image-column", "no 'image' column"),
    ("no-label-column", "no 'label' column"),
    ("label-outside", "label 7, outside the ClassLabel names"),
    ("truncated", "not readable as parquet"),
    ("not-parquet", "not readable as parquet"),
])
def test_bad_parquet_is_one_line_exit_2(copies, tmp_path, capsys, case, needle):
    import datasets

    good = {"image": [{"bytes": (copies["folder"] / SYNSETS[0]).glob("*.JPEG").__next__().read_bytes(),
                       "path": "n01440764_1.JPEG"}], "label": [0]}
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    f = tmp_path / "p" / "data" / "train-00000-of-00001.parquet"
    if case == "no-image-column":
        _parquet(f, {"picture": [b"x"], "label": [0]})
    elif case == "no-label-column":
        _parquet(f, {"image": good["image"]}, datasets.Features({"image": datasets.Image()}))
    elif case == "label-outside":
        _parquet(f, {**good, "label": [7]}, datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
        _parquet(f, {**good, "label": [7]}, None)
        import pyarrow.parquet as pq

        t = pq.read_table(f)
        meta = {b"huggingface": b'{"info": {"features": {"image": {"_type": "Image"}, "label": {"names": ["x", "y"], '
                                b'"_type": "ClassLabel"}}}}'}
        pq.write_table(t.replace_schema_metadata(meta), f)
    elif case == "truncated":
        _parquet(f, good, feats)
        f.write_bytes(f.read_bytes()[:100])
    else:
        f.parent.mkdir(parents=True)
        f.write_bytes(b"this is not a parquet file at all" * 10)
    r = cli(capsys, "generate", tmp_path / "p", "--out", tmp_path / "s", *GEN)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "s").exists()


def test_a_parquet_row_that_is_no_image_is_recorded_unreadable(copies, tmp_path, capsys):
    import datasets

    data = [p.read_bytes() for p in sorted((copies["folder"] / SYNSETS[0]).glob("*.JPEG"))][:4]
    rows = {"image": [{"bytes": d, "path": f"n01440764_{i}.JPEG"} for i, d in enumerate(data)]
            + [{"bytes": b"not an image", "path": "n01440764_99.JPEG"}], "label": [0] * 5}
    _parquet(tmp_path / "p" / "x.parquet", rows, datasets.Features({"image": datasets.Image(),
                                                                      "label": datasets.ClassLabel(names=["x"])}))
    r = cli(capsys, "generate", tmp_path / "p", "--out", tmp_path / "s", "--teacher-checkpoint", copies["ckpt"],
            "--class-map", _map(tmp_path), *GEN)
    assert r.returncode == 0 and "unreadable=1" in r.stderr, r.stderr


def _map(tmp_path: Path) -> Path:
    m = tmp_path / "map.json"
    m.write_text('{"x": 0}')
    return m


def test_a_parquet_file_rewritten_in_place_is_read_again(copies, tmp_path):
    """Hugging Face's cache keys a local file on its path and mtime: a file rewritten with other
    images and labels, its mtime put back, must not be read from the old copy."""
    import os

    import datasets

    data = [p.read_bytes() for p in sorted((copies["folder"] / SYNSETS[0]).glob("*.JPEG"))][:3]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    f = _parquet(tmp_path / "p" / "x.parquet", {"image": [{"bytes": d, "path": f"a_{i}.JPEG"} for i, d in
                                                         enumerate(data[:2])], "label": [0, 1]}, feats)
    before = os.stat(f).st_mtime_ns
    first = open_source(tmp_path / "p")
    assert first.labels.tolist() == [0, 1] and first.read(0) == data[0]
    _parquet(f, {"image": [{"bytes": d, "path": f"a_{i}.JPEG"} for i, d in enumerate(data[1:])],
                 "label": [1, 1]}, feats)
    os.utime(f, ns=(before, before))
    again = open_source(tmp_path / "p")
    assert again.labels.tolist() == [1, 1] and again.read(0) == data[1]
