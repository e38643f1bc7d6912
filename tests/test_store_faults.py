"""A label store that was edited, damaged or raced on: detected, named, and repaired (issue 13)."""
from __future__ import annotations

import multiprocessing as mp
import shutil
from pathlib import Path

import pytest
import zarr

from conftest import cli_inprocess as cli, make_imagefolder, save_teacher, tree_bytes
from relabel.stages.generate import GenerateConfig, generate
from relabel.storage import LabelStore, UserError

pytestmark = pytest.mark.faults

GEN = dict(teacher="test_resnet", views=4, topk=2, img_size=32, samples_per_shard=64, views_per_shard=2,
           batch_size=32, progress=False, workers=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("storefaults")
    folder = make_imagefolder(root / "train", per_class=30)  # 90 samples: two sample blocks
    ckpt = save_teacher(root / "t.pth")
    ref = root / "ref"
    generate(GenerateConfig(data=str(folder), out=str(ref), teacher_checkpoint=str(ckpt), **GEN))
    return root, folder, ckpt, ref


def _cfg(world, out, **kw):
    root, folder, ckpt, _ = world
    return GenerateConfig(data=str(folder), out=str(out), teacher_checkpoint=str(ckpt), **{**GEN, **kw})


def _copy(world, tmp_path) -> Path:
    out = tmp_path / "s"
    shutil.copytree(world[3], out)
    return out


def _edit_header(out: Path, **changes) -> None:
    g = zarr.open_group(str(out), mode="r+")
    h = dict(g.attrs["relabel"])
    h.update(changes)
    g.attrs["relabel"] = h


def test_stale_header_never_shrinks_the_view_axis(world, tmp_path):
    """Two writers grow one store at once, each holding the header it read at the start."""
    out = _copy(world, tmp_path)
    a, b = LabelStore.open(out, mode="r+"), LabelStore.open(out, mode="r+")
    a.extend_views(8)
    b.extend_views(6)  # its header still says 4 views
    s = LabelStore.open(out)
    assert s.header.views == 8 and s.group["topk_index"].shape[0] == 8 and s.done_views().shape[0] == 4
    assert b.header.views == 8


@pytest.mark.parametrize("change, needle", [
    ({"num_classes": 10}, "10 classes but the dataset has 3"),
    ({"num_samples": 10 ** 12}, "does not match array"),
    ({"views": 40}, "does not match array"),
    ({"topk": 1}, "does not match array"),
])
def test_header_is_checked_against_the_arrays(world, tmp_path, change, needle, capsys):
    out = _copy(world, tmp_path)
    _edit_header(out, **change)
    with pytest.raises(UserError, match=needle):
        LabelStore.open(out)
    r = cli(capsys, "info", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("what", ["status_lost", "done_flipped", "keys_flipped", "array_meta", "group_meta"])
def test_damage_is_named_and_repair_restores_the_store(world, tmp_path, what, capsys):
    root, folder, ckpt, ref = world
    out = _copy(world, tmp_path)
    if what == "status_lost":  # silently "pending" once: samples dropped while verify said OK
        (out / "status" / "c" / "1" / "0").unlink()
    elif what == "done_flipped":
        _damage(out / "done" / "c" / "0" / "1")
    elif what == "keys_flipped":
        _damage(next((out / "keys" / "c").glob("*")))
    elif what == "array_meta":
        (out / "topk_logp" / "zarr.json").write_text("{ not json")
    else:
        (out / "zarr.json").write_text("{ not json")
    for args in (("info", out), ("verify", out, folder, "--samples", "0")):
        r = cli(capsys, *args)
        assert r.returncode in ((0, 1, 2) if args[0] == "info" else (1, 2)) and "Traceback" not in r.stderr, r.stderr
        assert "damaged" in r.stderr or "missing" in r.stderr, r.stderr
        if r.returncode == 2:
            assert "generate --repair" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    generate(_cfg(world, out, repair=True))
    assert tree_bytes(out) == tree_bytes(ref)


def _create(out, q):
    try:
        generate(GenerateConfig(**q))
        q = "ok"
    except Exception as e:  # noqa: BLE001 - reported to the parent
        q = f"{type(e).__name__}: {e}"
    print(q, flush=True)


def test_concurrent_creation_gives_one_good_store(world, tmp_path):
    from dataclasses import asdict

    out = tmp_path / "s"
    cfg = asdict(_cfg(world, out))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_create, args=(out, cfg)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert tree_bytes(out) == tree_bytes(world[3])
    assert not list(tmp_path.glob("s.creating*"))


@pytest.mark.parametrize("args, needle", [
    (["--views-per-shard", "0"], "--views-per-shard must be a whole number from 1 to 65,535"),
    (["--views", "100000"], "--views must be a whole number from 1 to 65,535"),
    (["--img-size", "0"], "--img-size must be a whole number from 8 to 4096"),
    (["--img-size", "-3"], "--img-size must be a whole number from 8 to 4096"),
    (["--samples-per-shard", str(1 << 22)], "--samples-per-shard must be a whole number from 1 to 1,048,576"),
])
def test_generate_refuses_absurd_values(world, tmp_path, args, needle, capsys):
    root, folder, ckpt, _ = world
    r = cli(capsys, "generate", folder, "--out", tmp_path / "s", "--teacher", "test_resnet", "--teacher-checkpoint", ckpt,
            *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("recipe, needle", [
    ("base: usi\nscale: big\n", "setting 'scale' has a wrong value"),
    ("base: usi\nversion: 99\n", "version 99"),
    ("base: usi\nhflip: [1]\n", "setting 'hflip'"),
    ("base: usi\nmix_group: 2.5\n", "setting 'mix_group'"),
])
def test_bad_recipe_files_are_one_line(world, tmp_path, recipe, needle):
    from relabel.views import create_recipe

    f = tmp_path / "r.yaml"
    f.write_text(recipe)
    with pytest.raises(UserError, match=needle):
        create_recipe(str(f))


def test_verify_refuses_negative_samples(world, capsys):
    root, folder, _, ref = world
    r = cli(capsys, "verify", ref, folder, "--samples", "-5")
    assert r.returncode == 2 and "--samples must be a whole number at least 0" in r.stderr


def test_two_writers_split_the_shards_through_claims(world, tmp_path):
    """A shard claimed by a live process is left to it; a claim of a dead one is taken over."""
    import os
    import socket
    import subprocess
    import sys

    out = tmp_path / "s"
    cfg = _cfg(world, out)
    store = LabelStore.create(out, LabelStore.open(world[3]).header, LabelStore.open(world[3]).keys,
                       LabelStore.open(world[3]).sample_classes())
    n = len(store.pending_shards())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # a live "other writer"
    try:
        (out / ".claims").mkdir()
        (out / ".claims" / "0.1").write_text(f"{socket.gethostname()} {other.pid}")
        s = generate(cfg)
        assert s.shards_written == n - 1 and not s.complete
        assert [(sh.vb, sh.sb) for sh in LabelStore.open(out).pending_shards()] == [(0, 1)]
    finally:
        other.kill()
        other.wait()
    s = generate(cfg)  # its process is gone: the claim is stale and taken over
    assert s.shards_written == 1 and s.complete and not os.listdir(out / ".claims")
    assert tree_bytes(out) == tree_bytes(world[3])
