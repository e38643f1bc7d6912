"""Teacher ensembles and teachers that are any callable (issue 17)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from conftest import cli_inprocess, make_imagefolder, save_teacher
from relabel.stages.generate import GenerateConfig, generate
from relabel.models import Normalize
from relabel.storage import LabelStore
from relabel.teacher import FunctionTeacher
from relabel.stages.verify import render_stored_views, verify

GEN = ["--views", "2", "--topk", "3", "--img-size", "32", "--workers", "0", "--encoding", "f32", "--quiet",
       "--samples-per-shard", "64", "--views-per-shard", "2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    folder = make_imagefolder(root / "train", per_class=6)
    ckpts = [save_teacher(root / f"t{i}.pth", seed=i) for i in range(3)]
    return root, folder, ckpts


def _model(ckpt: Path):
    m = timm.create_model("test_resnet", num_classes=3)
    m.load_state_dict(torch.load(ckpt, weights_only=True))
    return m.eval()


def _norm(model) -> Normalize:
    """The model's own normalization (test_resnet: mean = std = 0.5)."""
    return Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"])


def test_ensemble_labels_are_the_average_of_member_probabilities(world, tmp_path, capsys):
    root, folder, (a, b, c) = world
    out = tmp_path / "ens"
    r = cli_inprocess(capsys, "generate", folder, "--out", out, "--teacher", "test_resnet", "--teacher", "test_resnet",
                      "--teacher-checkpoint", a, "--teacher-checkpoint", b, "--teacher-weight", "3",
                      "--teacher-weight", "1", *GEN)
    assert r.returncode == 0, r.stderr
    store = LabelStore.open(out)
    t = store.header.teacher
    assert [m["weight"] for m in t["members"]] == [0.75, 0.25] and len({m["checkpoint_sha256"] for m in t["members"]}) == 2
    # by hand: the same replayed pixels through each member, probabilities averaged 3:1
    from relabel.storage import open_source

    src = open_source(folder)
    pos = np.arange(store.header.num_samples)
    for v in range(2):
        pix = render_stored_views(store, src, pos, np.full(len(pos), v), store.status())
        probs = []
        for ck in (a, b):
            model = _model(ck)
            with torch.no_grad():
                probs.append(torch.softmax(model(_norm(model)(pix)), -1))
        p = (0.75 * probs[0] + 0.25 * probs[1]).double()
        s_idx, s_lp = store.read_view(v)
        top = p.gather(1, torch.from_numpy(s_idx))  # near-ties may order differently; the values may not
        assert (top[:, :-1] >= top[:, 1:] - 1e-6).all()
        assert (top[:, -1:] >= p.sort(-1, descending=True).values[:, 2:3] - 1e-6).all()
        want = torch.cat([top, (1 - top.sum(-1, keepdim=True)).clamp(min=1e-30)], -1).log().numpy()
        np.testing.assert_allclose(s_lp[:, :3], want[:, :3], atol=2e-5)
        assert np.abs(np.exp(s_lp).sum(-1) - 1).max() < 1e-5
        # and not a single member's labels
        assert not np.allclose(s_lp[:, :3], torch.log(probs[0].double().gather(1, torch.from_numpy(s_idx))).numpy(),
                               atol=1e-3)
    # verify recomputes the ensemble; a member with other weights fails it
    assert verify(str(out), str(folder), samples=16, teacher_checkpoint=[str(a), str(b)]).ok
    bad = verify(str(out), str(folder), samples=16, teacher_checkpoint=[str(a), str(c)])
    assert not bad.ok and any("teacher 2" in n for n in bad.notes)
    # resume with another member list is refused, naming it
    r = cli_inprocess(capsys, "generate", folder, "--out", out, "--teacher", "test_resnet", "--teacher-checkpoint", a,
                      *GEN)
    assert r.returncode == 2 and "store was made with other settings: teacher" in r.stderr
    r = cli_inprocess(capsys, "info", out)
    assert "test_resnet x0.75 + test_resnet x0.25" in r.stdout
    from relabel.storage.card import dataset_card

    card = dataset_card(store.header.to_dict(), "s3://bucket/ens")
    assert "average of the probabilities of `test_resnet` x 0.75" in card and t["members"][1]["checkpoint_sha256"] in card


def test_ensemble_members_must_share_a_class_space(world, tmp_path, capsys):
    root, folder, (a, _, _) = world
    five = save_teacher(tmp_path / "five.pth", num_classes=5)
    r = cli_inprocess(capsys, "generate", folder, "--out", tmp_path / "x", "--teacher", "test_resnet", "--teacher",
                      "test_resnet", "--teacher-checkpoint", a, "--teacher-checkpoint", five, *GEN)
    assert r.returncode == 2 and "disagree on the number of classes" in r.stderr


def test_a_function_teacher_makes_the_same_labels_as_the_model(world, tmp_path):
    root, folder, (a, _, _) = world
    cfg = GenerateConfig(data=str(folder), out=str(tmp_path / "timm"), teacher="test_resnet", teacher_checkpoint=str(a),
                         views=2, topk=3, img_size=32, workers=0, encoding="f32", samples_per_shard=64,
                         views_per_shard=2, progress=False)
    generate(cfg)
    model = _model(a)
    norm = _norm(model)
    fn = FunctionTeacher(lambda pix: model(norm(pix)), num_classes=3, name="my-resnet-v1", input_size=32)
    generate(GenerateConfig(**{**cfg.__dict__, "out": str(tmp_path / "fn")}), teacher=fn)
    ta, tb = LabelStore.open(tmp_path / "timm"), LabelStore.open(tmp_path / "fn")
    assert tb.header.teacher["model"] == "function:my-resnet-v1"
    for v in range(2):
        for x, y in zip(ta.read_view(v), tb.read_view(v)):
            np.testing.assert_allclose(x, y, atol=1e-5)
    assert verify(str(tmp_path / "fn"), str(folder), samples=8, teacher=fn).ok
    # resume with another function name is refused
    other = FunctionTeacher(fn.fn, num_classes=3, name="my-resnet-v2", input_size=32)
    with pytest.raises(Exception, match="teacher"):
        generate(GenerateConfig(**{**cfg.__dict__, "out": str(tmp_path / "fn"), "views": 3}), teacher=other)
    assert json.loads((tmp_path / "fn" / "zarr.json").read_text())["attributes"]["relabel"]["views"] == 2


def test_online_mode_uses_the_same_ensemble(world, tmp_path, capsys):
    """Cached labels of an ensemble and the ensemble in the loop give the same losses (f32 labels)."""
    from relabel.train.loop import TrainConfig, train

    root, folder, (a, b, _) = world
    out = tmp_path / "ens"
    r = cli_inprocess(capsys, "generate", folder, "--out", out, "--teacher", "test_resnet", "--teacher", "test_resnet",
                      "--teacher-checkpoint", a, "--teacher-checkpoint", b, *GEN)
    assert r.returncode == 0, r.stderr
    kw = dict(data=str(folder), labels=str(out), student="test_resnet", epochs=1, batch_size=6, workers=0,
              img_size=32, progress=False, log=False, model_ema=False)
    cached = train(TrainConfig(out=str(tmp_path / "c"), mode="cached", **kw)).last["losses"]
    online = train(TrainConfig(out=str(tmp_path / "o"), mode="online", kd_target="topk",
                               teacher_checkpoint=[str(a), str(b)], **kw)).last["losses"]
    assert len(cached) == len(online) > 0 and np.abs(np.asarray(cached) - np.asarray(online)).max() < 1e-4
    with pytest.raises(Exception, match="was loaded from a checkpoint"):
        train(TrainConfig(out=str(tmp_path / "o2"), mode="online", **kw))
