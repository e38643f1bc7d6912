"""Seeing the labels: ``relabel show`` (contact sheet + JSON sidecar) and ``relabel info --stats``, on a
real store, its export and a pulled range of views; the dataset card that embeds both."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_imagefolder, run_cli, save_teacher

CLASSES = ("ant", "bee", "cat", "dog", "eel")
BAD_KEY = "ant/ant_bad"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """31 images of 5 classes (one that does not decode), USI's recipe (every pair mixed), 4 views in
    2 view blocks, top-3: a zarr store, its export and a copy pulled with views 2-3 only."""
    from relabel.stages.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("show")
    data = make_imagefolder(root / "train", per_class=6, classes=CLASSES)
    (data / "ant" / "ant_bad.jpg").write_bytes(b"these bytes are no image")
    ckpt = save_teacher(root / "teacher.pth", num_classes=len(CLASSES))
    store = root / "store"
    generate(GenerateConfig(data=str(data), out=str(store), teacher="test_resnet", teacher_checkpoint=str(ckpt),
                            views=4, topk=3, img_size=32, workers=0, samples_per_shard=64, views_per_shard=2,
                            progress=False))
    export = root / "export"
    run_cli("export", store, "--to", export, "-q")
    run_cli("publish", store, root / "pub")
    pulled = root / "pulled"
    run_cli("pull", root / "pub", pulled, "--views", "3:4")
    return {"root": root, "data": data, "store": store, "export": export, "pulled": pulled}


@pytest.fixture(scope="module")
def replayed(built):
    """What ReplayLoader gives for every (store position, view): pixels (H, W, 3), y, partner, lam.
    Four epochs replay the four views; 30 usable samples in pairs: every one of them, every view."""
    import relabel

    loader = relabel.ReplayLoader(str(built["data"]), str(built["store"]), batch_size=2, workers=0, seed=0)
    out = {}
    for epoch in range(4):
        loader.set_epoch(epoch)
        for b in loader:
            for i, (p, v) in enumerate(zip(b["positions"].tolist(), b["view"].tolist())):
                out[(p, v)] = {"pixels": b["pixels"][i].permute(1, 2, 0).numpy().copy(), "y": int(b["y"][i]),
                               "partner": int(b["partner"][i]), "lam": float(b["lam"][i])}
    assert {v for _, v in out} == {0, 1, 2, 3} and len(out) == 30 * 4
    return out


def _stored(store_path, v: int):
    """(indices, probabilities renormalized over the k+1 bins) of view v, as the trainer reads them."""
    from relabel.storage import LabelStore

    idx, lp = LabelStore.open(store_path).read_view(v)
    p = np.exp(lp - lp.max(1, keepdims=True))
    return idx, p / p.sum(1, keepdims=True)


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _check_sheet(png: Path, built, replayed) -> dict:
    """Every tile of the sheet, tile by tile: its pixels are ReplayLoader's for that view (enlarged by a
    whole factor, nothing else), its caption's classes and probabilities are the stored top-k."""
    from relabel.stages.show import percent

    meta = json.loads(png.with_suffix(".json").read_text())
    sheet = np.asarray(Image.open(png).convert("RGB"))
    s, k = meta["scale"], meta["topk"]
    from relabel.storage import LabelStore

    store = LabelStore.open(built["store"])
    assert meta["img_size"] == store.header.img_size == 32 and s == math.ceil(192 / 32)
    assert len(meta["tiles"]) == len(meta["keys"]) * len(meta["views"])
    for t in meta["tiles"]:
        x0, y0, x1, y1 = t["box"]
        tile = sheet[y0:y1, x0:x1]
        p, v = store.key_index[t["key"]], t["view"]
        assert t["position"] == p and (x1 - x0, y1 - y0) == (32 * s, 32 * s)
        if t["key"] == BAD_KEY:
            assert t["unreadable"] and t["state"] == "unreadable" and t["top"] == [] and t["rest"] is None
            grey = (tile == np.array([200, 200, 200], np.uint8)).all(-1).mean()
            assert grey > 0.8, grey  # a grey tile with its words, no pixels of any image
            continue
        ref = replayed[(p, v)]
        assert not t["unreadable"] and t["state"] == "ok"
        np.testing.assert_array_equal(tile[::s, ::s], ref["pixels"], err_msg=f"{t['key']} view {v}")
        np.testing.assert_array_equal(tile, np.repeat(np.repeat(ref["pixels"], s, 0), s, 1))
        assert t["ground_truth"]["index"] == ref["y"] and t["ground_truth"]["name"] == CLASSES[ref["y"]]
        if ref["partner"] >= 0:
            assert t["mix"]["partner_key"] == store.keys[ref["partner"]] and t["mix"]["lam"] == ref["lam"]
            assert t["mix"]["kind"] in ("mixup", "cutmix") and f"{percent(ref['lam'])} {CLASSES[ref['y']]}" in t["caption"][0]
        else:
            assert t["mix"] is None and t["caption"][0] == f"target: {CLASSES[ref['y']]}"
        idx, prob = _stored(built["store"], v)
        assert [e["index"] for e in t["top"]] == idx[p, :3].tolist()
        np.testing.assert_allclose([e["prob"] for e in t["top"]], prob[p, :3], rtol=1e-6)
        assert t["rest"] == pytest.approx(prob[p, k], rel=1e-6)
        lines = t["caption"][-4:]  # top-3, then the rest
        for i, e in enumerate(t["top"]):
            assert e["name"] == CLASSES[idx[p, i]]
            assert f"{i + 1}. {e['name']}" in lines[i] and lines[i].endswith(percent(prob[p, i])), lines[i]
        assert lines[3].startswith("rest") and lines[3].endswith(percent(prob[p, k]))
    return meta


def test_sheet_tiles_are_the_replayed_pixels_and_captions_the_stored_labels(built, replayed, tmp_path):
    from relabel.storage import LabelStore

    store = LabelStore.open(built["store"])
    keys = [BAD_KEY] + [k for k in store.keys if k != BAD_KEY][:5]
    out = tmp_path / "sheet.png"
    r = run_cli("show", built["store"], built["data"], "--out", out, *[a for k in keys for a in ("--key", k)],
                "--views", "0:4")
    assert f"wrote {out}" in r.stdout and out.with_suffix(".json").is_file()
    meta = _check_sheet(out, built, replayed)
    assert meta["keys"] == keys and meta["views"] == [0, 1, 2, 3]
    assert any(t["mix"] for t in meta["tiles"])  # USI's recipe: mixed views, captioned with partner and lambda
    # --samples picks by --seed, the same rows every time; the library returns the image with the sidecar
    import relabel

    img = relabel.show(str(built["store"]), str(built["data"]), samples=3, seed=1, views=[1, 3])
    again = relabel.show(str(built["store"]), str(built["data"]), samples=3, seed=1, views=[1, 3])
    assert img.info["relabel"]["keys"] == again.info["relabel"]["keys"] and len(img.info["relabel"]["keys"]) == 3
    assert np.array_equal(np.asarray(img), np.asarray(again))


def test_show_on_an_export_and_a_pulled_range(built, replayed, tmp_path):
    run_cli("show", built["export"], built["data"], "-o", tmp_path / "export.png", "--samples", "4")
    meta = _check_sheet(tmp_path / "export.png", built, replayed)
    assert meta["views"] == [0, 1, 2, 3]  # default: every view, up to 8
    run_cli("show", built["pulled"], built["data"], "-o", tmp_path / "pulled.png", "--samples", "3")
    meta = _check_sheet(tmp_path / "pulled.png", built, replayed)
    assert meta["views"] == [2, 3]  # what the pull holds: view block 1
    line = _one_line_error(run_cli("show", built["pulled"], built["data"], "-o", tmp_path / "x.png", "--views", "1",
                                   check=False), "--views", "view 1", "views 2-3 only")
    assert "pulled range" in line


def test_show_bad_input_is_one_line(built, tmp_path):
    args = (built["store"], built["data"], "-o", tmp_path / "x.png")
    _one_line_error(run_cli("show", *args, "--key", "ant/no_such", check=False), "--key", "'ant/no_such'",
                    "not a sample")
    _one_line_error(run_cli("show", *args, "--views", "2,9", check=False), "view 9", "holds views 0-3")
    _one_line_error(run_cli("show", *args, "--views", "x", check=False), "--views")
    _one_line_error(run_cli("show", built["store"], built["data"], check=False), "--out")
    _one_line_error(run_cli("show", *args, "--samples", "0", check=False), "--samples")
    other = make_imagefolder(tmp_path / "other", per_class=2, classes=("ant", "owl"))
    _one_line_error(run_cli("show", built["store"], other, "-o", tmp_path / "x.png", check=False), "other classes")
    same_classes = make_imagefolder(tmp_path / "same", per_class=2, classes=CLASSES, seed=3)
    (same_classes / "ant" / "ant_000.png").unlink()
    _one_line_error(run_cli("show", built["store"], same_classes, "-o", tmp_path / "x.png", check=False),
                    "another dataset", "--allow-subset")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------- stats
def _expected_stats(built, replayed, views=range(4)) -> dict:
    """The same numbers counted directly from ReplayLoader's targets (y, partner's y, lambda)."""
    from relabel.storage import LabelStore

    store = LabelStore.open(built["store"])
    C, k = 5, 3
    un = un_ok = mx = mx_major = mx_either = 0
    top1, rest, ent = [], [], []
    for (p, v), r in replayed.items():
        if v not in views:
            continue
        idx, prob = _stored(built["store"], v)
        pred = idx[p, 0]
        top1.append(prob[p, 0])
        rest.append(prob[p, k])
        q = prob[p]
        ent.append(-(q[:k] * np.log(q[:k])).sum() - q[k] * np.log(q[k] / (C - k)))
        if r["partner"] < 0:
            un += 1
            un_ok += pred == r["y"]
        else:
            yq = replayed[(r["partner"], v)]["y"]
            mx += 1
            mx_either += pred in (r["y"], yq)
            major = r["y"] if (r["y"] == yq or r["lam"] > 0.5) else yq if r["lam"] < 0.5 else None
            mx_major += (pred == major) if major is not None else pred in (r["y"], yq)
    return {"views": len(top1), "unmixed": (un, un_ok / un if un else None),
            "mixed": (mx, mx_major / mx, mx_either / mx), "top1": (np.mean(top1), np.quantile(top1, 0.5)),
            "rest": (np.mean(rest), np.quantile(rest, 0.5), np.quantile(rest, 0.95)), "entropy": np.mean(ent),
            "store": store}


def test_stats_equal_a_direct_count_over_the_replayed_views(built, replayed):
    import relabel

    s = relabel.label_stats(str(built["store"]), str(built["data"]), progress=False)
    e = _expected_stats(built, replayed)
    assert s["views"] == e["views"] == 120 and s["samples"] == 31 and s["unreadable_samples"] == 1
    assert s["ground_truth"] in ("data", "store") and s["mixed_views"] == e["mixed"][0]  # store: schema 4 records classes
    a = s["agreement"]
    assert (a["unmixed"]["views"], a["unmixed"]["top1"]) == pytest.approx(e["unmixed"])
    assert (a["mixed"]["views"], a["mixed"]["top1_major"], a["mixed"]["top1_either"]) == pytest.approx(e["mixed"])
    assert s["top1_prob"]["mean"] == pytest.approx(e["top1"][0], rel=1e-6)
    assert s["top1_prob"]["p50"] == pytest.approx(e["top1"][1], abs=1.5e-3)  # the histogram's bin width
    assert s["rest_mass"]["mean"] == pytest.approx(e["rest"][0], rel=1e-6)
    for got, want in ((s["rest_mass"]["p50"], e["rest"][1]), (s["rest_mass"]["p95"], e["rest"][2])):
        assert want <= got * 1.001 and got <= want * 1.02  # a bin's upper edge: ~1% over 8 decades
    assert s["entropy"]["mean"] == pytest.approx(e["entropy"], rel=1e-6)
    per = dict(zip(s["per_class"]["name"], s["per_class"]["agreement"]))
    worst = [w["name"] for w in s["worst_classes"]]
    assert worst == sorted(worst, key=lambda n: per[n])[:len(worst)] and all(per[n] < 1 for n in worst)
    # stats over a sample of samples, and an object that records each sample's class (schema 4)
    part = relabel.label_stats(str(built["store"]), stats_samples=10, seed=3, progress=False)
    assert part["samples"] == 10 and part["views"] in (36, 40)
    assert part["agreement"] is None or part["ground_truth"] == "store"  # no DATA: only the store's own classes

    class WithClasses:
        def __init__(self, st, gt):
            self.st, self.gt = st, gt

        def __getattr__(self, name):
            return getattr(self.st, name)

        def sample_classes(self):
            return self.gt

    st = e["store"]
    gt = np.asarray([CLASSES.index(k.split("/")[0]) for k in st.keys])
    own = relabel.label_stats(WithClasses(st, gt), progress=False)
    assert own["ground_truth"] == "store" and own["agreement"] == s["agreement"]


def test_label_stats_streams_in_any_chunks():
    """The same result whether the rows come in one piece or many: nothing depends on the chunking."""
    from relabel.storage.stats import LabelStats

    rng = np.random.default_rng(0)
    n, C, k = 5000, 40, 5
    idx = np.stack([rng.permutation(C)[:k] for _ in range(n)])
    lp = np.log(rng.dirichlet(np.ones(k + 1), n)).astype(np.float32)
    gt, q = rng.integers(0, C, n), rng.integers(0, C, n)
    mixed, lam = rng.random(n) < 0.7, rng.random(n)
    one, many = LabelStats(C, k, [str(i) for i in range(C)]), LabelStats(C, k, [str(i) for i in range(C)])
    one.add(idx, lp, gt, mixed, np.where(mixed, q, -1), lam)
    for a in range(0, n, 333):
        sl = slice(a, a + 333)
        many.add(idx[sl], lp[sl], gt[sl], mixed[sl], np.where(mixed, q, -1)[sl], lam[sl])
    r1, r2 = one.result(), many.result()
    for key in ("top1_prob", "rest_mass", "entropy"):
        assert r1[key] == pytest.approx(r2[key], rel=1e-9)
    assert r1["agreement"] == r2["agreement"] and r1["worst_classes"] == r2["worst_classes"]
    assert r1["histograms"] == r2["histograms"]


def test_info_stats_on_a_store_an_export_and_a_pulled_range(built, tmp_path):
    plot = tmp_path / "stats.png"
    r = run_cli("info", built["store"], "--stats", "--data", built["data"], "--plot", plot)
    assert "statistics over 120 views of 31 samples" in r.stdout and "top-1 = ground truth (unmixed views)" in r.stdout
    assert "rest mass (outside the top-3)" in r.stdout and "most disagreement" in r.stdout
    assert Image.open(plot).size[0] > 1000
    js = [json.loads(run_cli("info", src, "--stats", "--data", built["data"], "--json", "-q").stdout)["stats"]
          for src in (built["store"], built["export"])]
    for s in js:
        s.pop("store")
        s.pop("ground_truth")  # the store's own record of classes (schema 4) or DATA's: the same classes
    assert js[0] == js[1]  # an export says exactly what its store says
    pulled = json.loads(run_cli("info", built["pulled"], "--stats", "--data", built["data"], "--json").stdout)
    assert pulled["stats"]["views"] == 30 * 2 and pulled["stats"]["views_held"] == [2, 4]
    bare = run_cli("info", built["export"], "--stats")
    assert "(webdataset export)" in bare.stdout
    from relabel.storage.labels import open_labels

    own = getattr(open_labels(str(built["export"])), "sample_classes", lambda: None)()
    if not isinstance(own, np.ndarray):  # no ground truth without DATA: said so, and how to give it
        assert "needs the ground truth" in bare.stdout and "--data" in bare.stderr
    assert "statistics" not in run_cli("info", built["store"]).stdout  # plain info: the summary only
    other = make_imagefolder(tmp_path / "other", per_class=2, classes=("ant", "owl"))
    _one_line_error(run_cli("info", built["store"], "--stats", "--data", other, check=False), "classes")
    same_classes = make_imagefolder(tmp_path / "same", per_class=2, classes=CLASSES, seed=3)
    _one_line_error(run_cli("info", built["store"], "--stats", "--data", same_classes, check=False),
                    "another dataset", "--allow-subset")
    subset = json.loads(run_cli("info", built["store"], "--data", same_classes, "--allow-subset", "--json").stdout)
    assert subset["stats"]["views"] == 120  # the numbers over every view; ground truth where DATA has the key
    _one_line_error(run_cli("info", built["store"], "--stats", "--stats-samples", "0", check=False), "--stats-samples")


def test_publish_card_embeds_a_sheet_and_the_statistics(built, tmp_path):
    from relabel.storage.card import SHEET_NAME

    dest = tmp_path / "pub"
    r = run_cli("publish", built["store"], dest, "--data", built["data"])
    card = (dest / "README.md").read_text()
    assert f"]({SHEET_NAME})" in card and "## What the labels look like" in card
    assert "| top-1 = ground truth (unmixed views) |" in card and "| rest mass (outside the top-3) |" in card
    sheet = Image.open(dest / SHEET_NAME)
    assert sheet.size[0] > 500 and SHEET_NAME in json.loads((dest / "manifest.json").read_text())["files"]
    again = run_cli("publish", built["store"], dest, "--data", built["data"])
    assert "uploaded 0 file(s)" in again.stdout, again.stdout  # the same card and sheet, byte for byte
    # without DATA: the statistics that need no ground truth, no sheet
    run_cli("publish", built["store"], tmp_path / "bare")
    bare = (tmp_path / "bare" / "README.md").read_text()
    assert SHEET_NAME not in bare and "| mean top-1 probability |" in bare and not (tmp_path / "bare" / SHEET_NAME).exists()
    assert r.returncode == 0


def test_show_and_stats_read_a_remote_store(built, replayed, s3, tmp_path):
    """A store published to S3 (moto's server), read in place: the same sheet and the same numbers."""
    url = "s3://labels-bucket/show"
    run_cli("publish", built["store"], url)
    run_cli("show", url, built["data"], "-o", tmp_path / "remote.png", "--samples", "3", "--views", "1,2")
    meta = _check_sheet(tmp_path / "remote.png", built, replayed)
    local = json.loads(run_cli("info", built["store"], "--stats", "--data", built["data"], "--json", "-q").stdout)
    remote = json.loads(run_cli("info", url, "--stats", "--data", built["data"], "--json", "-q").stdout)
    assert meta["views"] == [1, 2] and remote["stats"]["views"] == 120
    assert {k: v for k, v in remote["stats"].items() if k != "store"} == \
        {k: v for k, v in local["stats"].items() if k != "store"}


def test_show_with_a_subset_of_the_images_says_what_is_missing(built, tmp_path):
    """DATA without one image (--allow-subset): its own tiles are grey 'not in DATA' with their labels,
    and a view that stage one mixed with it cannot be rebuilt: grey, naming the partner."""
    import shutil

    from relabel.storage import LabelStore
    from relabel.views import create_recipe, mix_params, pairs_for_view

    st = LabelStore.open(built["store"])
    h, recipe = st.header, create_recipe(st.header.recipe)
    p = st.key_index["cat/cat_001"]
    pairs = [int(pairs_for_view(recipe, h.seed, w, h.num_samples)[p]) for w in range(4)]
    v = next(w for w in range(4) if st.keys[pairs[w]] != BAD_KEY and mix_params(recipe, h.seed, w, min(p, pairs[w])))
    q = pairs[v]
    sub = tmp_path / "sub"
    shutil.copytree(built["data"], sub)
    next(sub.glob(st.keys[q] + ".*")).unlink()
    run_cli("show", built["store"], sub, "--allow-subset", "-o", tmp_path / "s.png", "--key", st.keys[p],
            "--key", st.keys[q])
    tiles = {(t["key"], t["view"]): t for t in json.loads((tmp_path / "s.json").read_text())["tiles"]}
    t = tiles[(st.keys[p], v)]
    assert t["state"] == "partner_missing" and t["mix"]["partner_key"] == st.keys[q] and len(t["top"]) == 3
    assert "not in DATA" in t["caption"][1]
    assert all(tiles[(st.keys[q], w)]["state"] == "missing" and len(tiles[(st.keys[q], w)]["top"]) == 3
               for w in range(4))


@pytest.mark.parametrize("command,record,extra", [("show", "ShowConfig", set()),
                                                  ("info", "StatsConfig", {"stats", "as_json", "quiet"})])
def test_show_and_info_options_are_their_records_fields(command, record, extra):
    """Each setting is written once: the options are the record's fields, with its help and default."""
    import dataclasses

    import typer.main

    import relabel
    from relabel.commands.cli import app
    from relabel.settings import meta

    cfg = getattr(relabel, record)
    cmd = typer.main.get_command(app).commands[command]
    opts = {p.name: p for p in cmd.params if p.name != "help"}
    fields = {f.name: f for f in dataclasses.fields(cfg) if meta(f) and meta(f)["cli"]}
    assert set(opts) == set(fields) | extra
    for name, f in fields.items():
        assert opts[name].help.replace("\\[", "[") == meta(f)["help"], name
        if f.default is not dataclasses.MISSING:
            assert opts[name].default in (f.default, [] if f.default is None else f.default), name
    with pytest.raises(relabel.ConfigError, match="samples"):
        relabel.ShowConfig(store="s", data="d", samples=0)
    with pytest.raises(relabel.ConfigError, match="views"):
        relabel.ShowConfig(store="s", data="d", views=[1, 1])
