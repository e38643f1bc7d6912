"""One view path, two renderers: the torch renderer gives Pillow's bytes through every stage (issue 22).

The op-by-op parity fuzzer is tests/test_render_torch.py; here the whole pipeline runs with each
renderer on real files: stores, replayed batches, training, verify and the drift check.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import zarr

from conftest import cli_inprocess as cli, make_imagefolder, save_teacher, tree_bytes
from relabel.stages.generate import GenerateConfig, generate
from relabel.storage import ConfigError, LabelStore

GEN = dict(teacher="test_resnet", views=3, topk=2, img_size=32, samples_per_shard=64, views_per_shard=2,
           batch_size=48, progress=False, workers=0, device="cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("renderers")
    folder = make_imagefolder(root / "train", per_class=24)  # 72 samples, two sample blocks, erase on below
    ckpt = save_teacher(root / "t.pth")
    recipe = root / "usi-erase.json"
    recipe.write_text(json.dumps({"base": "usi", "erase_prob": 0.5}))
    stores = {}
    for r, kernel in (("pillow", "auto"), ("torch", "auto"), ("torch", "matmul"), ("torch", "taps")):
        name = r if kernel == "auto" else f"{r}-{kernel}"  # auto times both kernels, then keeps one
        stores[name] = root / f"labels-{name}"
        res = generate(GenerateConfig(data=str(folder), out=str(stores[name]), teacher_checkpoint=str(ckpt),
                                      recipe=str(recipe), renderer=r, render_kernel=kernel, encoding="f32", **GEN))
        assert res.complete
    return root, folder, ckpt, stores


@pytest.mark.parametrize("store", ["torch", "torch-matmul", "torch-taps"])
def test_a_torch_rendered_store_equals_the_pillow_one(world, store):
    """With each resize kernel (and auto's pick): the render kernel is no part of a store."""
    _, _, _, stores = world
    a, b = tree_bytes(stores["pillow"]), tree_bytes(stores[store])
    assert set(a) == set(b)
    assert {k for k in a if a[k] != b[k]} == {"zarr.json"}  # labels, status, seals, keys: the same bytes
    ha, hb = (json.loads(x["zarr.json"])["attributes"]["relabel"] for x in (a, b))
    assert (ha.pop("renderer"), hb.pop("renderer")) == ("pillow", "torch") and ha == hb
    assert LabelStore.open(stores["pillow"]).label_set_digest() == LabelStore.open(stores[store]).label_set_digest()


def test_replay_loader_yields_the_same_pixels_with_either_renderer(world):
    import relabel

    _, folder, _, stores = world
    loaders = {r: relabel.ReplayLoader(str(folder), str(stores["pillow"]), batch_size=8, workers=0, renderer=r,
                                       device="cpu", render_kernel="taps" if r == "torch" else "auto")
               for r in ("pillow", "torch")}
    for epoch in range(3):
        for ld in loaders.values():
            ld.set_epoch(epoch)
        n = 0
        for bp, bt in zip(loaders["pillow"], loaders["torch"]):
            for key in ("pixels", "positions", "lam", "partner", "topk_index", "topk_logp", "y", "y_partner"):
                assert torch.equal(bp[key], bt[key]), (epoch, key)
            n += 1
        assert n == len(loaders["pillow"]) > 0


def test_training_is_identical_with_either_renderer(world, tmp_path, capsys):
    _, folder, _, stores = world
    losses = {}
    for r in ("pillow", "torch"):
        out = tmp_path / r
        res = cli(capsys, "train", folder, "--labels", stores["torch"], "--out", out, "--student", "test_resnet",
                  "--epochs", "1", "-b", "8", "--img-size", "32", "-j", "0", "--quiet", "--device", "cpu",
                  "--renderer", r, "--render-kernel", "matmul")
        assert res.returncode == 0, res.stderr
        losses[r] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["losses"]
    assert losses["pillow"] == losses["torch"] and len(losses["torch"]) > 0


def test_verify_and_the_drift_check_run_through_the_torch_renderer(world, tmp_path, capsys):
    root, folder, ckpt, stores = world
    r = cli(capsys, "verify", stores["pillow"], folder, "--samples", "8", "--teacher-checkpoint", ckpt,
            "--renderer", "torch", "--render-kernel", "taps", "--device", "cpu")
    assert r.returncode == 0 and "checked 8 views" in r.stdout, r.stdout + r.stderr
    # a recorded op hash that the torch renderer does not reproduce is named, as with Pillow
    out = tmp_path / "s"
    shutil.copytree(stores["pillow"], out)
    g = zarr.open_group(str(out), mode="r+")
    h = dict(g.attrs["relabel"])
    h["replay_check"]["ops"]["op:SolarizeAdd"] = "0" * 16
    g.attrs["relabel"] = h
    for renderer in ("pillow", "torch"):
        with pytest.raises(relabel_error(), match="SolarizeAdd renders differently"):
            import relabel

            relabel.ReplayLoader(str(folder), str(out), batch_size=8, workers=0, renderer=renderer, device="cpu")


def relabel_error():
    from relabel.storage import RelabelError

    return RelabelError


def test_a_recipe_no_renderer_can_render_and_an_unknown_renderer_are_one_line(world, tmp_path, capsys):
    _, folder, ckpt, stores = world
    bad = tmp_path / "lanczos.yaml"
    bad.write_text("base: usi\ninterpolation: lanczos\n")
    r = cli(capsys, "generate", folder, "--out", tmp_path / "s", "--teacher-checkpoint", ckpt, "--recipe", bad,
            "--teacher", "test_resnet", "--img-size", "32", "--workers", "0", "--quiet")
    assert r.returncode == 2 and "'lanczos' cannot resample the geometric" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()
    r = cli(capsys, "generate", folder, "--out", tmp_path / "s", "--teacher-checkpoint", ckpt, "--renderer", "gpu",
            "--teacher", "test_resnet", "--topk", "2", "--img-size", "32", "--workers", "0", "--quiet")
    assert r.returncode == 2 and "--renderer must be one of auto, pillow, torch (got 'gpu')" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    import relabel

    with pytest.raises(ConfigError, match="renderer"):
        relabel.ReplayLoader(str(folder), str(stores["pillow"]), batch_size=8, workers=0, renderer="cuda")


def test_auto_picks_pillow_on_cpu_and_torch_on_cuda():
    from relabel.views import resolve_renderer

    assert resolve_renderer("auto", "cpu") == "pillow" and resolve_renderer("auto", None) == "pillow"
    assert resolve_renderer("auto", "cuda") == "torch" and resolve_renderer("pillow", "cuda") == "pillow"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_renders_the_cpu_bytes(world):
    """On a GPU machine: the same views rendered on CUDA equal the CPU (Pillow) bytes."""
    import relabel

    _, folder, _, stores = world
    cpu = relabel.ReplayLoader(str(folder), str(stores["pillow"]), batch_size=8, workers=0, renderer="pillow")
    gpu = relabel.ReplayLoader(str(folder), str(stores["pillow"]), batch_size=8, workers=0, renderer="torch",
                               device="cuda")
    for bc, bg in zip(cpu, gpu):
        assert np.array_equal(bc["pixels"].numpy(), bg["pixels"].cpu().numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_store_made_on_cuda_with_the_torch_renderer_has_the_cpu_labels(world, tmp_path):
    """On a GPU machine: views rendered on the device (side stream, one unit ahead) label as on the CPU.
    The teacher runs in fp32 on both, so the labels must agree within fp32 noise (verify's tolerance)."""
    root, folder, ckpt, stores = world
    out = tmp_path / "cuda"
    generate(GenerateConfig(data=str(folder), out=str(out), teacher_checkpoint=str(ckpt), recipe=str(root / "usi-erase.json"),
                            renderer="torch", encoding="f32", precision="fp32",
                            **{**GEN, "device": "cuda"}))
    from relabel.stages.verify import verify

    rep = verify(str(out), str(folder), samples=64, teacher_checkpoint=str(ckpt), device="cpu", renderer="pillow")
    assert rep.ok and rep.checked > 0, rep


@pytest.mark.parametrize("recipe", ["usi", "simple"])
@pytest.mark.parametrize("size", [8, 32, 224])
def test_the_torch_renderer_matches_pillows_canonical_renders(recipe, size):
    """The check generate runs before a non-Pillow renderer labels anything: both resize pass orders
    and every op; on CPU it must find nothing (RELABEL_PARITY_DEVICE picks the device)."""
    import os

    from relabel.views.replay_check import op_hashes, renderer_parity
    from relabel.views import RECIPES, ViewRenderer, create_renderer

    for kernel in ("matmul", "taps"):
        r = create_renderer("torch", ViewRenderer(RECIPES[recipe], 0, size), kernel=kernel)
        assert "resize:tall" in op_hashes(r)
        assert renderer_parity(r, os.environ.get("RELABEL_PARITY_DEVICE", "cpu")) == [], kernel
