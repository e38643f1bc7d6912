"""Stage one end to end: generate, verify, info, resume, ranks, workers, bad images."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, make_imagefolder, run_cli, save_teacher, tree_bytes
from relabel.storage import LabelStore

GEN = ["--teacher", "test_resnet", "--views", "4", "--topk", "2", "--img-size", "32", "--samples-per-shard", "64",
       "--views-per-shard", "2", "--batch-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    folder = make_imagefolder(root / "train", per_class=30)  # 90 images: 2 sample blocks, odd groups
    (folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return root, folder, save_teacher(root / "t.pth"), save_teacher(root / "other.pth", seed=1)


@pytest.fixture(scope="module")
def store(data):
    root, folder, ckpt, _ = data
    out = root / "store"
    r = run_cli("generate", folder, "--out", out, "--teacher-checkpoint", ckpt, "--workers", "0", *GEN)
    assert "unreadable=1" in r.stderr
    return out


def test_generate_verify_info(data, store):
    root, folder, ckpt, other = data
    r = run_cli("verify", store, folder, "--teacher-checkpoint", ckpt, "--samples", "24")
    assert "verify OK" in r.stdout and "damaged shards 0" in r.stdout
    info = json.loads(run_cli("info", store, "--json").stdout)
    for key in ("num_samples", "views", "topk", "num_classes", "teacher", "recipe", "fingerprint", "complete",
                "corrupt_samples", "bytes_on_disk", "bytes_per_view"):
        assert key in info
    assert info["num_samples"] == 91 and info["views"] == 4 and info["complete"] and info["corrupt_samples"] == 1
    s = LabelStore.open(store)
    bad = s.key_index["cat/broken"]
    assert s.status()[bad] == 2 and (s.status() == 1).sum() == 90
    assert "teacher" in run_cli("info", store).stdout
    # a teacher with other weights disagrees
    r = run_cli("verify", store, folder, "--teacher-checkpoint", other, "--samples", "16", check=False)
    assert r.returncode == 1 and "verify FAILED" in r.stderr and "differs" in r.stderr


def test_workers_and_ranks_change_no_byte(data, store, tmp_path):
    root, folder, ckpt, _ = data
    run_cli("generate", folder, "--out", tmp_path / "w2", "--teacher-checkpoint", ckpt, "--workers", "2", *GEN)
    assert tree_bytes(tmp_path / "w2") == tree_bytes(store)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "relabel", "generate", str(folder), "--out", str(tmp_path / "r2"), "--teacher-checkpoint", str(ckpt),
           "--workers", "0", "--device", "cpu", *GEN]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tree_bytes(tmp_path / "r2") == tree_bytes(store)


def test_resume_after_kill_equals_uninterrupted(data, store, tmp_path):
    root, folder, ckpt, _ = data
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "relabel", "generate", str(folder), "--out", str(out), "--teacher-checkpoint",
            str(ckpt), "--workers", "0", *GEN]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "done" / "c").glob("*/*")):  # first shard marked done
        time.sleep(0.01)
    p.kill()
    p.wait()
    partial = LabelStore.open(out)
    assert not partial.complete, "the run finished before it could be interrupted"
    run_cli(*args[3:])
    assert tree_bytes(out) == tree_bytes(store)


def test_more_views_later_and_changed_settings(data, store, tmp_path):
    root, folder, ckpt, _ = data
    out = tmp_path / "grow"
    small = [a if a != "4" else "2" for a in GEN]
    run_cli("generate", folder, "--out", out, "--teacher-checkpoint", ckpt, "--workers", "0", *small)
    first = (out / "topk_index" / "c" / "0" / "0" / "0").stat().st_mtime_ns
    r = run_cli("generate", folder, "--out", out, "--teacher-checkpoint", ckpt, "--workers", "0", *GEN)
    assert "wrote 182 views" in r.stderr  # views 2 and 3 of the 91 samples, nothing old
    assert (out / "topk_index" / "c" / "0" / "0" / "0").stat().st_mtime_ns == first
    a, b = LabelStore.open(out), LabelStore.open(store)
    for v in range(4):
        assert all(np.array_equal(x, y) for x, y in zip(a.read_view(v), b.read_view(v)))
    r = run_cli("generate", folder, "--out", out, "--teacher-checkpoint", ckpt, "--workers", "0", *GEN[:-1],
                "--seed", "3", check=False)
    assert r.returncode == 2 and "seed (store: 0, now: 3)" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("generate", folder, "--out", out, "--teacher-checkpoint", ckpt, "--teacher", "test_resnet",
                "--topk", "9", "--quiet", check=False)
    assert r.returncode == 2 and "--topk 9 is above" in r.stderr
    r = run_cli("generate", folder, "--out", out, "--teacher-checkpoint", ckpt, "--quiet", check=False)
    assert r.returncode == 2 and "weights do not fit" in r.stderr and "Traceback" not in r.stderr
    assert LabelStore.open(out).complete  # nothing lost


def test_more_views_with_the_default_layout(data, tmp_path):
    """The shard layout is the store's: growing --views needs no layout flags and keeps old views."""
    root, folder, ckpt, _ = data
    base = ["generate", folder, "--out", tmp_path / "s", "--teacher", "test_resnet", "--teacher-checkpoint", ckpt,
            "--topk", "2", "--img-size", "32", "--workers", "0", "--quiet"]
    run_cli(*base, "--views", "2")
    before = [LabelStore.open(tmp_path / "s").read_view(v) for v in range(2)]
    run_cli(*base, "--views", "3")
    s = LabelStore.open(tmp_path / "s")
    assert s.header.views == 3 and s.complete and s.header.views_per_shard == 10
    for v in range(2):
        assert all(np.array_equal(a, b) for a, b in zip(before[v], s.read_view(v)))
