"""``--compile``: labels a compiled teacher writes pass ``verify`` against the eager teacher.

Inductor compiles test_resnet in over a minute on 2 CPU cores, so the CLI test with the real
``--compile`` is marked slow and runs only with RELABEL_SLOW_TESTS=1; the fast test traces the same
model with dynamo and the ``aot_eager`` backend (same graph capture, no code generation).
"""
from __future__ import annotations

import os

import pytest

from conftest import make_imagefolder, run_cli, save_teacher
from relabel.stages.generate import GenerateConfig, generate
from relabel.storage import UserError

GEN = dict(teacher="test_resnet", views=2, topk=2, img_size=32, samples_per_shard=64, views_per_shard=2,
           batch_size=8, workers=0, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    # 12 images, batch 8: batches of 8 and 4, so the padded short batch is exercised too
    return make_imagefolder(root / "train", per_class=4), save_teacher(root / "t.pth")


def test_compiled_teacher_labels_verify_with_eager(data, tmp_path):
    folder, ckpt = data
    out = tmp_path / "labels"
    generate(GenerateConfig(data=str(folder), out=str(out), teacher_checkpoint=str(ckpt), compile="aot_eager", **GEN))
    r = run_cli("verify", out, folder, "--teacher-checkpoint", ckpt, "--samples", "24")
    assert "verify OK" in r.stdout and "checked 24 views" in r.stdout
    other = save_teacher(tmp_path / "other.pth", seed=1)  # the check can fail: other weights disagree
    assert run_cli("verify", out, folder, "--teacher-checkpoint", other, "--samples", "8", check=False).returncode == 1


def test_unknown_backend_is_one_line(data, tmp_path):
    folder, ckpt = data
    with pytest.raises(UserError, match="unknown torch.compile backend 'nope'"):
        generate(GenerateConfig(data=str(folder), out=str(tmp_path / "x"), teacher_checkpoint=str(ckpt),
                                compile="nope", **GEN))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RELABEL_SLOW_TESTS"), reason="inductor compile takes > 60 s on CPU")
def test_cli_compile_inductor_both_ways(data, tmp_path):
    folder, ckpt = data
    out = tmp_path / "labels"
    run_cli("generate", folder, "--out", out, "--teacher", "test_resnet", "--teacher-checkpoint", ckpt, "--views", "2",
            "--topk", "2", "--img-size", "32", "--samples-per-shard", "64", "--views-per-shard", "2",
            "--batch-size", "8", "--workers", "0", "--compile", "--quiet")
    assert "verify OK" in run_cli("verify", out, folder, "--teacher-checkpoint", ckpt, "--samples", "16").stdout
    eager = tmp_path / "eager"
    run_cli("generate", folder, "--out", eager, "--teacher", "test_resnet", "--teacher-checkpoint", ckpt, "--views",
            "2", "--topk", "2", "--img-size", "32", "--samples-per-shard", "64", "--views-per-shard", "2",
            "--batch-size", "8", "--workers", "0", "--quiet")
    r = run_cli("verify", eager, folder, "--teacher-checkpoint", ckpt, "--samples", "16", "--compile")
    assert "verify OK" in r.stdout
