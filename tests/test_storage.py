"""Image sources and the zarr label store, on real files."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp

import numpy as np
import pytest
import zarr

from conftest import folder_to_shards, make_imagefolder, run_cli
from relabel.storage import LabelStore, StoreHeader, UserError, open_source
from relabel.storage.encoding import ValueEncoding, index_dtype
from relabel.storage.sources import fingerprint
from relabel.storage.order import store_order
from relabel.storage.store import STATUS_OK


def _header(n=100, views=5, k=3, classes=10, **kw) -> StoreHeader:
    return StoreHeader(num_samples=n, views=views, topk=k, num_classes=classes,
                       class_names=[f"c{i}" for i in range(classes)], fingerprint="f" * 64,
                       teacher={"model": "test_resnet"}, recipe={"name": "usi"}, seed=0, img_size=32,
                       samples_per_shard=kw.pop("sps", 32), views_per_shard=kw.pop("vps", 2), **kw)


def _labels(shard, k, seed, classes=10):
    rng = np.random.default_rng(seed)
    nv, ns = shard.v1 - shard.v0 - shard.done, shard.s1 - shard.s0
    logits = rng.normal(0, 3, (nv, ns, classes))
    idx = np.argsort(-logits, -1)[..., :k]
    lse = np.log(np.exp(logits).sum(-1, keepdims=True))
    top = np.take_along_axis(logits, idx, -1) - lse
    rest = np.log1p(-np.exp(top).sum(-1, keepdims=True))
    return idx, np.concatenate([top, rest], -1).astype(np.float32)


def _fill(store: LabelStore, shards=None, seed_base=0):
    for sh in shards if shards is not None else store.pending_shards():
        idx, lp = _labels(sh, store.header.topk, seed_base + sh.vb * 1000 + sh.sb, store.header.num_classes)
        store.write_shard(sh, sh.done, idx, lp, np.full(sh.s1 - sh.s0, STATUS_OK))


def test_sources_keys_and_fingerprint(tmp_path):
    folder = make_imagefolder(tmp_path / "imgs", per_class=4)
    a = open_source(folder)
    assert a.keys == sorted(a.keys) and a.keys[0] == "ant/ant_000"
    assert a.class_names == ["ant", "bee", "cat"] and list(a.labels[:4]) == [0, 0, 0, 0]
    b = open_source(folder_to_shards(folder, tmp_path / "shards", per_shard=5))
    assert b.kind == "webdataset" and b.keys == a.keys and list(b.labels) == list(a.labels)
    assert b.fingerprint == a.fingerprint
    for i in (0, 1, 5):  # the same bytes through both sources
        assert b.read(i) == a.read(i) == next(folder.glob(a.keys[i] + ".*")).read_bytes()
    # a glob and a brace pattern find the same shards
    assert open_source(str(tmp_path / "shards" / "*.tar")).keys == a.keys
    assert open_source(str(tmp_path / "shards" / "data-{000000..000002}.tar")).keys == a.keys
    # the fingerprint moves when a key is added or renamed, not when files are touched
    fp = a.fingerprint
    (folder / "ant" / "ant_000.png").rename(folder / "ant" / "ant_renamed.png")
    assert open_source(folder).fingerprint != fp
    (folder / "ant" / "ant_renamed.png").rename(folder / "ant" / "ant_000.png")
    assert open_source(folder).fingerprint == fp
    (folder / "bee" / "extra.jpg").write_bytes((folder / "bee" / "bee_001.jpg").read_bytes())
    assert open_source(folder).fingerprint != fp
    assert fingerprint(["a", "b"], ["x"]) == fingerprint(["b", "a"], ["x"]) != fingerprint(["a", "b"], ["y"])


def test_bad_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        open_source(tmp_path / "empty")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    (tmp_path / "noimg" / "cls" / "readme.txt").write_text("hi")
    with pytest.raises(UserError, match="no images"):
        open_source(tmp_path / "noimg")
    with pytest.raises(UserError, match="no such file"):
        open_source(tmp_path / "missing")
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match="not a readable tar"):
        open_source(tmp_path / "bad.tar")


def test_roundtrip_labels_keys_header(tmp_path):
    h = _header()
    keys = store_order([f"cls/{i:04d}" for i in range(100)], h.seed)
    store = LabelStore.create(tmp_path / "s", h, keys)
    assert len(store.pending_shards()) == 3 * 4
    _fill(store)
    back = LabelStore.open(tmp_path / "s")
    assert back.complete and back.keys == keys and back.header.to_dict() == h.to_dict()
    for sh in back.shards():
        idx, lp = _labels(back.shard(sh.vb, sh.sb), 3, sh.vb * 1000 + sh.sb)
        ridx, rlp = back.read_shard(sh)
        assert np.array_equal(ridx, idx)
        assert np.abs(rlp - lp).max() <= h.encoding.step / 2 + 1e-6
    v_idx, v_lp = back.read_view(3)
    g_idx, g_lp = back.gather(np.arange(100), np.full(100, 3))
    assert np.array_equal(v_idx, g_idx) and np.array_equal(v_lp, g_lp)
    # plain zarr reads it from FORMAT.md's description alone
    g = zarr.open_group(str(tmp_path / "s"), mode="r")
    assert g.attrs["relabel"]["schema_version"] == 4 and g["status"].shape == (h.n_view_blocks, 100)
    assert bytes(g["keys"][:]).decode().split("\n") == keys
    assert np.array_equal(g["topk_index"][3], v_idx)
    # ... and its seals, recomputed with hashlib as FORMAT.md writes them down
    hd = dict(g.attrs["relabel"])
    for name in ("views", "writer", "replay_check", "renderer"):
        hd.pop(name)
    hd["teacher"] = {k: v for k, v in hd["teacher"].items() if k != "device_type"}
    identity = hashlib.sha256(json.dumps(hd, sort_keys=True).encode()).hexdigest()
    vb, sb, done = 1, 2, int(g["done"][1, 2])
    seal = hashlib.sha256(f"relabel-seal-1\0{identity}\0{vb}\0{sb}\0{done}\0".encode())
    for f in (f"topk_index/c/{vb}/{sb}/0", f"topk_logp/c/{vb}/{sb}/0", f"status/c/{vb}/{sb}", f"digests/c/{vb}/{sb}/0"):
        seal.update(hashlib.sha256((tmp_path / "s" / f).read_bytes()).digest())
    assert bytes(g["seals"][vb, sb]) == seal.digest()


def test_index_dtype_fits_any_class_count():
    assert index_dtype(256) == np.uint8 and index_dtype(257) == np.uint16
    assert index_dtype(65536) == np.uint16 and index_dtype(65537) == np.uint32
    h = _header(classes=70000, k=2)
    assert h.index_dtype == np.uint32


def test_value_encodings_roundtrip():
    lp = np.log(np.random.default_rng(0).dirichlet(np.ones(6), size=50)).astype(np.float32)
    for name in ("q8", "f16", "f32"):
        enc = ValueEncoding(name)
        err = np.abs(enc.decode(enc.encode(lp)) - np.maximum(lp, -255 * enc.step if name == "q8" else -np.inf))
        assert err.max() <= enc.max_error + 1e-7


def _writer(path, shards):
    store = LabelStore.open(path, mode="r+")
    _fill(store, [s for s in store.pending_shards() if (s.vb, s.sb) in shards])


def test_two_processes_write_disjoint_shards(tmp_path):
    path = str(tmp_path / "s")
    store = LabelStore.create(path, _header(), store_order([f"k{i}" for i in range(100)], 0))
    all_ids = [(s.vb, s.sb) for s in store.pending_shards()]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, set(all_ids[r::2]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    back = LabelStore.open(path)
    assert back.complete and not back.check_shards()
    ref = LabelStore.create(tmp_path / "ref", _header(), store_order([f"k{i}" for i in range(100)], 0))
    _fill(ref)
    for v in range(5):
        assert all(np.array_equal(a, b) for a, b in zip(back.read_view(v), ref.read_view(v)))


def test_resume_after_half_written(tmp_path):
    path = tmp_path / "s"
    store = LabelStore.create(path, _header(), store_order([f"k{i}" for i in range(100)], 0))
    first = store.pending_shards()
    _fill(store, first[:5])
    again = LabelStore.open(path, mode="r+")
    left = again.pending_shards()
    assert len(left) == len(first) - 5 and {(s.vb, s.sb) for s in left}.isdisjoint({(s.vb, s.sb) for s in first[:5]})
    _fill(again, left)
    assert LabelStore.open(path).complete
    with pytest.raises(UserError, match="not generated"):
        LabelStore.create(tmp_path / "t", _header(), store_order([f"k{i}" for i in range(100)], 0)).read_view(0)


def test_extend_views_keeps_old(tmp_path):
    store = LabelStore.create(tmp_path / "s", _header(views=3), store_order([f"k{i}" for i in range(100)], 0))
    _fill(store)
    before = store.read_view(1)
    store.extend_views(6)
    store = LabelStore.open(tmp_path / "s", mode="r+")
    pend = store.pending_shards()
    assert store.header.views == 6 and {s.vb for s in pend} == {1, 2}
    assert [s.done for s in pend if s.vb == 1][0] == 1  # view 2 already there, view 3 missing
    _fill(store, pend, seed_base=77)
    assert all(np.array_equal(a, b) for a, b in zip(before, store.read_view(1)))


def test_bad_stores(tmp_path):
    with pytest.raises(UserError, match="no label store"):
        LabelStore.open(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(UserError, match="not a relabel label store"):
        LabelStore.open(tmp_path / "junk")
    zarr.open_group(str(tmp_path / "plain"), mode="w").attrs["x"] = 1
    with pytest.raises(UserError, match="not a relabel label store"):
        LabelStore.open(tmp_path / "plain")
    LabelStore.create(tmp_path / "s", _header(), store_order([f"k{i}" for i in range(100)], 0))
    with pytest.raises(UserError, match="already exists"):
        LabelStore.create(tmp_path / "s", _header(), store_order([f"k{i}" for i in range(100)], 0))
    assert LabelStore.open(tmp_path / "s").header.num_samples == 100  # untouched
    meta = tmp_path / "s" / "zarr.json"
    d = json.loads(meta.read_text())
    d["attributes"]["relabel"]["schema_version"] = 99
    meta.write_text(json.dumps(d))
    with pytest.raises(UserError, match="newer"):
        LabelStore.open(tmp_path / "s")
    r = run_cli("info", tmp_path / "s", check=False)
    assert r.returncode == 2 and "newer" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(UserError, match="top-k"):
        _header(k=11, classes=10)


def test_damaged_shard_detected(tmp_path):
    store = LabelStore.create(tmp_path / "s", _header(), store_order([f"k{i}" for i in range(100)], 0))
    _fill(store)
    f = tmp_path / "s" / "topk_logp" / "c" / "1" / "2" / "0"
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0xFF
    f.write_bytes(bytes(data))
    g = tmp_path / "s" / "topk_index" / "c" / "0" / "1" / "0"
    g.write_bytes(g.read_bytes()[:10])
    bad = LabelStore.open(tmp_path / "s").check_shards()
    assert len(bad) == 2 and any("topk_logp/c/1/2/0" in str(b) for b in bad) and any("topk_index/c/0/1/0" in str(b) for b in bad)
    with pytest.raises(UserError, match="damaged"):
        LabelStore.open(tmp_path / "s").read_view(2)
