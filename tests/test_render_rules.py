"""Render rules belong to the store (issue 29): each resize pass-order rule renders byte for byte on the
installed Pillow, with both renderers; a store made under Pillow 12.3 replays here without drift.

The golden renders (tests/data/pillow_golden.npz) were made with the real Pillow 10.4, 11.3, 12.3 and
13.0 by tests/data/pillow_golden.py; the store under tests/data/pillow12 by
tests/data/make_pillow12_store.py under Pillow 12.3.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL
import pytest

from conftest import cli_inprocess as cli

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))

import pillow_golden  # noqa: E402
from make_pillow12_store import teacher  # noqa: E402

from relabel.views.rules import RESIZE_RULES, boundary_cases, probe_native_rule, resize_rule_for_pillow  # noqa: E402


@pytest.fixture(scope="module")
def golden():
    z = np.load(DATA / "pillow_golden.npz")
    return {"hashes": json.loads(z["hashes"].tobytes()), "versions": json.loads(z["versions"].tobytes()),
            "pixels": {k: z[k] for k in z.files if "|" in k}, "jpegs": {k: z[k].tobytes() for k in z.files
                                                                      if k.startswith("jpeg/")}}


def test_the_installed_pillow_resizes_by_the_rule_relabel_thinks_it_has():
    assert probe_native_rule() == resize_rule_for_pillow(PIL.__version__), PIL.__version__


def test_the_golden_renders_cover_every_rule_and_the_rules_differ(golden):
    assert set(golden["versions"].values()) == set(RESIZE_RULES)
    names = [k.split("|", 1)[1] for k in golden["hashes"] if k.startswith("classic|")]
    for a in RESIZE_RULES:
        for b in RESIZE_RULES:
            if a < b:  # every pair of rules gives other bytes on some views (the test can fail)
                assert any(golden["hashes"][f"{a}|{n}"] != golden["hashes"][f"{b}|{n}"] for n in names), (a, b)


@pytest.mark.parametrize("rule", RESIZE_RULES)
def test_the_pillow_renderer_renders_every_rule_on_the_installed_pillow(golden, rule):
    got = pillow_golden.render_views(rule)
    bad = [n for n, arr in got.items() if pillow_golden.sha(arr) != golden["hashes"][f"{rule}|{n}"]]
    assert not bad, f"{len(bad)} of {len(got)} views differ from Pillow {rule}'s own: {bad[:4]}"
    for key, arr in golden["pixels"].items():
        if key.startswith(f"{rule}|"):
            assert np.array_equal(got[key.split("|", 1)[1]], arr), key


@pytest.mark.parametrize("rule", RESIZE_RULES)
def test_the_torch_renderer_renders_every_rule(golden, rule):
    from relabel.views import ViewRenderer, create_renderer, render_now

    bad, by_recipe = [], {}
    for case in pillow_golden.view_cases():
        by_recipe.setdefault(case[2].name, []).append(case)
    for cases in by_recipe.values():  # one batch per recipe, as the renderer runs in a loader
        r = create_renderer("torch", ViewRenderer(cases[0][2], 0, pillow_golden.OUT, rule))
        out = render_now(r, [(i, v, -1, key, img) for i, (_, img, _, key, v) in enumerate(cases)]).numpy()
        bad += [c[0] for c, arr in zip(cases, out) if pillow_golden.sha(arr) != golden["hashes"][f"{rule}|{c[0]}"]]
    assert not bad, f"{len(bad)} views differ from Pillow {rule}'s own: {bad[:4]}"


def test_ops_and_jpeg_decodes_are_the_same_bytes_on_the_installed_pillow(golden):
    got = {**pillow_golden.render_ops(), **pillow_golden.render_decodes(golden["jpegs"])}
    bad = [n for n, arr in got.items() if pillow_golden.sha(arr) != golden["hashes"][n]]
    assert not bad and len(got) > 300, bad[:4]


def test_the_drift_patterns_and_start_up_check_cover_every_rules_boundary():
    """A renderer resizing by another rule than the store's is caught by the recorded op hashes, on
    both sides of every boundary (13's, and images taller than 100:1)."""
    from relabel.views import ViewRenderer, create_recipe, create_renderer
    from relabel.views.replay_check import op_hashes, renderer_parity

    recipe = create_recipe("usi")
    hashes = {r: op_hashes(create_renderer("pillow", ViewRenderer(recipe, 0, 32, r))) for r in RESIZE_RULES}
    assert sum(k.startswith("resize:rule:") for k in hashes["classic"]) == len(boundary_cases())
    for a in RESIZE_RULES:
        for b in RESIZE_RULES:
            if a != b:
                assert any(hashes[a][k] != hashes[b][k] for k in hashes[a] if k.startswith("resize:rule:")), (a, b)
        assert renderer_parity(create_renderer("torch", ViewRenderer(recipe, 0, 32, a))) == []


@pytest.fixture
def pillow12(tmp_path):
    out = tmp_path / "p12"
    shutil.copytree(DATA / "pillow12", out)
    return out


@pytest.mark.parametrize("renderer", ["pillow", "torch"])
def test_a_store_made_under_pillow_12_3_trains_and_verifies_here(pillow12, tmp_path, capsys, renderer):
    import relabel
    from relabel.storage import LabelStore

    store, images = pillow12 / "labels.zarr", pillow12 / "images"
    h = LabelStore.open(store).header
    assert h.replay_check["env"]["pillow"] == "12.3.0" and h.resize_rule == "pillow-12.2"
    rep = relabel.verify_labels(str(store), str(images), samples=24, teacher=teacher(), renderer=renderer)
    assert rep.ok and rep.drift is None and rep.checked == 24, rep
    r = cli(capsys, "train", images, "--labels", store, "--out", tmp_path / f"run-{renderer}", "--student",
            "test_resnet", "--epochs", "1", "-b", "4", "--img-size", "32", "-j", "0", "--renderer", renderer,
            "--quiet")
    assert r.returncode == 0, r.stderr


def _as_older_store(pillow12: Path, renderer: str) -> Path:
    """The 12.3 store as relabel 0.2 wrote it (no render rules recorded) with ``renderer`` as its maker."""
    from relabel.storage import LabelStore

    meta = json.loads((pillow12 / "labels.zarr" / "zarr.json").read_text())
    meta["attributes"]["relabel"].update(render_rules={}, renderer=renderer)
    (pillow12 / "labels.zarr" / "zarr.json").write_text(json.dumps(meta))
    st = LabelStore.open(pillow12 / "labels.zarr", mode="r+")
    for sh in st.shards():  # the identity changed with the header: seal as that store's writer did
        st.group["seals"][sh.vb, sh.sb] = np.frombuffer(st.seal(sh), np.uint8)
    return pillow12 / "labels.zarr"


@pytest.mark.parametrize("maker, rule", [("pillow", "pillow-12.2"), ("torch", "classic")])
def test_an_older_store_gets_its_rule_from_its_pillow_and_renderer(pillow12, tmp_path, capsys, maker, rule):
    """A store without ``render_rules`` (relabel 0.2) replays by the order its maker used under the
    Pillow it recorded: 12.3's 100:1 rule for the Pillow renderer, the classic order for 0.2's torch
    renderer (it modelled only 13's rule). Either may have been resumed with the other renderer, which
    the store does not record: views of images taller than 100:1 are refused, never guessed, unless
    ``allow_pixel_drift`` says to replay them in the maker's order. (The store here was made by the
    Pillow renderer: called a torch renderer's, its recorded renders no longer match, and are named.)"""
    import relabel
    from relabel.storage import LabelStore

    store = _as_older_store(pillow12, maker)
    h = LabelStore.open(store).header
    assert h.resize_rule == rule and not h.resize_rule_certain
    rep = relabel.verify_labels(str(store), str(pillow12 / "images"), samples=48, teacher=teacher())
    assert any("taller than 100:1" in n for n in rep.notes), rep.notes
    args = ["train", pillow12 / "images", "--labels", store, "--student", "test_resnet", "--epochs", "1", "-b", "4",
            "--img-size", "32", "-j", "0", "--quiet"]
    r = cli(capsys, *args, "--out", tmp_path / "run")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    if maker == "pillow":
        assert rep.ok and rep.drift is None, rep
        assert "taller than 100:1" in r.stderr and "--allow-pixel-drift" in r.stderr, r.stderr
        r = cli(capsys, *args, "--out", tmp_path / "run2", "--allow-pixel-drift")
        assert r.returncode == 0, r.stderr
    else:  # the wrong maker's order: the recorded renders of the tall pattern and images say so
        assert not rep.ok and "resize:rule:3 renders differently" in rep.drift, rep.drift
        assert "renders differently" in r.stderr, r.stderr


def test_a_rule_this_relabel_does_not_know_is_refused_in_one_line(pillow12, capsys, tmp_path):
    meta = json.loads((pillow12 / "labels.zarr" / "zarr.json").read_text())
    meta["attributes"]["relabel"]["render_rules"] = {"resize": "pillow-99"}
    (pillow12 / "labels.zarr" / "zarr.json").write_text(json.dumps(meta))
    r = cli(capsys, "train", pillow12 / "images", "--labels", pillow12 / "labels.zarr", "--out", tmp_path / "run",
            "--student", "test_resnet", "--epochs", "1", "-b", "4", "--img-size", "32", "-j", "0", "--quiet")
    assert r.returncode == 2 and "'pillow-99'" in r.stderr and "upgrade relabel" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_the_header_records_the_jpeg_decoders_build_and_drift_names_it(pillow12, tmp_path):
    """The libjpeg-turbo build (PIL.features says "6.2", the API level, for every build) is recorded,
    and when a decoder renders an image otherwise, the drift check names the image and the build."""
    import zarr
    from PIL import features

    import relabel
    from relabel.views.replay_check import decode_env

    assert decode_env()["libjpeg_turbo_version"] == features.version("libjpeg_turbo")
    store = pillow12 / "labels.zarr"
    g = zarr.open_group(str(store), mode="r+")
    h = dict(g.attrs["relabel"])
    assert h["replay_check"]["env"]["libjpeg_turbo_version"]  # 12.3's bundled build
    key = sorted(h["replay_check"]["samples"])[0]
    h["replay_check"]["samples"][key]["decode"] = "0" * 16  # another decoder's pixels
    h["replay_check"]["env"]["libjpeg_turbo_version"] = "9.9.9"
    g.attrs["relabel"] = h
    rep = relabel.verify_labels(str(store), str(pillow12 / "images"), samples=0)
    assert f"image {key!r} decodes to other pixels" in rep.drift and "libjpeg_turbo_version 9.9.9 ->" in rep.drift


@pytest.mark.parametrize("rule", RESIZE_RULES)
def test_random_views_under_every_rule_are_the_same_bytes_with_both_renderers(rule):
    """Random images (photo-like, tall, taller than 100:1, wide, 1 px), random USI views at random sizes
    and interpolations, rendered by the store's rule: the torch renderer (every kernel) equals the
    Pillow renderer byte for byte, and under a rule other than the installed Pillow's the Pillow
    renderer's two-call emulation is what the golden renders above pin down."""
    import os

    from PIL import Image

    from relabel.views import ViewRenderer, create_recipe, create_renderer, render_now
    from relabel.views.recipe import Recipe

    rng = np.random.default_rng(int(os.environ.get("RELABEL_PARITY_SEED", "0")) + RESIZE_RULES.index(rule))
    scale = int(os.environ.get("RELABEL_PARITY_CASES", "1x").rstrip("x") or 1)
    shapes = [(int(rng.integers(40, 320)), int(rng.integers(40, 320))) for _ in range(12)]
    shapes += [(int(rng.integers(1, 6)), int(rng.integers(120, 900))) for _ in range(6)]  # many taller than 100:1
    shapes += [(int(rng.integers(20, 60)), int(rng.integers(60, 400))) for _ in range(6)] + [(1, 1), (300, 3)]
    base = create_recipe("usi").to_dict()
    for interp in ("bicubic", "bilinear", "lanczos"):
        recipe = Recipe.from_dict({**base, "interpolation": interp, "name": f"usi-{interp}",
                                   **({"randaugment": None} if interp == "lanczos" else {})})
        size = int(rng.choice([8, 24, 33]))
        spec = ViewRenderer(recipe, int(rng.integers(0, 1000)), size, rule)
        samples = []
        for i, (w, h) in enumerate(shapes * scale):
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            samples += [(len(samples), v, -1, f"img{i}", img) for v in range(2)]
        want = np.stack([spec.render(k, v, img) for _, v, _, k, img in samples])
        for kernel in ("matmul", "taps"):
            got = render_now(create_renderer("torch", spec, kernel=kernel), samples).numpy()
            bad = [i for i in range(len(samples)) if not np.array_equal(got[i], want[i])]
            assert not bad, f"{rule}, {interp}, {kernel}: {len(bad)} of {len(samples)} views differ"


def test_a_store_made_by_the_last_release_opens_verifies_repairs_and_trains(tmp_path, capsys):
    """tests/data/release02 was written by relabel 0.2.0 itself (schema 3: seals, no digests, no recorded
    rules): it opens, verifies (saying it has no digests), is repaired in its own schema and trains."""
    import relabel
    from conftest import tree_bytes
    from relabel.stages.generate import GenerateConfig, generate

    store, images = tmp_path / "labels.zarr", DATA / "pillow12" / "images"
    shutil.copytree(DATA / "release02" / "labels.zarr", store)
    r = cli(capsys, "info", store)
    assert r.returncode == 0 and "keys         path" in r.stdout, r.stdout
    rep = relabel.verify_labels(str(store), str(images), samples=24, teacher=teacher())
    assert rep.ok and rep.checked == 24 and any("records no digests" in n for n in rep.notes), rep
    before = tree_bytes(store)
    f = store / "topk_logp" / "c" / "0" / "0" / "0"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    res = generate(GenerateConfig(data=str(images), out=str(store), views=2, topk=2, samples_per_shard=64,
                                  views_per_shard=2, workers=0, progress=False, repair=True), teacher=teacher())
    assert res.shards_written == 1 and tree_bytes(store) == before
    r = cli(capsys, "train", images, "--labels", store, "--out", tmp_path / "run", "--student", "test_resnet",
            "--epochs", "1", "-b", "4", "--img-size", "32", "-j", "0", "--quiet")
    assert r.returncode == 0, r.stderr
