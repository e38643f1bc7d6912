"""Labels are never silently wrong (issue 12): I/O faults, class spaces, precision, non-finite
teacher outputs, encoding bounds, pixel drift. Each test injects the fault on real files."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import cli_inprocess, make_imagefolder, save_teacher, tree_bytes
from relabel.stages.generate import GenerateConfig, generate
from relabel.storage import LabelStore, StoreHeader, UserError
from relabel.storage.encoding import ValueEncoding
from relabel.storage.sources import ImageFolderSource
from relabel.storage.order import store_order
from relabel.storage.store import STATUS_OK, STATUS_UNREADABLE

pytestmark = pytest.mark.faults

GEN = dict(teacher="test_resnet", views=5, topk=2, img_size=32, samples_per_shard=64, views_per_shard=3,
           batch_size=32, progress=False, retry_wait=0.01)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("right")
    folder = make_imagefolder(root / "train", per_class=8)
    ckpt = save_teacher(root / "t.pth")
    ref = root / "ref"
    generate(GenerateConfig(data=str(folder), out=str(ref), teacher_checkpoint=str(ckpt), workers=0, **GEN))
    return root, folder, ckpt, ref


def _flaky_read(monkeypatch, key_suffix: str, marker: Path | None, always: bool = False):
    """Reads of one image raise OSError: once (a marker file records it, across worker processes)
    or every time. A fault in the storage below us, not in our code."""
    orig = ImageFolderSource.read

    def read(self, i):
        if self.keys[i].endswith(key_suffix) and (always or not marker.exists()):
            if marker is not None:
                marker.write_text("failed once")
            raise OSError(5, "Input/output error (injected)")
        return orig(self, i)

    monkeypatch.setattr(ImageFolderSource, "read", read)


@pytest.mark.parametrize("workers", [0, 2])
def test_transient_read_error_is_retried_never_a_label(world, tmp_path, monkeypatch, workers):
    root, folder, ckpt, ref = world
    marker = tmp_path / "failed"
    _flaky_read(monkeypatch, "bee_003", marker)
    out = tmp_path / "s"
    generate(GenerateConfig(data=str(folder), out=str(out), teacher_checkpoint=str(ckpt), workers=workers, **GEN))
    assert marker.exists()  # the fault did fire
    assert tree_bytes(out) == tree_bytes(ref)


def test_persistent_read_error_fails_the_shard_and_a_rerun_resumes(world, tmp_path, monkeypatch):
    root, folder, ckpt, ref = world
    out = tmp_path / "s"
    cfg = GenerateConfig(data=str(folder), out=str(out), teacher_checkpoint=str(ckpt), workers=0,
                         read_retries=2, **GEN)
    with monkeypatch.context() as m:
        _flaky_read(m, "cat_005", None, always=True)
        with pytest.raises(UserError, match=r"could not be read and stay pending .*cat_005.*rerun"):
            generate(cfg)
    store = LabelStore.open(out)
    assert not store.complete and (store.status() != STATUS_UNREADABLE).all()  # never "unreadable"
    generate(cfg)  # the storage is healthy again
    assert tree_bytes(out) == tree_bytes(ref)


def test_unreadable_is_sticky_across_view_blocks(world, tmp_path):
    """An image that decoded for the first views and is broken when views are added: every view
    block ends up calling it unreadable, and the store equals one made on the broken data."""
    root, folder, ckpt, _ = world
    data = tmp_path / "data"
    make_imagefolder(data, per_class=8)
    out = tmp_path / "grown"
    base = dict(GEN, views=3)
    generate(GenerateConfig(data=str(data), out=str(out), teacher_checkpoint=str(ckpt), workers=0, **base))
    keys = LabelStore.open(out).keys
    victim = keys[10]  # not among the first samples the replay check hashes
    path = next((data / victim).parent.glob(Path(victim).name + ".*"))
    path.write_bytes(b"\xff\xd8\xff\xe0 broken now")
    generate(GenerateConfig(data=str(data), out=str(out), teacher_checkpoint=str(ckpt), workers=0, **dict(base, views=6)))
    store = LabelStore.open(out)
    st = store.block_status()
    assert (st[:, 10] == STATUS_UNREADABLE).all() and store.status()[10] == STATUS_UNREADABLE
    fresh = tmp_path / "fresh"
    generate(GenerateConfig(data=str(data), out=str(fresh), teacher_checkpoint=str(ckpt), workers=0,
                            **dict(base, views=6)))
    a, b = tree_bytes(out), tree_bytes(fresh)
    assert a.keys() == b.keys()
    assert [k for k in a if k != "zarr.json" and a[k] != b[k]] == []
    ha, hb = (json.loads(x["zarr.json"])["attributes"]["relabel"] for x in (a, b))
    assert {k: v for k, v in ha.items() if k != "replay_check"} == {k: v for k, v in hb.items() if k != "replay_check"}


def test_readers_refuse_rows_that_cannot_be_a_topk(tmp_path):
    h = StoreHeader(num_samples=8, views=2, topk=3, num_classes=5, class_names=list("abcde"), fingerprint="f" * 64,
                    teacher={"model": "x", "num_classes": 5}, recipe={"name": "usi"}, seed=0, img_size=32,
                    samples_per_shard=8, views_per_shard=2)
    store = LabelStore.create(tmp_path / "s", h, store_order([f"k{i}" for i in range(8)], h.seed))
    idx = np.tile(np.array([0, 1, 2]), (2, 8, 1))
    lp = np.log(np.tile(np.array([0.5, 0.2, 0.2, 0.1]), (2, 8, 1)))
    idx[1, 5] = [3, 3, 1]  # a class twice: no real top-k looks like this
    store.write_shard(store.shard(0, 0), 0, idx, lp, np.full(8, STATUS_OK))
    s = LabelStore.open(tmp_path / "s")
    s.read_view(0)
    with pytest.raises(UserError, match=rf"cannot be a real top-k .*'{store.keys[5]}'.*\[3, 3, 1\]"):
        s.read_view(1)
    with pytest.raises(UserError, match="shard 0/0"):
        s.gather(np.array([5]), np.array([1]))


def test_all_zero_rows_marked_ok_are_refused(tmp_path):
    """What an unwritten view looks like (class 0 k times, log p 0) must never pass as a label."""
    h = StoreHeader(num_samples=4, views=1, topk=1, num_classes=3, class_names=list("abc"), fingerprint="f" * 64,
                    teacher={"model": "x", "num_classes": 3}, recipe={"name": "usi"}, seed=0, img_size=32,
                    samples_per_shard=4, views_per_shard=1)
    store = LabelStore.create(tmp_path / "s", h, store_order([f"k{i}" for i in range(4)], h.seed))
    store.write_shard(store.shard(0, 0), 0, np.zeros((1, 4, 1), np.int64), np.zeros((1, 4, 2), np.float32),
                      np.full(4, STATUS_OK))
    with pytest.raises(UserError, match="cannot be a real top-k"):
        LabelStore.open(tmp_path / "s").read_view(0)


# ------------------------------------------------------------------------------- class spaces
def test_teacher_with_other_classes_is_refused_without_a_map(world, tmp_path, capsys):
    root, folder, _, _ = world
    five = save_teacher(tmp_path / "five.pth", num_classes=5)
    r = cli_inprocess(capsys, "generate", folder, "--out", tmp_path / "s", "--teacher", "test_resnet", "--teacher-checkpoint", five,
                "--views", "1", "--topk", "2", "--img-size", "32", "--workers", "0", "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "5 classes but the dataset has 3" in r.stderr and "--class-map" in r.stderr
    assert not (tmp_path / "s").exists()
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"ant": 4, "bee": 0, "cat": 2}))
    r = cli_inprocess(capsys, "generate", folder, "--out", tmp_path / "s", "--teacher", "test_resnet", "--teacher-checkpoint", five,
            "--views", "1", "--topk", "2", "--img-size", "32", "--workers", "0", "--quiet", "--class-map", cmap)
    assert r.returncode == 0, r.stderr
    h = LabelStore.open(tmp_path / "s").header
    assert h.class_map == [4, 0, 2] and h.num_classes == 5 and h.class_names == ["ant", "bee", "cat"]
    np.testing.assert_array_equal(h.teacher_class(np.array([0, 1, 2, -1])), [4, 0, 2, -1])
    for bad, msg in (({"ant": 4, "bee": 0}, "no entry for dataset class 'cat'"),
                     ({"ant": 4, "bee": 9, "cat": 2}, "outside the teacher's 0..4"),
                     ({"ant": 1, "bee": 1, "cat": 2}, "same teacher class"),
                     ({"ant": "x", "bee": 1, "cat": 2}, "not a whole number")):
        cmap.write_text(json.dumps(bad))
        r = cli_inprocess(capsys, "generate", folder, "--out", tmp_path / "s2", "--teacher", "test_resnet", "--teacher-checkpoint",
                    five, "--views", "1", "--topk", "2", "--workers", "0", "--class-map", cmap)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_builtin_imagenet_class_map(tmp_path):
    from relabel.classmap import imagenet1k_synsets, resolve_class_map

    syn = imagenet1k_synsets()
    assert len(syn) == 1000 and syn[0] == "n01440764"
    names = [syn[999], syn[5], syn[17]]
    assert resolve_class_map("imagenet1k", sorted(names), 1000) == [5, 17, 999]
    with pytest.raises(UserError, match="no entry for dataset class 'cat'"):
        resolve_class_map("imagenet1k", ["cat"], 1000)


# ------------------------------------------------------------------------------- precision
def test_resolved_precision_is_recorded_verified_and_resume_checked(world, tmp_path, capsys):
    root, folder, ckpt, ref = world
    t = LabelStore.open(ref).header.teacher
    assert (t["precision"], t["device_type"], t["tf32"]) == ("fp32", "cpu", False)
    out = tmp_path / "bf16"
    args = ["generate", folder, "--out", out, "--teacher", "test_resnet", "--teacher-checkpoint", ckpt, "--views", "2",
            "--topk", "2", "--img-size", "32", "--workers", "0", "--quiet"]
    assert cli_inprocess(capsys, *args, "--precision", "bf16").returncode == 0
    assert LabelStore.open(out).header.teacher["precision"] == "bf16"
    # bf16 labels checked against an fp32 recomputation with bf16's tolerance, not fp32's
    r = cli_inprocess(capsys, "verify", out, folder, "--teacher-checkpoint", ckpt, "--samples", "32")
    assert "verify OK" in r.stdout
    r = cli_inprocess(capsys, *args[:-1], "--views", "3", "--precision", "fp32", "--quiet")
    assert r.returncode == 2 and "teacher precision (store: bf16, now: fp32)" in r.stderr


# ------------------------------------------------------------------------------- non-finite
def test_non_finite_teacher_outputs_are_refused(world, tmp_path, capsys):
    root, folder, ckpt, _ = world
    sd = torch.load(ckpt, weights_only=True)
    sd["fc.weight"][1, 0] = float("nan")
    bad = tmp_path / "nan.pth"
    torch.save(sd, bad)
    r = cli_inprocess(capsys, "generate", folder, "--out", tmp_path / "s", "--teacher", "test_resnet", "--teacher-checkpoint", bad,
                "--views", "2", "--topk", "2", "--img-size", "32", "--workers", "0", "--quiet")
    assert r.returncode == 2 and "not finite" in r.stderr and "first: sample" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    store = LabelStore.open(tmp_path / "s")
    assert not store.complete and (store.done_views() == 0).all()


@pytest.mark.parametrize("bad_call", [1, 5, 9])
def test_a_non_finite_batch_is_refused_wherever_it_falls_in_the_pipeline(world, tmp_path, bad_call):
    """Stage one reads a unit's labels back only after queueing the next unit's teacher work: a
    non-finite batch (the first, one in the middle, the very last) still stops the run naming its
    own view, and every earlier shard is written, none after."""
    import timm

    from relabel.teacher import FunctionTeacher

    root, folder, ckpt, _ = world
    model = timm.create_model("test_resnet", num_classes=3)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    calls = []

    def fn(pixels):
        calls.append(len(pixels))
        out = model((pixels.float() / 255 - 0.5) / 0.5)
        if len(calls) == bad_call:
            out[-1, 0] = float("nan")  # one row of this batch
        return out

    # 24 images in one mix group, 8 per teacher batch: 3 batches per view, one view per shard
    cfg = GenerateConfig(data=str(folder), out=str(tmp_path / "s"), views=3, topk=2, img_size=32, recipe="simple",
                         samples_per_shard=64, views_per_shard=1, batch_size=8, workers=0, progress=False)
    with pytest.raises(UserError, match=r"not finite.*first: sample .*view (\d)") as e:
        generate(cfg, teacher=FunctionTeacher(fn, num_classes=3, name="nan-probe", input_size=32))
    view = int(re.search(r"view (\d)", str(e.value)).group(1))
    assert view == (bad_call - 1) // 3
    done = LabelStore.open(tmp_path / "s").done_views()[:, 0]
    assert done.tolist() == [1] * view + [0] * (3 - view)


@pytest.mark.parametrize("where", ["render", "teacher"])
def test_out_of_memory_on_the_next_unit_keeps_the_unit_before(world, tmp_path, monkeypatch, where):
    """A unit's labels wait while the next unit renders and queues its teacher work: running out of
    memory there (or any error) stores the waiting unit first, and the message counts it."""
    import relabel.stages.generate as gen
    from relabel.teacher import FunctionTeacher

    calls = {"render": 0, "teacher": 0}

    def oom_on_second(kind):
        calls[kind] += 1
        if kind == where and calls[kind] == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    real_finish = gen.finish_batch

    def finish(*a, **k):
        oom_on_second("render")
        return real_finish(*a, **k)

    def fn(pixels):
        oom_on_second("teacher")
        return torch.zeros(len(pixels), 3) + torch.arange(3.0)

    monkeypatch.setattr(gen, "finish_batch", finish)
    root, folder, ckpt, _ = world
    # one view per shard and per unit (24 images in one mix group, the whole group in one batch)
    cfg = GenerateConfig(data=str(folder), out=str(tmp_path / "s"), views=3, topk=2, img_size=32, recipe="simple",
                         samples_per_shard=64, views_per_shard=1, batch_size=32, workers=0, progress=False)
    with pytest.raises(UserError, match=r"the 1 shard\(s\) written so far are kept"):
        generate(cfg, teacher=FunctionTeacher(fn, num_classes=3, name="oom-probe", input_size=32))
    assert LabelStore.open(tmp_path / "s").done_views()[:, 0].tolist() == [1, 0, 0]


def test_encodings_refuse_nan_and_keep_their_bound():
    rng = np.random.default_rng(0)
    logp = -np.abs(rng.normal(0, 30, 20000)).astype(np.float32)  # down to ~-120: confident teachers
    for name in ("q8", "f16", "f32"):
        e = ValueEncoding(name)
        back = e.decode(e.encode(logp))
        err = np.abs(np.maximum(logp, e.floor) - back).max()
        assert err <= e.max_error + 1e-7, (name, err)
        with pytest.raises(ValueError, match="NaN"):
            e.encode(np.array([-1.0, np.nan], np.float32))


# ------------------------------------------------------------------------------- pixel drift
def test_pixel_drift_is_detected_by_verify(world, tmp_path, capsys):
    root, folder, ckpt, ref = world
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    out = tmp_path / "s"
    shutil.copytree(ref, out)
    h = LabelStore.open(out).header
    env = h.replay_check["env"]
    assert env["pillow"] and env["machine"] and len(h.replay_check["samples"]) == 4
    assert "op:Rotate" in h.replay_check["ops"]
    r = cli_inprocess(capsys, "verify", out, data, "--teacher-checkpoint", ckpt, "--samples", "4")
    assert "verify OK" in r.stdout
    # the same key, other pixels (a re-encoded copy of the images): named, and verify fails
    victim = sorted(h.replay_check["samples"])[0]
    path = next((data / victim).parent.glob(Path(victim).name + ".*"))
    from PIL import Image

    Image.open(path).convert("RGB").rotate(1).save(path, format=Image.open(path).format)
    r = cli_inprocess(capsys, "verify", out, data, "--teacher-checkpoint", ckpt, "--samples", "0")
    assert r.returncode == 1 and f"image {victim!r} decodes to other pixels" in r.stderr
    # train refuses before a single step, naming it; --allow-pixel-drift trains knowingly
    train = ["train", data, "--labels", out, "--student", "test_resnet", "--epochs", "1", "--batch-size", "8",
             "--workers", "0", "--quiet", "--allow-subset"]
    r = cli_inprocess(capsys, *train, "--out", tmp_path / "run")
    assert r.returncode == 2 and "decodes to other pixels" in r.stderr and "--allow-pixel-drift" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "last.pth").exists()
    # --allow-pixel-drift is for renders that differ, never for other image bytes: those are refused still
    r = cli_inprocess(capsys, *train, "--out", tmp_path / "run2", "--allow-pixel-drift")
    assert r.returncode == 2 and f"image {victim!r} is not the image its labels were made from" in r.stderr, r.stderr
    # an op that renders differently on "another machine": the recorded hash names it
    g = zarr.open_group(str(out), mode="r+")
    attrs = dict(g.attrs["relabel"])
    attrs["replay_check"]["ops"]["op:Sharpness"] = "0" * 16
    g.attrs["relabel"] = attrs
    shutil.rmtree(data)
    shutil.copytree(folder, data)
    r = cli_inprocess(capsys, "verify", out, data, "--teacher-checkpoint", ckpt, "--samples", "0")
    assert r.returncode == 1 and "Sharpness renders differently" in r.stderr
    # ... and --allow-pixel-drift trains knowingly on the same bytes rendered otherwise
    r = cli_inprocess(capsys, *train, "--out", tmp_path / "run3", "--allow-pixel-drift")
    assert r.returncode == 0 and "training anyway: --allow-pixel-drift" in r.stderr, r.stderr  # a log line, in CLI words
    assert "`" not in r.stderr
