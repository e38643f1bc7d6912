"""Export, publish and pull: real stores, real tars, a real S3 API (moto's server on 127.0.0.1)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import folder_to_shards, make_imagefolder, run_cli, save_teacher

from relabel.storage import LabelStore, UserError


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A complete store: 24 images x 4 views, top-2, 2 view blocks of 2 views."""
    from relabel.stages.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("pub")
    data = make_imagefolder(root / "data" / "train")
    ckpt = save_teacher(root / "teacher.pth")
    out = root / "store"
    generate(GenerateConfig(data=str(data), out=str(out), teacher="test_resnet", teacher_checkpoint=str(ckpt), views=4,
                            topk=2, img_size=32, workers=0, samples_per_shard=64, views_per_shard=2, progress=False))
    store = LabelStore.open(out)
    views = [store.read_view(v) for v in range(store.header.views)]
    return {"root": root, "data": data, "store": out, "views": views, "keys": store.keys}


@pytest.fixture(scope="module")
def exported(built):
    out = built["root"] / "export"
    r = run_cli("export", built["store"], "--to", out, "--format", "webdataset", "--shard-size", 10, "-q")
    assert "B/sample" in r.stdout
    return out


def _assert_same_views(built, store: LabelStore, views=None):
    for v in views if views is not None else range(len(built["views"])):
        idx, lp = store.read_view(v)
        np.testing.assert_array_equal(idx, built["views"][v][0])
        np.testing.assert_array_equal(lp, built["views"][v][1])


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- export
def test_export_is_deterministic_and_indexed(built, exported):
    from relabel.storage.exported import read_exported, read_exported_labels

    again = built["root"] / "export_again"
    run_cli("export", built["store"], "--to", again, "--shard-size", 10, "-q")
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["digests.npy", "index.json", "sample_class.npy", "train-000000.tar", "train-000001.tar",
                     "train-000002.tar"]
    assert names == sorted(p.name for p in again.iterdir())
    for n in names:
        assert (exported / n).read_bytes() == (again / n).read_bytes(), n
    index = json.loads((exported / "index.json").read_text())
    assert [s["samples"] for s in index["shards"]] == [10, 10, 4]
    assert [s["first_position"] for s in index["shards"]] == [0, 10, 20]
    for s in index["shards"]:
        assert s["sha256"] == _sha(exported / s["name"]) and s["bytes"] == (exported / s["name"]).stat().st_size
    assert index["header"]["fingerprint"] == LabelStore.open(built["store"]).header.fingerprint
    assert index["class_names"] == ["ant", "bee", "cat"] and index["images"] is False

    # tar hygiene: one member per sample, GNU/USTAR headers (no PAX), mtime 0, root owner
    import tarfile

    with tarfile.open(exported / "train-000000.tar") as tf:
        members = tf.getmembers()
    assert len(members) == 10 and all(m.name.endswith(".labels.npy") for m in members)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "root" and not m.pax_headers for m in members)
    size = sum((exported / s["name"]).stat().st_size for s in index["shards"])
    per_sample = size / len(built["keys"])
    print(f"\nlabels-only export: {per_sample:.0f} bytes/sample (4 views, k=2)")
    assert per_sample <= 1024 + 3 * 1024 / len(built["keys"])  # one 512 B header + one data block

    header, keys, idx, lp = read_exported_labels(str(exported))
    assert keys == built["keys"] and header["views"] == 4
    assert idx.shape == (24, 4, 2) and lp.shape == (24, 4, 3) and lp.dtype == np.float32
    for v, (i, l) in enumerate(built["views"]):
        np.testing.assert_array_equal(idx[:, v], i)
        np.testing.assert_array_equal(lp[:, v], l)
    full = read_exported([str(exported / n) for n in names if n.endswith(".tar")])
    np.testing.assert_array_equal(full.positions, np.arange(24))
    assert (full.status == 1).all()


def test_export_loads_with_webdataset(built, exported):
    import webdataset as wds

    from relabel.storage.export_format import unpack_labels

    index = json.loads((exported / "index.json").read_text())
    urls = [str(exported / s["name"]) for s in index["shards"]]
    pos = {k: i for i, k in enumerate(built["keys"])}
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode():
        a = sample["labels.npy"]
        assert isinstance(a, np.ndarray) and a.shape == (5, 5) and a.dtype == np.uint16
        p, status, idx, lp = unpack_labels(a, index["topk"], index["encoding"])
        assert p == pos[sample["__key__"]] and status == 1
        for v, (i, l) in enumerate(built["views"]):
            np.testing.assert_array_equal(idx[v], i[p])
            np.testing.assert_array_equal(lp[v], l[p])
        seen.append(sample["__key__"])
    assert seen == built["keys"]


def test_export_loads_with_hf_datasets_offline(built, exported, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets

    from relabel.storage.export_format import unpack_labels

    index = json.loads((exported / "index.json").read_text())
    files = [str(exported / s["name"]) for s in index["shards"]]
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "c"))
    assert len(ds) == 24 and "labels.npy" in ds.features
    pos = {k: i for i, k in enumerate(built["keys"])}
    for row in ds:
        p, status, idx, lp = unpack_labels(np.asarray(row["labels.npy"]), index["topk"], index["encoding"])
        assert p == pos[row["__key__"]] and status == 1
        for v, (i, l) in enumerate(built["views"]):
            np.testing.assert_array_equal(idx[v], i[p])
            np.testing.assert_array_equal(lp[v], l[p])


def test_export_with_images(built):
    from relabel.storage.exported import iter_exported_samples

    out = built["root"] / "export_images"
    r = run_cli("export", built["store"], "--to", out, "--images", built["data"], "-q")
    print("\n" + r.stdout.strip())
    index = json.loads((out / "index.json").read_text())
    assert index["images"] is True and len(index["shards"]) == 1  # default shard size: the store's 64
    files = {p.relative_to(built["data"]).as_posix().rpartition(".")[0]: p
             for p in built["data"].rglob("*") if p.is_file()}
    classes = ["ant", "bee", "cat"]
    keys = []
    for s in iter_exported_samples(str(out), verify=True):
        src = files[s["__key__"]]
        assert s["image"] == src.read_bytes()
        assert s["image_ext"] == {"jpg": "jpg", "png": "png"}[src.suffix[1:]]  # sniffed from the bytes
        assert s["cls"] == classes.index(src.parent.name)
        p = s["position"]
        for v, (i, l) in enumerate(built["views"]):
            np.testing.assert_array_equal(s["index"][v], i[p])
            np.testing.assert_array_equal(s["logp"][v], l[p])
        keys.append(s["__key__"])
    assert keys == built["keys"]  # store order, aligned by key
    import webdataset as wds

    # one member name for every sample whatever its format (JPEG and PNG here): see test_hostile.py
    first = [s for s in wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False, empty_check=False)]
    assert all({"cls", "labels.npy", "image"} == set(x) - {"__key__", "__url__", "__local_path__"} for x in first)
    assert index["image_member"] == "image" and index["version"] == 2

    # the same images as webdataset shards give byte-identical export shards
    shards = folder_to_shards(built["data"], built["root"] / "image_shards", per_shard=7)
    out2 = built["root"] / "export_images_from_tars"
    run_cli("export", built["store"], "--to", out2, "--images", shards, "-q")
    for name in ("train-000000.tar", "index.json"):
        assert (out2 / name).read_bytes() == (out / name).read_bytes(), name


def test_export_unreadable_sample(tmp_path, teacher_ckpt):
    from relabel.stages.generate import GenerateConfig, generate
    from relabel.storage.exported import read_exported

    data = make_imagefolder(tmp_path / "data", per_class=3)
    (data / "bee" / "broken.jpg").write_bytes(b"not an image at all")
    generate(GenerateConfig(data=str(data), out=str(tmp_path / "store"), teacher="test_resnet",
                            teacher_checkpoint=str(teacher_ckpt), views=2, topk=2, img_size=32, workers=0,
                            samples_per_shard=64, progress=False))
    store = LabelStore.open(tmp_path / "store")
    run_cli("export", tmp_path / "store", "--to", tmp_path / "out", "--images", data, "-q")
    r = read_exported(str(tmp_path / "out"))
    np.testing.assert_array_equal(r.status, store.status())
    bad = r.keys.index("bee/broken")
    assert r.status[bad] == 2 and (r.index[bad] == 0).all()
    from relabel.storage.exported import iter_exported_samples

    s = [x for x in iter_exported_samples(str(tmp_path / "out")) if x["__key__"] == "bee/broken"][0]
    assert s["image"] == b"not an image at all" and s["image_ext"] is None and s["status"] == 2


def test_export_refuses_bad_input(built, tmp_path):
    _one_line_error(run_cli("export", tmp_path / "nope", "--to", tmp_path / "o", check=False), "nope")
    _one_line_error(run_cli("export", built["store"], "--to", tmp_path / "o", "--format", "parquet", check=False),
                    "webdataset")
    other = make_imagefolder(tmp_path / "other", per_class=2, classes=("ant", "bee", "cat"), seed=1)
    (other / "cat" / "cat_000.png").unlink()
    _one_line_error(run_cli("export", built["store"], "--to", tmp_path / "o2", "--images", other, check=False),
                    "missing")


# --------------------------------------------------------------------------- publish / pull, local
def test_publish_local_pull_and_republish(built, exported, tmp_path):
    from relabel.storage.manifest import parse_manifest

    dest = tmp_path / "published"
    r = run_cli("publish", built["store"], dest, "--shards", exported)
    print("\n" + r.stdout.strip())
    man = parse_manifest((dest / "manifest.json").read_bytes(), str(dest))
    assert "README.md" in man["files"] and "webdataset/index.json" in man["files"] and "zarr.json" in man["files"]
    for rel, e in man["files"].items():
        p = dest / rel
        assert p.stat().st_size == e["size"] and _sha(p) == e["sha256"], rel
    store_files = {p.relative_to(built["store"]).as_posix() for p in built["store"].rglob("*") if p.is_file()}
    assert store_files <= set(man["files"])
    _assert_same_views(built, LabelStore.open(str(dest)))  # opens in place

    again = run_cli("publish", built["store"], dest, "--shards", exported)
    print(again.stdout.strip())
    assert "uploaded 0 file(s) (0 bytes)" in again.stdout

    pulled = tmp_path / "pulled"
    p = run_cli("pull", dest, pulled)
    print(p.stdout.strip())
    assert f"fetched {len(man['files'])} file(s)" in p.stdout
    _assert_same_views(built, LabelStore.open(pulled))
    info = run_cli("info", pulled)
    assert "24" in info.stdout and "views        4" in info.stdout
    assert (pulled / "webdataset" / "train-000000.tar").read_bytes() == (exported / "train-000000.tar").read_bytes()
    # pulling again reuses what is there
    p2 = run_cli("pull", dest, pulled)
    assert "fetched 0 file(s)" in p2.stdout

    # the store grows a file: only it (and the manifest) go up
    extra = tmp_path / "store_copy"
    shutil.copytree(built["store"], extra)
    (extra / "NOTES.txt").write_text("hello\n")
    r3 = run_cli("publish", extra, dest, "--shards", exported)
    assert "uploaded 2 file(s)" in r3.stdout, r3.stdout


def test_card_and_manifest_content(built, tmp_path):
    from huggingface_hub import DatasetCard

    from relabel.stages.publish import publish

    dest = tmp_path / "cardonly"
    res = publish(str(built["store"]), str(dest), license="mit", title="Test labels")
    assert "README.md" in res.uploaded and "manifest.json" in res.uploaded
    card = DatasetCard((dest / "README.md").read_text())
    assert card.data.license == "mit" and card.data.task_categories == ["image-classification"]
    assert "knowledge-distillation" in card.data.tags and card.data.viewer is False
    h = LabelStore.open(built["store"]).header
    for needle in (f"relabel pull {dest}", "relabel train", h.fingerprint, "test_resnet", "| views per image | 4 |",
                   "top-k | 2 of 3", h.teacher["checkpoint_sha256"]):
        assert needle in card.text, needle
    man = json.loads((dest / "manifest.json").read_text())
    assert man["store"]["views"] == 4 and man["shards"] is None
    assert not any(rel.startswith("webdataset/") for rel in man["files"])


def test_tampered_file_fails_pull(built, tmp_path):
    dest = tmp_path / "pub"
    run_cli("publish", built["store"], dest)
    shard = dest / "topk_logp" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    r = run_cli("pull", dest, tmp_path / "pulled", check=False)
    _one_line_error(r, "topk_logp/c/1/0/0", "sha256 mismatch")
    assert not (tmp_path / "pulled" / "topk_logp" / "c" / "1" / "0" / "0").exists()


def test_pull_subset_of_views(built, tmp_path):
    dest = tmp_path / "pub"
    run_cli("publish", built["store"], dest)
    full = run_cli("pull", dest, tmp_path / "all")
    part = run_cli("pull", dest, tmp_path / "two", "--views", "2")
    print("\n" + full.stdout.strip() + "\n" + part.stdout.strip())
    n_all = sum(1 for p in (tmp_path / "all").rglob("*") if p.is_file())
    n_two = sum(1 for p in (tmp_path / "two").rglob("*") if p.is_file())
    # view block 1: topk_index + topk_logp shard files and its status chunk (done and seals: always fetched)
    block1 = [p for a in ("topk_index", "topk_logp", "status", "digests") for p in
              (tmp_path / "all" / a / "c" / "1").rglob("*") if p.is_file()]
    # (trimming to 2 views then drops block 1's done and seal chunks too)
    assert len(block1) == 4 and f"{len(block1)} not needed" in part.stdout and n_two == n_all - len(block1) - 2
    assert not (tmp_path / "two" / "topk_index" / "c" / "1").exists()
    st = LabelStore.open(tmp_path / "two")
    assert st.header.views == 2 and st.complete and st.group["topk_logp"].shape[0] == 2
    _assert_same_views(built, st, views=[0, 1])
    with pytest.raises(IndexError):
        st.read_view(2)
    assert run_cli("info", tmp_path / "two").returncode == 0
    # a range: only view block 1 is fetched; block 0 stays pending in the copy
    r = run_cli("pull", dest, tmp_path / "late", "--views", "3:4")
    assert "views 2-3 only" in r.stdout  # what it holds: the whole view block 1
    late = LabelStore.open(tmp_path / "late")
    assert late.header.views == 4 and not (tmp_path / "late" / "topk_index" / "c" / "0").exists()
    assert late.held_views == (2, 4) and late.complete and not late.pending_shards()
    _assert_same_views(built, late, views=[3])
    with pytest.raises(UserError):
        late.read_view(0)
    _one_line_error(run_cli("pull", dest, tmp_path / "bad", "--views", "9", check=False), "only 4 views")


def test_symlink_in_store_is_refused(built, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(built["store"], store)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not publish\n")
    (store / "keys" / "evil").symlink_to(secret)
    dest = tmp_path / "dest"
    line = _one_line_error(run_cli("publish", store, dest, check=False), "symlink", "evil", "outside")
    assert "never follows" in line
    assert not (dest / "manifest.json").exists() and not list(dest.rglob("evil"))


def test_bad_destinations_and_sources(built, tmp_path):
    _one_line_error(run_cli("publish", tmp_path / "missing", tmp_path / "d", check=False), "missing")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    _one_line_error(run_cli("publish", built["store"], blocker / "sub", check=False), "file.txt")
    _one_line_error(run_cli("publish", built["store"], "nosuchproto://x/y", check=False), "nosuchproto")
    _one_line_error(run_cli("publish", built["store"], "hf://someone/labels", check=False), "hf://datasets/")
    _one_line_error(run_cli("pull", built["store"], tmp_path / "p", check=False), "no manifest.json")
    _one_line_error(run_cli("pull", "hf://datasets/nobody/nothing", tmp_path / "p", check=False,
                            env={"HF_HUB_OFFLINE": "1"}), "hf://datasets/nobody/nothing")


def test_hub_destination_offline(built, tmp_path):
    """What can be checked without the Hub: URL parsing and the commit's operations."""
    from relabel.storage.remotes import HubRemote, open_remote

    r = open_remote("hf://datasets/org/name/sub/dir", write=True)
    assert isinstance(r, HubRemote) and r.repo_id == "org/name" and r.sub == "sub/dir" and r._path("a") == "sub/dir/a"
    r2 = HubRemote("hf://datasets/org/name@v1")
    assert r2.revision == "v1" and r2.sub == "" and r2._path("zarr.json") == "zarr.json"
    zj = str(built["store"] / "zarr.json")
    ops = r.operations([("zarr.json", zj), ("manifest.json", b"{}")], ["old/file"])
    assert [type(o).__name__ for o in ops] == ["CommitOperationAdd", "CommitOperationAdd", "CommitOperationDelete"]
    assert [o.path_in_repo for o in ops] == ["sub/dir/zarr.json", "sub/dir/manifest.json", "sub/dir/old/file"]
    _one_line_error(run_cli("publish", built["store"], "hf://datasets/nobody/labels", check=False,
                            env={"HF_HUB_OFFLINE": "1"}), "hf://datasets/nobody/labels")


# --------------------------------------------------------------------------- S3 (the s3 fixture: conftest.py)
def test_publish_to_s3_open_and_pull(built, exported, s3, tmp_path):
    url = "s3://labels-bucket/labels"
    r = run_cli("publish", built["store"], url, "--shards", exported, env=s3)
    print("\n" + r.stdout.strip())
    assert "uploaded" in r.stdout
    st = LabelStore.open(url)  # zarr over fsspec/s3fs, endpoint from AWS_ENDPOINT_URL
    assert st.header.views == 4 and st.keys == built["keys"]
    _assert_same_views(built, st)

    again = run_cli("publish", built["store"], url, "--shards", exported, env=s3)
    assert "uploaded 0 file(s)" in again.stdout, again.stdout

    from relabel.storage.exported import read_exported_labels

    header, keys, idx, lp = read_exported_labels(url + "/webdataset")
    assert keys == built["keys"]
    np.testing.assert_array_equal(lp[:, 2], built["views"][2][1])

    p = run_cli("pull", url, tmp_path / "from_s3", "--views", "2", env=s3)
    print(p.stdout.strip())
    sub = LabelStore.open(tmp_path / "from_s3")
    assert sub.header.views == 2
    _assert_same_views(built, sub, views=[0, 1])
    run_cli("pull", url, tmp_path / "all_s3", env=s3)
    _assert_same_views(built, LabelStore.open(tmp_path / "all_s3"))
    # unreachable bucket: one line
    _one_line_error(run_cli("pull", "s3://no-such-bucket/x", tmp_path / "nope", check=False, env=s3),
                    "s3://no-such-bucket/x")
