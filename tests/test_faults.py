"""Fault injection: kill -9 mid-run, failing writes, damaged shards, dataset drift, odd images, bad CLI
input and hostile files. Run alone with ``pytest -m faults``.

Every fault is real: the generator is a subprocess killed with SIGKILL; write errors come from the
kernel (RLIMIT_FSIZE -> EFBIG); damage is done to the bytes on disk. The only help the tests give is
a wrapper that keeps zarr's temporary shard file open a little longer before writing it, so that a
kill (or a write limit) lands inside a shard write every time instead of by luck.
"""
from __future__ import annotations

import io
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, fsize_limit, make_imagefolder, run_cli, save_teacher, tree_bytes, write_image
from relabel.storage import LabelStore, UserError, open_source

pytestmark = pytest.mark.faults

GEN = ["--teacher", "test_resnet", "--views", "4", "--topk", "2", "--img-size", "32", "--samples-per-shard", "64",
       "--views-per-shard", "2", "--batch-size", "32", "--quiet", "--workers", "0"]
TRAIN = ["--student", "test_resnet", "--epochs", "1", "--batch-size", "8", "--img-size", "32", "--workers", "0",
         "--device", "cpu", "--quiet"]
ARRAYS = ("topk_index", "topk_logp", "status", "done", "keys")
SEED = int(os.environ.get("RELABEL_FAULT_SEED", "20240607"))

# Runs the CLI with zarr's atomic write slowed: the temp file of a label shard exists (empty) for
# RELABEL_FAULT_SLOW_WRITE seconds before its bytes are written and it is renamed into place.
HARNESS = '''
import contextlib, os, sys, time
import zarr.storage._local as L

_orig, _delay = L._atomic_write, float(os.environ.get("RELABEL_FAULT_SLOW_WRITE", "0"))

@contextlib.contextmanager
def _slow(path, mode, exclusive=False):
    with _orig(path, mode, exclusive) as f:
        if _delay and "/topk_" in path.as_posix() and "/c/" in path.as_posix():
            time.sleep(_delay)
        yield f

L._atomic_write = _slow
from relabel.commands.cli import main
sys.argv[0] = "relabel"
main(sys.argv[1:])
'''


# ------------------------------------------------------------------------------------------ helpers
def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    err = r.stderr.strip()
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, r.stderr
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    return err


def assert_same_store(a: Path, b: Path) -> None:
    """Array for array and header for header; then byte for byte (zstd is deterministic)."""
    sa, sb = LabelStore.open(a), LabelStore.open(b)
    assert sa.group.attrs["relabel"] == sb.group.attrs["relabel"]
    for name in ARRAYS:
        x, y = sa.group[name], sb.group[name]
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert np.array_equal(x[...], y[...]), f"{name} differs"
    assert tree_bytes(a) == tree_bytes(b)


def partials(path: Path) -> list[Path]:
    return sorted(path.rglob("*.partial")) if path.exists() else []


def shard_files(path: Path, array: str = "topk_*") -> list[Path]:
    return sorted(path.glob(f"{array}/c/*/*/0")) if path.exists() else []


def assert_no_torn_shards(out: Path) -> None:
    """Every shard file under its final name decodes in full; every shard marked done is intact."""
    store = LabelStore.open(out)
    h = store.header
    for f in shard_files(out):
        name, _, vb, sb, _ = f.relative_to(out).parts
        vb, sb = int(vb), int(sb)
        store.group[name][vb * h.views_per_shard:(vb + 1) * h.views_per_shard,
                          sb * h.samples_per_shard:(sb + 1) * h.samples_per_shard]
    assert store.check_shards() == []


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """relabel.commands.cli.main in this process (no interpreter start-up): exit code, stdout, stderr."""
    from relabel.commands.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, int(e.value.code or 0), out.out, out.err)


def launch(harness: Path, args: list, slow: float = 0.0) -> subprocess.Popen:
    """The CLI through the harness; stderr is a pipe (a file would be under the child's write limits too)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RELABEL_FAULT_SLOW_WRITE": str(slow)}
    return subprocess.Popen([sys.executable, str(harness), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(p: subprocess.Popen, cond, timeout: float = 180.0, poll: float = 0.002) -> bool:
    """True when ``cond()`` holds while ``p`` still runs; False when ``p`` ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            return False
        if cond():
            return True
        time.sleep(poll)
    p.kill()
    raise AssertionError("timed out waiting for a kill point")


def count(path: Path, pattern: str) -> int:
    return len(list(path.glob(pattern))) if path.exists() else 0


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """90 images, a teacher checkpoint and the uninterrupted reference store (2 x 2 shards)."""
    root = tmp_path_factory.mktemp("faults")
    folder = make_imagefolder(root / "train", per_class=30)
    ckpt = save_teacher(root / "t.pth")
    ref = root / "ref"
    run_cli("generate", folder, "--out", ref, "--teacher-checkpoint", ckpt, *GEN)
    harness = root / "harness" / "relabel_fault_harness.py"  # a folder of its own: its folder joins sys.path
    harness.parent.mkdir()
    harness.write_text(HARNESS)
    return root, folder, ckpt, ref, harness


# ------------------------------------------------------------------------------------------ crash
def test_kill9_at_random_moments_then_resume_equals_uninterrupted(tmp_path, base):
    root, _, ckpt, _, harness = base
    rnd = random.Random(SEED)
    folder = make_imagefolder(tmp_path / "big", per_class=100)  # 300 images x 8 views: 5 x 4 shards
    args = ["--teacher-checkpoint", ckpt, *[a if a != "4" else "8" for a in GEN]]
    ref, out = tmp_path / "ref", tmp_path / "out"
    t = time.monotonic()
    r = run_cli("generate", folder, "--out", ref, *args)
    n_shards = count(ref, "topk_index/c/*/*/0")
    assert n_shards == 20, r.stderr
    gen = ["generate", folder, "--out", out, *args]

    def exists(pattern):
        return lambda: lambda: bool(list(out.glob(pattern)))

    def new_file(pattern):
        before = count(out, pattern)
        return lambda: count(out, pattern) > before

    def random_moment():
        """Once 2-3 shards are done, up to 1.5 shards' time later: anywhere in a shard's work."""
        return after_done(rnd.randint(2, 3), rnd.uniform(0, 1.5))

    def after_done(n, frac):
        """Once this run has marked n shards done, wait frac x its own time per shard (machine speed varies)."""
        before, seen = count(out, "done/c/*/*"), {}

        def cond():
            c = count(out, "done/c/*/*") - before
            if c >= 1 and "first" not in seen:
                seen["first"] = time.monotonic()
            if c >= n and "nth" not in seen:
                seen["nth"] = time.monotonic()
                seen["delay"] = frac * (seen["nth"] - seen["first"]) / max(n - 1, 1)
            return "nth" in seen and time.monotonic() - seen["nth"] >= seen["delay"]
        return cond

    # (what, trigger factory, slow shard writes?) -- triggers are built right before each launch
    plan = [
        ("while the store is being created", lambda: lambda: any(out.parent.glob(out.name + "*")), 0.0),
        ("at a random moment of the run", random_moment, 0.0),
        ("right when a new topk_index shard file appears", lambda: new_file("topk_index/c/*/*/0"), 0.0),
        ("inside a topk_index shard write (.partial present)", exists("topk_index/c/*/*/*.partial"), 0.4),
        ("right after a shard was marked done", lambda: after_done(rnd.randint(1, 2), rnd.uniform(0, 0.2)), 0.0),
        ("inside a topk_logp shard write (.partial present)", exists("topk_logp/c/*/*/*.partial"), 0.4),
        ("at a random moment of the run", random_moment, 0.0),
        ("right when a new topk_logp shard file appears", lambda: new_file("topk_logp/c/*/*/0"), 0.0),
    ]
    kills, torn = [], 0
    for what, trigger, slow in plan:
        cond = trigger()
        p = launch(harness, gen, slow)
        hit = wait_for(p, cond)
        p.send_signal(signal.SIGKILL)
        err = p.communicate()[1]
        assert hit, f"the run ended (exit {p.returncode}) before it could be killed {what}:\n{err}"
        left = partials(out)
        state = ("store ready" if out.exists() else
                 "half-made store left aside" if count(tmp_path, "out.*") else "no store yet")
        kills.append((what, len(left), count(out, "done/c/*/*"), state))
        for f in left:  # a write cut short: its bytes never reached the shard's own name
            final = f.parent / f.name.split(".")[0]
            assert not final.exists() or final.stat().st_mtime_ns < f.stat().st_mtime_ns
        torn += bool(left)
        if out.exists():
            assert_no_torn_shards(out)
    assert len(kills) >= 5 and torn >= 2 and kills[-1][2] < n_shards, kills
    run_cli(*gen)
    assert not partials(out) and not list(tmp_path.glob("out.*")), "leftovers of killed writes"
    assert_same_store(out, ref)
    r = run_cli("verify", out, folder, "--teacher-checkpoint", ckpt, "--samples", "16")
    assert "verify OK" in r.stdout
    print(f"\nkill -9 x{len(kills)} (seed {SEED}, {time.monotonic() - t:.0f}s):")
    for what, n_partial, done, state in kills:
        print(f"  {what}: {state}, {done}/{n_shards} shards done, {n_partial} temp file(s) left")


# ------------------------------------------------------------------------------------------ write errors
def test_failing_writes_stop_cleanly_and_resume(tmp_path, base):
    root, folder, ckpt, ref, harness = base
    out = tmp_path / "out"
    gen = ["generate", folder, "--out", out, "--teacher-checkpoint", ckpt, *GEN]
    # 1. the disk "fills" while the store is created: no half-made store is left at --out
    r = subprocess.run([sys.executable, "-m", "relabel", *map(str, gen)], cwd=ROOT, capture_output=True, text=True,
                       preexec_fn=fsize_limit(256), timeout=300)
    one_line_error(r, "could not write the label store", "File too large", "rerun")
    assert not out.exists()
    # 2. the disk "fills" inside the first shard write: limit the running process at that moment
    p = launch(harness, gen, slow=0.5)
    assert wait_for(p, lambda: bool(list(out.glob("topk_*/c/*/*/*.partial"))))
    smallest = min(f.stat().st_size for f in shard_files(ref))
    resource.prlimit(p.pid, resource.RLIMIT_FSIZE, (smallest - 1, smallest - 1))
    err = p.communicate(timeout=300)[1]
    r = subprocess.CompletedProcess(gen, p.returncode, "", err)
    err = one_line_error(r, "could not write shard 0/", "File too large", "free space and rerun to resume")
    assert str(out) in err
    store = LabelStore.open(out)  # still a store, nothing torn, nothing marked done that is not there
    assert not partials(out) and store.check_shards() == [] and not store.complete
    assert_no_torn_shards(out)
    # 3. space is back: the same command finishes and the result is the uninterrupted one
    run_cli(*gen)
    assert_same_store(out, ref)
    assert "verify OK" in run_cli("verify", out, folder, "--teacher-checkpoint", ckpt, "--samples", "8").stdout


# ------------------------------------------------------------------------------------------ corruption
def _flip(path: Path, *positions: int) -> None:
    b = bytearray(path.read_bytes())
    for pos in positions:
        b[pos] ^= 0xFF
    path.write_bytes(bytes(b))


def test_damaged_shards_found_refused_and_repaired(tmp_path, base, capsys):
    root, folder, ckpt, ref, _ = base
    out = tmp_path / "s"
    shutil.copytree(ref, out)
    flipped, cut = out / "topk_logp/c/0/1/0", out / "topk_index/c/1/0/0"
    n = flipped.stat().st_size
    _flip(flipped, n // 4, n // 2, n - 10)  # both views' chunks and the shard index
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    # verify names both and fails
    r = run_cli("verify", out, folder, "--teacher-checkpoint", ckpt, "--samples", "16", check=False)
    assert r.returncode == 1 and "verify FAILED" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "topk_logp/c/0/1/0" in r.stderr and "topk_index/c/1/0/0" in r.stderr and "damaged shards 2" in r.stdout
    # readers refuse: every view touches one of the two damaged shards
    store = LabelStore.open(out)
    for v in range(4):
        with pytest.raises(UserError, match=r"damaged in (topk_logp/c/0/1/0|topk_index/c/1/0/0).*`repair=True`"):
            store.read_view(v)
    # training refuses with one line instead of training on garbage
    if "train" in _commands():
        r = run_cli("train", folder, "--labels", out, "--out", tmp_path / "run", *TRAIN, check=False)
        one_line_error(r, "is damaged in", "relabel generate --repair")
        assert not (tmp_path / "run" / "last.pth").exists()

    # repair recomputes those two shards and nothing else
    def others():
        return {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in shard_files(out)
                if f.parts[-3:-1] not in {("0", "1"), ("1", "0")}}
    before = others()
    assert len(before) == 4
    r = run_cli("generate", folder, "--out", out, "--teacher-checkpoint", ckpt, *GEN, "--repair")
    assert "in 2 shard(s)" in r.stderr and r.stderr.count("repair: ") == 2, r.stdout + r.stderr
    assert others() == before
    assert_same_store(out, ref)
    assert "verify OK" in run_cli("verify", out, folder, "--teacher-checkpoint", ckpt, "--samples", "16").stdout


def test_missing_or_empty_shard_files_are_damage(tmp_path, base):
    """zarr reads a missing or zero-byte shard file as zeros: the store must call that damage."""
    _, _, _, ref, _ = base
    out = tmp_path / "s"
    shutil.copytree(ref, out)
    (out / "topk_logp/c/1/1/0").write_bytes(b"")
    (out / "topk_index/c/0/0/0").unlink()
    store = LabelStore.open(out)
    bad = store.check_shards()
    assert len(bad) == 2 and "topk_logp/c/1/1/0: missing or empty" in str(bad[1]) and "topk_index/c/0/0/0" in str(bad[0])
    for v in range(4):
        with pytest.raises(UserError, match="missing or empty"):
            store.read_view(v)
    with pytest.raises(UserError, match="missing or empty"):
        store.gather(np.array([0]), np.array([0]))


def test_all_unreadable_block_is_not_damage(tmp_path, base):
    """A shard whose labels are all zeros (every image unreadable) still has its file."""
    from relabel.stages.generate import GenerateConfig, generate
    from relabel.stages.verify import verify

    _, _, ckpt, _, _ = base
    data = tmp_path / "d" / "only"
    data.mkdir(parents=True)
    (data / "a.jpg").write_bytes(b"not an image")
    (data / "b.png").write_bytes(b"")
    for c in ("other", "third"):  # three classes, like the teacher
        (data.parent / c).mkdir()
        (data.parent / c / "x.jpg").write_bytes(b"no image either")
    out = tmp_path / "s"
    s = generate(GenerateConfig(data=str(data.parent), out=str(out), teacher="test_resnet",
                                teacher_checkpoint=str(ckpt), views=2, topk=2, img_size=32, samples_per_shard=64,
                                views_per_shard=2, batch_size=8, workers=0, progress=False))
    assert s.complete and s.corrupt_samples == 4
    rep = verify(str(out), str(data.parent), samples=4, teacher_checkpoint=str(ckpt), device="cpu")
    assert rep.ok and not rep.damaged, rep
    assert LabelStore.open(out).read_view(1)[0].shape == (4, 2)


# ------------------------------------------------------------------------------------------ dataset drift
@pytest.mark.parametrize("drift", ["renamed", "removed", "added"])
def test_dataset_drift_needs_allow_subset(tmp_path, base, drift):
    root, folder, ckpt, ref, _ = base
    if "train" not in _commands():
        pytest.skip("'relabel train' is not registered yet; the trainer must refuse drift without --allow-subset")
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    victim = data / "bee" / "bee_004.jpg"
    if drift == "renamed":
        victim.rename(victim.with_name("bee_renamed.jpg"))
        present, images = 89, 90
    elif drift == "removed":
        victim.unlink()
        present, images = 89, 89
    else:
        write_image(data / "cat" / "cat_new.jpg", np.random.default_rng(5), 2)
        present, images = 90, 91
    r = run_cli("train", data, "--labels", ref, "--out", tmp_path / "run", *TRAIN, check=False)
    one_line_error(r, f"{present} of the store's 90 keys are in DATA, which has {images} images", "--allow-subset")
    assert not (tmp_path / "run" / "last.pth").exists()
    if drift == "renamed":  # with consent it trains on the images that have labels
        r = run_cli("train", data, "--labels", ref, "--out", tmp_path / "run", *TRAIN, "--allow-subset")
        assert re.search(r"on \d+ of 90 labelled samples", r.stderr), r.stderr


# ------------------------------------------------------------------------------------------ odd images
def _odd_images(folder: Path) -> dict[str, bool]:
    """Every kind of awkward file; value: whether it must decode (status 1) or be unreadable (2)."""
    d = folder / "odd"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(good, format="JPEG")
    (d / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is a text file, not a JPEG\n" * 10)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "one_pixel.png")
    Image.new("L", (10000, 10000), 90).save(d / "huge.png")  # 1e8 px: above PIL's warning limit, decoded
    Image.new("1", (14000, 13000), 1).save(d / "bomb.png")  # 1.82e8 px: above PIL's error limit: unreadable
    Image.new("CMYK", (40, 32), (255, 0, 0, 0)).save(d / "cmyk.jpg")  # pure cyan
    Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (32, 1)), "L").save(d / "gray.jpg")
    Image.fromarray((np.tile(np.linspace(1000, 60000, 40), (32, 1))).astype(np.uint16)).save(d / "deep16.png")
    rgba = np.zeros((32, 40, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 180, 128
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    return {"truncated": False, "empty": False, "text": False, "one_pixel": True, "huge": True, "bomb": False,
            "cmyk": True, "gray": True, "deep16": True, "alpha": True}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_odd_images_decode_or_are_recorded_unreadable(tmp_path, base):
    from relabel.views import ViewRenderer, create_recipe, decode_image

    _, _, ckpt, _, _ = base
    data = make_imagefolder(tmp_path / "data", per_class=4, classes=("plain", "zebra"))  # + odd: the teacher's 3
    expect = _odd_images(data)
    assert Image.open(data / "odd" / "deep16.png").mode == "I;16"
    out = tmp_path / "s"
    r = run_cli("generate", data, "--out", out, "--teacher-checkpoint", ckpt,
                *[a if a != "4" else "2" for a in GEN])
    assert "Traceback" not in r.stderr and "unreadable=4" in r.stderr, r.stderr
    store = LabelStore.open(out)
    st = store.status()
    for name, ok in expect.items():
        assert st[store.key_index[f"odd/{name}"]] == (1 if ok else 2), name
    assert (st == 1).sum() == 2 * 4 + 6 and store.complete and store.check_shards() == []
    # what the teacher saw looks right
    pix = {n: np.asarray(decode_image((data / "odd" / f).read_bytes()))
           for n, f in (("cmyk", "cmyk.jpg"), ("deep16", "deep16.png"), ("alpha", "alpha.png"),
                        ("gray", "gray.jpg"), ("one_pixel", "one_pixel.png"))}
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8 for p in pix.values())
    assert np.abs(pix["cmyk"].reshape(-1, 3).mean(0) - (0, 255, 255)).max() < 8  # CMYK converted, not inverted
    d16 = pix["deep16"][..., 0].astype(int)
    assert d16.min() <= 10 and d16.max() >= 225 and np.all(np.diff(d16[0]) >= 0)  # scaled, not clipped white
    assert np.abs(pix["alpha"].reshape(-1, 3).mean(0) - (0, 180, 0)).max() < 2  # alpha dropped, colour kept
    assert np.array_equal(pix["gray"][..., 0], pix["gray"][..., 2])
    renderer = ViewRenderer(create_recipe(store.header.recipe), store.header.seed, store.header.img_size)
    for name in ("deep16", "gray", "one_pixel", "huge"):
        src = (data / "odd" / f"{name}.{'jpg' if name == 'gray' else 'png'}").read_bytes()
        view = renderer.render(f"odd/{name}", 0, decode_image(src))
        assert view.shape == (32, 32, 3) and view.dtype == np.uint8
        if name == "deep16":
            assert 0 < view.mean() < 255 and view.std() > 0  # neither all black nor all white
    r = run_cli("verify", out, data, "--teacher-checkpoint", ckpt, "--samples", "12")
    assert "verify OK" in r.stdout


# ------------------------------------------------------------------------------------------ CLI input
_G = ["--teacher-checkpoint", "{ckpt}", *GEN]
_G_NO_TEACHER = [a for i, a in enumerate(_G) if a != "--teacher" and (i == 0 or _G[i - 1] != "--teacher")]
_T = TRAIN
# (id, argv with {placeholders}, what the one line must say; None: the command's own wording)
CLI_CASES = [
    ("generate-missing-data", ["generate", "{nope}", "--out", "{out}", *_G], "no such file"),
    ("generate-missing-checkpoint", ["generate", "{data}", "--out", "{out}", "--teacher-checkpoint", "{nope}", *GEN],
     "checkpoint not found"),
    ("generate-wrong-model", ["generate", "{data}", "--out", "{out}", *_G_NO_TEACHER, "--teacher", "no_such_model_xyz"],
     "unknown model 'no_such_model_xyz'"),
    ("generate-k-above-classes", ["generate", "{data}", "--out", "{out}", *_G, "--topk", "9"],
     "above the teacher's number of classes (3)"),
    ("generate-views-0", ["generate", "{data}", "--out", "{out}", *_G, "--views", "0"], "--views must be a whole number from 1 to 65,535"),
    ("generate-views-negative", ["generate", "{data}", "--out", "{out}", *_G, "--views", "-2"], "--views must be a whole number from 1 to 65,535"),
    ("generate-out-is-file", ["generate", "{data}", "--out", "{afile}", *_G], "is a file"),
    ("generate-out-not-a-store", ["generate", "{data}", "--out", "{data}", *_G], "not a relabel label store"),
    ("generate-bad-recipe", ["generate", "{data}", "--out", "{out}", *_G, "--recipe", "nope"], "recipe"),
    ("generate-bad-shard-size", ["generate", "{data}", "--out", "{out}", *_G, "--samples-per-shard", "10"],
     "--samples-per-shard"),
    ("generate-unknown-flag", ["generate", "{data}", "--out", "{out}", *_G, "--bogus-flag"], "No such option"),
    ("verify-missing-store", ["verify", "{nope}", "{data}"], "no label store"),
    ("verify-store-is-file", ["verify", "{afile}", "{data}"], "no label store"),
    ("verify-not-a-store", ["verify", "{data}", "{data}"], "not a relabel label store"),
    ("verify-missing-data", ["verify", "{ref}", "{nope}"], "no such file"),
    ("verify-missing-checkpoint", ["verify", "{ref}", "{data}", "--teacher-checkpoint", "{nope}"],
     "checkpoint not found"),
    ("info-missing", ["info", "{nope}"], "no label store"),
    ("info-file", ["info", "{afile}"], "no label store"),
    ("info-not-a-store", ["info", "{data}"], "not a relabel label store"),
    ("train-missing-data", ["train", "{nope}", "--labels", "{ref}", "--out", "{out}", *_T], "no such file"),
    ("train-missing-labels", ["train", "{data}", "--labels", "{nope}", "--out", "{out}", *_T], "no label store"),
    ("train-wrong-model", ["train", "{data}", "--labels", "{ref}", "--out", "{out}", *_T, "--student",
                           "no_such_model_xyz"], "unknown model 'no_such_model_xyz'"),
    ("train-out-is-file", ["train", "{data}", "--labels", "{ref}", "--out", "{afile}", *_T], "is a file"),
    ("train-epochs-0", ["train", "{data}", "--labels", "{ref}", "--out", "{out}", *_T, "--epochs", "0"],
     "--epochs must be a whole number at least 1"),
    ("export-missing-store", ["export", "{nope}", "--to", "{out}"], "no label store"),
    ("export-missing-images", ["export", "{ref}", "--to", "{out}", "--images", "{nope}"], "no such file"),
    ("export-to-is-file", ["export", "{ref}", "--to", "{afile}"], "afile"),
    ("publish-missing-store", ["publish", "{nope}", "{out}"], "no label store"),
    ("publish-dest-is-file", ["publish", "{ref}", "{afile}"], "afile"),
    ("pull-missing-src", ["pull", "{nope}", "{out}"], None),
    ("pull-dest-is-file", ["pull", "{published}", "{afile}"], "afile"),
    ("pull-views-0", ["pull", "{published}", "{out}", "--views", "0"], "--views"),
    ("pull-views-negative", ["pull", "{published}", "{out}", "--views", "-3"], "--views"),
]


def _commands() -> set[str]:
    from relabel.commands.cli import app

    return {c.name or c.callback.__name__ for c in app.registered_commands}


@pytest.fixture(scope="module")
def published(base, tmp_path_factory):
    """The reference store published to a local folder (when 'relabel publish' exists)."""
    if "publish" not in _commands():
        return None
    dest = tmp_path_factory.mktemp("pub") / "dest"
    run_cli("publish", base[3], dest)
    return dest


@pytest.mark.parametrize("argv,needle", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_one_line_exit_2(tmp_path, base, request, capsys, argv, needle):
    root, folder, ckpt, ref, _ = base
    if argv[0] not in _commands():
        pytest.skip(f"'relabel {argv[0]}' is not registered")
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    published = request.getfixturevalue("published") if "{published}" in argv else None
    fill = dict(nope=tmp_path / "nope", out=tmp_path / "new", afile=afile, data=folder, ckpt=ckpt, ref=ref,
                published=published)
    r = run_main(capsys, *[a.format(**fill) for a in argv])
    one_line_error(r, *([needle] if needle else []))
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
    assert afile.read_text() == "x" and not (tmp_path / "nope").exists()


def test_cli_errors_in_a_fresh_process(tmp_path, base):
    """The same contract through the installed entry point, interpreter start-up included."""
    root, folder, ckpt, ref, _ = base
    r = run_cli("generate", folder, "--out", ref / "zarr.json", "--teacher-checkpoint", ckpt, *GEN, check=False)
    one_line_error(r, "is a file")
    r = run_cli("info", tmp_path / "nope", check=False)
    one_line_error(r, "no label store")



# ------------------------------------------------------------------------------------------ security
class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (os.mkdir, (self.marker,))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, base, capsys):
    from relabel.models import load_state_dict

    root, folder, ckpt, ref, _ = base
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": torch.load(ckpt, weights_only=True), "extra": _Evil(str(marker))}, evil)
    r = run_cli("generate", folder, "--out", tmp_path / "o", "--teacher-checkpoint", evil, *GEN, check=False)
    one_line_error(r, "evil.pth", "weights-only")
    r = run_main(capsys, "verify", ref, folder, "--teacher-checkpoint", evil, "--samples", "2")
    one_line_error(r, "weights-only")
    with pytest.raises(UserError, match="weights-only"):
        load_state_dict(str(evil))
    assert not marker.exists(), "the checkpoint's code ran"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("member", ["/abs/evil.jpg", "../up/evil.jpg", "a/../../evil.jpg"])
def test_tar_members_escaping_the_shard_are_refused(tmp_path, base, capsys, member):
    root, folder, ckpt, _, _ = base
    shards = tmp_path / "shards"
    shards.mkdir()
    jpg = next(folder.rglob("*.jpg")).read_bytes()
    with tarfile.open(shards / "data-000000.tar", "w") as tf:
        for name, data in (("ok/0001.jpg", jpg), ("ok/0001.cls", b"0"), (member, jpg),
                           (member.rpartition(".")[0] + ".cls", b"1")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(UserError, match="absolute or '..' path"):
        open_source(shards)
    r = run_main(capsys, "generate", shards, "--out", tmp_path / "o", "--teacher-checkpoint", ckpt, *GEN)
    one_line_error(r, "refusing this shard")
    assert not (tmp_path / "o").exists() and not (tmp_path / "up").exists()
