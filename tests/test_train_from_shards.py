"""Stage two straight from exported webdataset shards: images and labels in the tars."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, make_imagefolder, run_cli, save_teacher

COMMON = ["--student", "test_resnet", "--epochs", "1", "--batch-size", "8", "--img-size", "32", "--device", "cpu",
          "--no-model-ema", "--quiet", "--warmup-epochs", "0"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    folder = make_imagefolder(root / "train", per_class=12)
    ckpt = save_teacher(root / "t.pth")
    run_cli("generate", folder, "--out", root / "store", "--teacher", "test_resnet", "--teacher-checkpoint", ckpt,
            "--views", "2", "--topk", "2", "--img-size", "32", "--samples-per-shard", "64", "--workers", "0", "--quiet")
    run_cli("export", root / "store", "--to", root / "wds", "--images", folder, "--shard-size", "64")
    return root, folder


def _losses(run):
    return [m["losses"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_tars_as_data_and_labels_equal_the_store(exported, tmp_path):
    root, folder = exported
    assert len(list((root / "wds").glob("*.tar"))) == 1
    run_cli("train", folder, "--labels", root / "store", "--out", tmp_path / "zarr", "--workers", "0", *COMMON)
    run_cli("train", root / "wds", "--labels", root / "wds", "--out", tmp_path / "tars", "--workers", "2", *COMMON)
    assert _losses(tmp_path / "zarr") == _losses(tmp_path / "tars")


def test_one_shard_two_ranks_two_workers_no_hang(exported, tmp_path):
    root, _ = exported
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "relabel",
           "train", str(root / "wds"), "--labels", str(root / "wds"), "--out", str(tmp_path / "ddp"),
           "--workers", "2", *COMMON]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()[-1])["steps"] >= 1


def test_tampered_export_refused(exported, tmp_path):
    root, folder = exported
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(root / "wds", bad)
    tar = next(bad.glob("*.tar"))
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    r = run_cli("train", folder, "--labels", bad, "--out", tmp_path / "run", "--workers", "0", *COMMON, check=False)
    assert r.returncode == 2 and "sha256" in r.stderr and "Traceback" not in r.stderr


def test_train_from_s3_shards(exported, s3, tmp_path):
    """Images and labels read straight from an S3 API (moto on 127.0.0.1): ranged reads, 2 workers."""
    import s3fs

    root, folder = exported
    s3fs.S3FileSystem().put(str(root / "wds") + "/", "labels-bucket/wds/", recursive=True)
    url = "s3://labels-bucket/wds"
    run_cli("train", url, "--labels", url, "--out", tmp_path / "s3run", "--workers", "2", *COMMON, env=s3)
    run_cli("train", root / "wds", "--labels", root / "wds", "--out", tmp_path / "local", "--workers", "0", *COMMON)
    assert _losses(tmp_path / "s3run") == _losses(tmp_path / "local")
    r = run_cli("train", "s3://no-such-bucket/wds", "--labels", url, "--out", tmp_path / "x", *COMMON,
                check=False, env=s3)
    assert r.returncode == 2 and "no-such-bucket" in r.stderr and len(r.stderr.strip().splitlines()) == 1
