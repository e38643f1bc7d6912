"""Stage two under faults: bad values, a full disk, a loss that becomes NaN/inf. Run alone with
``pytest -m faults``. Faults are real: the write limit comes from the kernel (RLIMIT_FSIZE -> EFBIG),
the infinite loss from a (finite, absurd) loss weight."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, fsize_limit, make_imagefolder, save_teacher

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """24 images in 3 classes, a teacher and a q8 store of 4 views."""
    from relabel.stages.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("trainfaults")
    make_imagefolder(root / "train", per_class=8)
    save_teacher(root / "t.pth")
    generate(GenerateConfig(data=str(root / "train"), out=str(root / "labels"), teacher="test_resnet",
                            teacher_checkpoint=str(root / "t.pth"), views=4, topk=2, img_size=32, batch_size=32,
                            workers=0, samples_per_shard=64, views_per_shard=2, progress=False))
    return root


def _args(root, out, *extra):
    return ["train", str(root / "train"), "--labels", str(root / "labels"), "--out", str(out), "--student",
            "test_resnet", "--epochs", "1", "-b", "8", "--img-size", "32", "-j", "0", "--quiet", *map(str, extra)]


def _main(capsys, argv) -> tuple[int, str]:
    from relabel.commands.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    return int(e.value.code or 0), capsys.readouterr().err


def one_line(code: int, err: str, *needles: str) -> str:
    """Exit 2, no traceback, one error line, and it is the last thing said (progress lines may precede it)."""
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and [x for x in lines if x.startswith("error:")] == lines[-1:], (code, err)
    err = lines[-1]
    for n in needles:
        assert n in err, (n, err)
    return err


BAD = [
    (["--lr", "inf"], "--lr must be a finite number above 0"), (["--lr", "nan"], "--lr must be a finite number above 0"),
    (["--weight-decay", "nan"], "--weight-decay"), (["--kd-temperature", "inf"], "--kd-temperature"),
    (["--warmup-lr", "inf"], "--warmup-lr"), (["--min-lr", "nan"], "--min-lr"), (["--drop", "5"], "--drop must be a finite number at least 0 and below 1"),
    (["--drop-path", "1"], "--drop-path"), (["--clip-mode", "bogus"], "--clip-mode"), (["--img-size", "0"], "--img-size"),
    (["--img-size", "-3"], "--img-size"), (["--clip-grad", "inf"], "--clip-grad"), (["--aug-repeats", "0"], "--aug-repeats"),
    (["--preset", "bogus"], "unknown --preset"), (["--kd-target", "bogus"], "--kd-target"),
    (["--kd-target", "full"], "--mode online"), (["--fresh-views"], "--fresh-views"),
    (["--views-limit", "9"], "--views-limit 9"), (["--aug-repeats", "5"], "--aug-repeats 5"),
    (["--topk-limit", "3"], "--topk-limit 3"), (["--model-ema-decay", "2"], "--model-ema-decay"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_train_bad_values_one_line_exit_2(small, tmp_path, capsys, extra, needle):
    code, err = _main(capsys, _args(small, tmp_path / "run", *extra))
    one_line(code, err, needle)
    assert not (tmp_path / "run").exists()


def _train_kw(small, run, epochs: int) -> dict:
    """A small cached run in ``run`` (TrainConfig keywords)."""
    return dict(data=str(small / "train"), labels=str(small / "labels"), out=str(run), student="test_resnet",
                epochs=epochs, batch_size=8, img_size=32, workers=0, progress=False, log=False)


def test_full_disk_one_line_no_tmp_last_checkpoint_kept(small, tmp_path):
    from relabel.train.loop import TrainConfig, train

    run = tmp_path / "run"
    kw = _train_kw(small, run, epochs=3)
    train(TrainConfig(stop_epoch=1, **kw))
    before = (run / "last.pth").read_bytes()
    argv = _args(small, run, "--resume")
    argv[argv.index("--epochs") + 1] = "3"
    r = subprocess.run([sys.executable, "-m", "relabel", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       preexec_fn=fsize_limit(len(before) // 2), env={**os.environ, "OMP_NUM_THREADS": "1"})
    one_line(r.returncode, r.stderr, "could not write the checkpoint", "last good checkpoint is kept", "--resume")
    assert not list(run.glob("*.tmp")) and (run / "last.pth").read_bytes() == before
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1
    assert train(TrainConfig(resume=True, **kw)).last["epoch"] == 3  # space is back: the run continues


def test_non_finite_loss_stops_and_keeps_last_checkpoint(small, tmp_path):
    from relabel.storage import UserError
    from relabel.train.loop import TrainConfig, train

    run = tmp_path / "run"
    kw = _train_kw(small, run, epochs=2)
    train(TrainConfig(stop_epoch=1, **kw))
    ckpt = torch.load(run / "last.pth", weights_only=True)  # weights that are finite but overflow the logits
    ckpt["state_dict"] = {k: v * 1e30 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, run / "last.pth")
    before = (run / "last.pth").read_bytes()
    with pytest.raises(UserError, match=r"loss became non-finite in epoch 2 .*epoch 1 .*last.pth is kept"):
        train(TrainConfig(resume=True, **kw))
    assert (run / "last.pth").read_bytes() == before and not (run / "best.pth.tmp").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
