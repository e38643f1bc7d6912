"""Stage two on real files: a tiny store made by stage one, tiny students, the CLI and torchrun."""
from __future__ import annotations

import json
import logging
import math
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_imagefolder, run_cli, save_teacher

CLASSES8 = tuple(f"c{i}" for i in range(8))
STUDENT = "test_efficientnet"  # BatchNorm, no dropout unless asked


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # 2 cores shared with workers: spinning OpenMP threads only stall


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """40 training images in 8 classes, a validation set, a teacher, and f32 + q8 stores of 4 views."""
    from relabel.stages.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("train")
    make_imagefolder(root / "train", per_class=5, classes=CLASSES8)
    make_imagefolder(root / "val", per_class=2, classes=CLASSES8, seed=1)
    save_teacher(root / "teacher.pth", num_classes=8)
    for enc in ("f32", "q8"):
        generate(GenerateConfig(data=str(root / "train"), out=str(root / f"labels_{enc}"), teacher="test_resnet",
                                teacher_checkpoint=str(root / "teacher.pth"), views=4, topk=3, img_size=32,
                                batch_size=64, workers=0, encoding=enc, samples_per_shard=64, views_per_shard=2,
                                progress=False))
    # mix groups of 8 (5 groups of 40 samples): repeated augmentation can keep a fraction of them
    (root / "g8.yaml").write_text("base: usi\nname: usi-g8\nmix_group: 8\n")
    generate(GenerateConfig(data=str(root / "train"), out=str(root / "labels_g8"), teacher="test_resnet",
                            teacher_checkpoint=str(root / "teacher.pth"), views=3, topk=3, img_size=32,
                            batch_size=64, workers=0, encoding="f32", samples_per_shard=64, views_per_shard=3,
                            recipe=str(root / "g8.yaml"), progress=False))
    return root


def _cfg(world, out, **kw):
    from relabel.train.loop import TrainConfig

    base = dict(data=str(world / "train"), labels=str(world / "labels_f32"), out=str(out), student=STUDENT,
                epochs=1, batch_size=8, workers=0, warmup_epochs=0, model_ema=False, progress=False, log=False)
    return TrainConfig(**{**base, **kw})


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ the loss
def _dense_target(idx, logp, C):
    """Top-k probabilities and the rest mass spread evenly over the other C - k classes."""
    k = idx.shape[1]
    p = torch.softmax(logp, -1)  # renormalize the k+1 stored bins
    return (p[:, k:] / (C - k)).repeat(1, C).scatter(1, idx, p[:, :k])


def _dense_kl(logits, idx, logp, T=1.0, renorm=False):
    """Reference: the full (B, C) target (train.losses.dense_target), tempered densely, KL with F.kl_div."""
    from relabel.train.losses import dense_target

    B, C = logits.shape
    k = idx.shape[1]
    if renorm or k == C:
        target = torch.zeros(B, C).scatter(1, idx, torch.softmax(logp[:, :k], -1))
    else:
        target = dense_target(idx, logp, C)
        assert torch.allclose(target, _dense_target(idx, logp, C))
    assert torch.allclose(target.sum(-1), torch.ones(B), atol=1e-5)
    tempered = torch.softmax(torch.log(target) / T, -1)  # every log-probability / T, renormalized
    return F.kl_div(torch.log_softmax(logits / T, -1), tempered, reduction="none").sum(-1) * T * T


@pytest.mark.parametrize("C,k", [(10, 3), (1000, 10), (5, 5)])
def test_kd_loss_matches_dense_reference(C, k):
    from relabel.teacher import topk_logprobs
    from relabel.storage.encoding import ValueEncoding
    from relabel.train.losses import kd_loss

    g = torch.Generator().manual_seed(C)
    teacher, student = torch.randn(6, C, generator=g) * 3, torch.randn(6, C, generator=g) * 2
    idx, logp = topk_logprobs(teacher, k)
    q8 = ValueEncoding("q8")
    rounded = torch.from_numpy(q8.decode(q8.encode(logp.numpy())))  # sums to 1 only after renormalizing
    for lp in (logp, rounded):
        for T in (0.5, 1.0, 2.0, 4.0):  # the same target at every T: continuous in T
            for renorm in (False, True):
                got, ref = kd_loss(student, idx, lp, T, renorm), _dense_kl(student, idx, lp, T, renorm)
                assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (T, renorm, got, ref)
        near = kd_loss(student, idx, lp, 1.0 + 1e-6)
        assert torch.allclose(near, kd_loss(student, idx, lp), atol=1e-4)  # no jump just above T = 1
    if k < C:  # exact at T=1: the full teacher distribution is recovered when its rest is uniform
        order = teacher.topk(C, -1)
        flat = teacher.scatter(1, order.indices[:, k:], (order.values[:, k - 1:k] - 1).expand(-1, C - k))
        i2, l2 = topk_logprobs(flat, k)
        for T in (1.0, 2.0):  # ... and then at any T it is Hinton's KD on the teacher's logits
            full = F.kl_div(torch.log_softmax(student / T, -1), torch.softmax(flat / T, -1), reduction="none").sum(-1)
            assert torch.allclose(kd_loss(student, i2, l2, T), full * T * T, atol=1e-4)
    # the gradient flows, and a student that matches the dense target has zero loss
    z = student.clone().requires_grad_(True)
    kd_loss(z, idx, logp).mean().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    if k < C:
        exact = torch.log(_dense_target(idx, logp, C))
        assert kd_loss(exact, idx, logp).abs().max() < 1e-5
        assert kd_loss(exact, idx, logp, temperature=3.0).abs().max() < 1e-5


def test_online_full_target_and_topk_truncation():
    """Online's full-softmax loss is Hinton KD on the teacher's logits; a top-K row truncated to top-k
    is the top-k row of the same teacher."""
    from relabel.teacher import topk_logprobs
    from relabel.train.losses import kd_loss, kd_loss_full, truncate_topk

    g = torch.Generator().manual_seed(1)
    t, z = torch.randn(5, 20, generator=g) * 3, torch.randn(5, 20, generator=g)
    for T in (0.5, 1.0, 3.0):
        ref = F.kl_div(torch.log_softmax(z / T, -1), torch.softmax(t / T, -1), reduction="none").sum(-1) * T * T
        assert torch.allclose(kd_loss_full(z, t, T), ref, atol=1e-5)
    i10, l10 = topk_logprobs(t, 10)
    i3, l3 = topk_logprobs(t, 3)
    ti, tl = truncate_topk(i10, l10, 3)
    assert torch.equal(ti, i3) and torch.allclose(tl, l3, atol=1e-5)
    assert torch.allclose(kd_loss(z, ti, tl), kd_loss(z, i3, l3), atol=1e-5)


def test_mixed_ce_matches_dense():
    from relabel.train.losses import mixed_ce

    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 7, generator=g)
    y, y2, lam = torch.tensor([0, 3, 6, 2]), torch.tensor([1, 3, 0, 5]), torch.tensor([1.0, 0.3, 0.5, 0.75])
    for s in (0.0, 0.1):
        t = lam[:, None] * F.one_hot(y, 7) + (1 - lam[:, None]) * F.one_hot(y2, 7)
        t = t * (1 - s) + s / 7
        ref = -(t * torch.log_softmax(z, -1)).sum(-1)
        assert torch.allclose(mixed_ce(z, y, y2, lam, s), ref, atol=1e-6)


# ------------------------------------------------------------------------------------ data
def test_view_schedule_and_pair_batches(world):
    from relabel.views import pairs_for_view
    from relabel.train.data import TrainData, view_for_epoch

    sched = [view_for_epoch(7, 4, e) for e in range(12)]
    for r in range(3):
        assert sorted(sched[4 * r:4 * r + 4]) == [0, 1, 2, 3]
    assert sched[:4] != sched[4:8] or sched[4:8] != sched[8:12]
    data = TrainData(str(world / "train"), str(world / "labels_q8"))
    for e in range(4):
        batches = data.batches(7, e, 8)
        assert len(batches) == 5 and all(len(b) == 8 for b in batches)
        view = view_for_epoch(7, 4, e)
        partner = pairs_for_view(data.recipe, data.header.seed, view, 40)
        for b in batches:
            pos = {p for p, _, _ in b}
            assert all(v == view for _, v, _ in b)
            assert all(q == partner[p] and q in pos for p, _, q in b)  # every pair inside its batch
        halves = [data.batches(7, e, 8, rank=r, world=2) for r in (0, 1)]
        assert len(halves[0]) == len(halves[1]) == 2
    assert data.batches(7, 0, 8) == data.batches(7, 0, 8) and data.batches(7, 0, 8) != data.batches(7, 1, 8)
    from relabel.storage import UserError

    with pytest.raises(UserError, match="even"):
        data.batches(7, 0, 7)


def test_repeated_augmentation_views_pairs_and_ranks(world):
    """--aug-repeats 3: about N/3 samples, each with 3 distinct views; pairs mixed in one batch as
    stage one mixed them; two ranks see disjoint samples."""
    from collections import defaultdict

    from relabel.storage import UserError
    from relabel.train.data import TrainData, finish_pixels
    from relabel.views import ViewRenderer, decode_image, mix_batch, pairs_for_view

    data = TrainData(str(world / "train"), str(world / "labels_g8"), repeats=3)
    h = data.header
    for e in (0, 1):
        views = data.epoch_views(7, e)
        assert sorted(views) == [0, 1, 2]
        partner = {v: pairs_for_view(data.recipe, h.seed, v, 40) for v in views}
        for world_size in (1, 2):
            seen_by_rank = []
            for rank in range(world_size):
                batches = data.batches(7, e, 8, rank=rank, world=world_size)
                seen = defaultdict(list)
                for b in batches:
                    assert len(b) == 8
                    for p, v, q in b:
                        seen[p].append(v)
                        assert q == partner[v][p] and (q, v, p) in b  # mixed with its stage-one partner, same batch
                assert all(sorted(vs) == [0, 1, 2] for vs in seen.values()), seen  # 3 distinct views each
                seen_by_rank.append(set(seen))
            assert sum(map(len, seen_by_rank)) == 16  # 2 of 5 mix groups: about N/3
            if world_size == 2:
                assert not seen_by_rank[0] & seen_by_rank[1] and len(seen_by_rank[0]) == len(seen_by_rank[1]) == 8
    # a batch holding several views mixes each pair with its own view's parameters
    batch_items = next(b for b in data.batches(7, 0, 8) if len({v for _, v, _ in b}) > 1)
    ds, collate = data.dataset(), data.collate()
    got = finish_pixels(data.renderer, collate([ds[it] for it in batch_items]), None)
    assert got["views"].tolist() == [v for _, v, _ in batch_items]
    renderer = ViewRenderer(data.recipe, h.seed, data.img_size)
    for i, (p, v, q) in enumerate(batch_items):
        img = lambda x: renderer.render(data.store.keys[x], v, decode_image(data.source.read(int(data.src_index[x]))))  # noqa: E731
        want, _, _ = mix_batch(data.recipe, h.seed, v, [p, q], [img(p), img(q)], [q, p])
        assert np.array_equal(got["pixels"][i].permute(1, 2, 0).numpy(), want[0])
    # the first V views only
    limited = TrainData(str(world / "train"), str(world / "labels_g8"), views_limit=2)
    assert {limited.epoch_views(7, e)[0] for e in range(6)} == {0, 1}
    for kw, match in ((dict(repeats=4), "`aug_repeats=4`"), (dict(repeats=3, views_limit=2), "`aug_repeats=3`"),
                      (dict(views_limit=4), "`views_limit=4`")):
        with pytest.raises(UserError, match=match):
            TrainData(str(world / "train"), str(world / "labels_g8"), **kw)


def test_repeated_augmentation_trains_on_the_right_labels(world, tmp_path):
    """Three views' labels in one epoch, gathered per (view, sample): cached equals the teacher in the loop."""
    from relabel.train.loop import train

    kw = dict(labels=str(world / "labels_g8"), aug_repeats=3, epochs=2, stop_epoch=1)
    cached = train(_cfg(world, tmp_path / "c", **kw))
    online = train(_cfg(world, tmp_path / "o", mode="online", kd_target="topk",
                        teacher_checkpoint=str(world / "teacher.pth"), **kw))
    assert sorted(cached.last["view"]) == [0, 1, 2] and cached.last["steps"] == 6
    assert np.abs(np.asarray(cached.last["losses"]) - np.asarray(online.last["losses"])).max() < 1e-4


# ------------------------------------------------------------------------------------ 1. cached == online
@pytest.mark.parametrize("enc", ["f32", "q8"])
def test_cached_matches_online(world, tmp_path, enc):
    from relabel.storage import LabelStore
    from relabel.train.loop import train

    kw = dict(labels=str(world / f"labels_{enc}"), epochs=2, stop_epoch=1)
    cached = train(_cfg(world, tmp_path / "cached", mode="cached", **kw)).last["losses"]
    online = train(_cfg(world, tmp_path / "online", mode="online", teacher_checkpoint=str(world / "teacher.pth"),
                        kd_target="topk", **kw)).last["losses"]  # the rounding-only comparison
    assert len(cached) == len(online) == 5
    diff = np.abs(np.asarray(cached) - np.asarray(online))
    if enc == "f32":
        assert diff.max() < 1e-4, diff
    else:
        # Each stored log-prob is within step/2 of the teacher's; after renormalizing the k+1 bins each
        # is within `step`, so the target's probabilities move by a factor within exp(+-step) and the
        # KL moves by at most step + (exp(step) - 1) * sum_b p_b |log p_b - log q_b| (~ the loss itself).
        step = LabelStore.open(world / "labels_q8").header.encoding.step
        bound = step + (math.exp(step) - 1) * (np.asarray(online) + 1.0)
        assert (diff <= bound).all(), (diff, bound)
        assert diff.mean() < step / 2, diff
    assert (tmp_path / "online" / "last.pth").exists()


def test_online_teacher_named_with_the_stores_checkpoint_is_not_flagged_as_another(world, tmp_path, caplog):
    from relabel.commands.bench import trainer_with_batches

    lg = logging.getLogger("relabel")  # the CLI may have turned its propagation off in this process
    lg.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="relabel"):
            for name, ckpt in (("same", world / "teacher.pth"),
                               ("other", save_teacher(tmp_path / "other.pth", num_classes=8, seed=5))):
                caplog.clear()
                trainer_with_batches(_cfg(world, tmp_path / name, mode="online", teacher="test_resnet",
                                          teacher_checkpoint=str(ckpt)), batches=1)
                flagged = "not necessarily the store's teacher" in caplog.text
                assert flagged == (name == "other"), (name, caplog.text)
    finally:
        lg.removeHandler(caplog.handler)


def test_online_default_target_is_the_teachers_full_softmax(world, tmp_path):
    """USI's online KD: KL(softmax(teacher(pixels)) || student) on the replayed pixels, no top-k."""
    from relabel.models import Normalize, create
    from relabel.commands.bench import trainer_with_batches

    cfg = dict(mode="online", teacher_checkpoint=str(world / "teacher.pth"), labels=str(world / "labels_f32"))
    tr, (batch,) = trainer_with_batches(_cfg(world, tmp_path / "a", **cfg), batches=1)
    assert tr.cfg.kd_target == "full"
    pixels = batch["pixels"]
    teacher, info = create("test_resnet", checkpoint=str(world / "teacher.pth"))
    with torch.no_grad():
        t = teacher.eval()(Normalize(info.mean, info.std)(pixels))
    z = torch.randn(len(pixels), 8, generator=torch.Generator().manual_seed(0)) * 2
    ref = F.kl_div(torch.log_softmax(z, -1), torch.softmax(t, -1), reduction="none").sum(-1)
    assert torch.allclose(tr.kd_per_sample(z, batch, pixels), ref, atol=1e-5)
    for T in (2.0,):  # Hinton: the temperature divides the teacher's full logits
        tr.cfg.kd_temperature = T
        refT = F.kl_div(torch.log_softmax(z / T, -1), torch.softmax(t / T, -1), reduction="none").sum(-1) * T * T
        assert torch.allclose(tr.kd_per_sample(z, batch, pixels), refT, atol=1e-5)
    tr.cfg.kd_temperature = 1.0
    tr.cfg.kd_target = "topk"  # the stored top-3 + rest of 8 classes is another target: the test can tell
    assert (tr.kd_per_sample(z, batch, pixels) - ref).abs().max() > 1e-3


# ------------------------------------------------------------------------------------ 2. supervised
def test_supervised_cli_runs_and_writes_metrics(world, tmp_path):
    run = tmp_path / "sup"
    r = run_cli("train", world / "train", "--labels", world / "labels_q8", "--student", STUDENT, "--out", run,
                "--mode", "supervised", "--epochs", "2", "-b", "8", "-j", "2", "--img-size", "40",
                "--warmup-epochs", "1", "--quiet", env=ONE_THREAD)
    m = _metrics(run)
    assert [x["epoch"] for x in m] == [1, 2] and all(x["mode"] == "supervised" for x in m)
    assert all(len(x["losses"]) == 5 and np.isfinite(x["train_loss"]) and x["val_top1"] is None for x in m)
    assert 0 <= m[0]["data_wait_frac"] <= 1 and m[0]["img_s"] > 0
    assert "trained 2 epoch(s)" in r.stderr


# ------------------------------------------------------------------------------------ 3. resume
def test_resume_is_bit_exact(world, tmp_path):
    from relabel.train.loop import train

    kw = dict(epochs=2, model_ema=True, drop=0.3, drop_path=0.2, warmup_epochs=1)  # dropout: the RNG matters
    straight = train(_cfg(world, tmp_path / "a", **{**kw, "workers": 2}))  # worker count must not matter either
    train(_cfg(world, tmp_path / "b", stop_epoch=1, **kw))
    resumed = train(_cfg(world, tmp_path / "b", resume=True, **kw))
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for key in ("state_dict", "state_dict_ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][n], b[key][n]) for n in a[key]), key
    assert [m["losses"] for m in a["history"]] == [m["losses"] for m in b["history"]]
    assert straight.last["losses"] == resumed.last["losses"]
    assert [m["epoch"] for m in _metrics(tmp_path / "b")] == [1, 2]
    from relabel.storage import UserError

    with pytest.raises(UserError, match="`resume=True`"):  # a finished run is not overwritten by accident
        train(_cfg(world, tmp_path / "b", **kw))
    with pytest.raises(UserError, match="other settings"):
        train(_cfg(world, tmp_path / "b", resume=True, **{**kw, "seed": 1}))


# ------------------------------------------------------------------------------------ 4. eval
def test_eval_metrics_curves_and_checkpoint_as_teacher(world, tmp_path):
    from relabel.models import create

    run = tmp_path / "ev"
    run_cli("train", world / "train", "--labels", world / "labels_q8", "--student", STUDENT, "--out", run,
            "--val", world / "val", "--epochs", "2", "-b", "8", "-j", "1", "--kd-weight", "5", "--ce-weight", "1",
            "--clip-grad", "1.0", "--quiet", env=ONE_THREAD)
    m = _metrics(run)
    assert len(m) == 2
    for x in m:
        for key in ("val_top1", "val_top5", "ema_top1", "ema_top5"):
            assert 0.0 <= x[key] <= 100.0, (key, x)
        assert x["val_top5"] >= x["val_top1"] and x["mode"] == "cached"
        assert x["epoch_seconds"] >= x["train_seconds"] > 0 and x["lr"] > 0
    assert (run / "curves.png").stat().st_size > 1000
    best = torch.load(run / "best.pth", weights_only=True)
    assert best["best_top1"] == max(x["val_top1"] for x in m)
    model, info = create(STUDENT, checkpoint=str(run / "best.pth"))  # what 'generate --teacher-checkpoint' does
    assert info.num_classes == 8


def test_val_with_other_classes_is_refused(world, tmp_path):
    r = run_cli("train", world / "train", "--labels", world / "labels_q8", "--student", STUDENT, "--out",
                tmp_path / "x", "--val", make_imagefolder(tmp_path / "v3", per_class=1), "--epochs", "1", "-b", "8",
                "-j", "0", check=False, env=ONE_THREAD)
    assert r.returncode == 2 and "classes" in r.stderr and "Traceback" not in r.stderr


def test_class_map_puts_ground_truth_and_val_in_the_teachers_index_space(tmp_path, caplog):
    """A 3-class folder labelled by a 5-class teacher: CE targets and val labels are teacher indices."""
    from relabel.storage import LabelStore, StoreHeader, UserError, open_source
    from relabel.train.data import TrainData, finish_pixels
    from relabel.train.evaluate import eval_loader
    from relabel.train.loop import train
    from relabel.views import create_recipe, store_order

    folder = make_imagefolder(tmp_path / "train", per_class=4)  # ant, bee, cat
    val = make_imagefolder(tmp_path / "val", per_class=2, classes=("cat", "ant"), seed=3)  # a subset, other order
    src = open_source(str(folder))
    cmap = [4, 0, 2]
    h = StoreHeader(num_samples=len(src), views=1, topk=2, num_classes=5, class_names=list(src.class_names),
                    fingerprint=src.fingerprint, teacher={"model": "test_resnet", "num_classes": 5},
                    recipe=create_recipe("simple").to_dict(), seed=0, img_size=32, encoding={"name": "f32"},
                    class_map=cmap)
    keys = store_order(src.keys, 0)
    store = LabelStore.create(tmp_path / "labels", h, keys)
    gt = np.asarray(cmap)[[src.labels[src.index()[k]] for k in keys]]
    for sh in store.shards():  # the teacher is sure of the right teacher class
        n = sh.s1 - sh.s0
        idx = np.stack([gt[sh.s0:sh.s1], (gt[sh.s0:sh.s1] + 1) % 5], -1)[None]
        logp = np.log(np.broadcast_to([0.9, 0.06, 0.04], (1, n, 3)))
        store.write_shard(sh, 0, idx, logp, np.ones(n, np.uint8))
    data = TrainData(str(folder), str(tmp_path / "labels"))
    assert np.array_equal(data.gt, gt)  # dataset class i -> teacher class cmap[i]
    batch = finish_pixels(data.renderer, data.collate()([data.dataset()[it] for it in data.batches(0, 0, 4)[0]]), None)
    assert set(batch["y"].tolist()) <= set(cmap)
    loader = eval_loader(str(val), h.class_names, 32, 0.9, 4, 0, class_map=data.class_map)
    names = open_source(str(val)).class_names
    assert sorted(int(y) for _, ys in loader for y in ys) == sorted(cmap[h.class_names.index(n)] for n in names for _ in range(2))
    lg = logging.getLogger("relabel")  # the CLI may have turned its propagation off in this process
    lg.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="relabel"):
            r = train(TrainConfig_(folder, tmp_path / "labels", tmp_path / "run", val=str(val), ce_weight=1.0,
                                   log=True))
    finally:
        lg.removeHandler(caplog.handler)
    assert 0 <= r.val_top1 <= 100
    assert "teacher's 5-class index space via the store's class map" in caplog.text  # logged, not printed
    ck = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ck["num_classes"] == 5 and ck["class_map"] == cmap
    make_imagefolder(tmp_path / "val2", per_class=1, classes=("ant", "dog"))
    with pytest.raises(UserError, match="dog"):  # a val class the map does not know: an error, never a silent miss
        eval_loader(str(tmp_path / "val2"), h.class_names, 32, 0.9, 4, 0, class_map=data.class_map)


def TrainConfig_(data, labels, out, **kw):
    from relabel.train.loop import TrainConfig

    base = dict(student=STUDENT, epochs=1, batch_size=4, workers=0, warmup_epochs=0, model_ema=False, progress=False,
                log=False)
    return TrainConfig(data=str(data), labels=None if labels is None else str(labels), out=str(out), **{**base, **kw})


def test_preset_usi_and_explicit_options_win(world, tmp_path):
    from relabel.commands.train_command import parse_train_argv
    from relabel.train.config import preset_values
    from relabel.train.loop import build, resolve_config

    base = [str(world / "train"), "--labels", str(world / "labels_g8"), "--out", str(tmp_path / "r")]
    cfg = resolve_config(parse_train_argv(base + ["--preset", "usi"]))
    usi = preset_values("usi")
    assert len(usi) == 15 and {k: getattr(cfg, k) for k in usi} == usi
    assert (cfg.ce_weight, cfg.kd_weight, cfg.smoothing, cfg.aug_repeats, cfg.lr) == (1.0, 5.0, 0.0, 3, 2e-3)
    mine = resolve_config(parse_train_argv(base + ["--preset", "usi", "--lr", "1e-3", "--aug-repeats", "1",
                                                   "--smoothing", "0.1", "--model-ema-warmup"]))
    assert (mine.lr, mine.aug_repeats, mine.smoothing, mine.model_ema_warmup, mine.kd_weight) == (1e-3, 1, 0.1, True, 5.0)
    plain = resolve_config(parse_train_argv(base))
    assert (plain.smoothing, plain.kd_weight, plain.ce_weight, plain.aug_repeats, plain.kd_target) == (0.1, 1.0, 0.0, 1, "topk")
    _, tr = build(_cfg(world, tmp_path / "b", labels=str(world / "labels_g8"), preset="usi", model_ema=None))
    assert tr.cfg.aug_repeats == 3 and tr.ema is not None
    assert tr.ema_decay == pytest.approx(0.99996 ** (8 / 1024), rel=1e-12)  # USI's decay at batch 1024, here batch 8


def test_resume_refuses_other_data_labels_or_classes(world, tmp_path):
    from relabel.storage import UserError
    from relabel.train.loop import train

    kw = dict(epochs=2, stop_epoch=1)
    train(_cfg(world, tmp_path / "c", labels=str(world / "labels_q8"), **kw))
    with pytest.raises(UserError, match=r"labels .*labels_f32.*encoding"):  # same teacher and views, other values
        train(_cfg(world, tmp_path / "c", labels=str(world / "labels_f32"), resume=True, **kw))
    other = tmp_path / "other"
    shutil.copytree(world / "train", other)
    (other / "c7").rename(other / "c9")
    train(_cfg(world, tmp_path / "s", labels=None, mode="supervised", **kw))
    with pytest.raises(UserError, match=r"other inputs.*DATA .*fingerprint.*class names .*c7"):
        train(_cfg(world, tmp_path / "s", data=str(other), labels=None, mode="supervised", resume=True, **kw))
    r = train(_cfg(world, tmp_path / "s", labels=None, mode="supervised", resume=True, epochs=2))  # its own: continues
    assert r.last["epoch"] == 2 and r.epochs_done == 2


# ------------------------------------------------------------------------------------ 5. DDP
@pytest.mark.slow
def test_ddp_two_processes(world, tmp_path):
    import os
    import subprocess

    from conftest import ROOT

    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "relabel", "train", str(world / "train"), "--labels", str(world / "labels_q8"), "--student", STUDENT,
           "--out", str(run), "--val", str(world / "val"), "--epochs", "2", "-b", "8", "-j", "0", "--device", "cpu",
           "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, **ONE_THREAD})
    assert r.returncode == 0, r.stdout + r.stderr
    m = _metrics(run)
    assert len(m) == 2 and all(x["steps"] == 2 and x["samples"] == 32 for x in m)  # 5 batches -> 2 per rank
    assert all(x["val_top1"] is not None for x in m)
    assert (run / "last.pth").exists() and (run / "best.pth").exists()


# ------------------------------------------------------------------------------------ 6. bad input, subsets
def test_other_dataset_subset_and_bad_names(world, tmp_path):
    from relabel.train.data import TrainData

    sub = tmp_path / "sub"
    shutil.copytree(world / "train", sub)
    gone = sorted(p for p in sub.rglob("*") if p.is_file())[::7]
    for p in gone:
        p.unlink()
    args = ("train", sub, "--labels", world / "labels_q8", "--student", STUDENT, "--epochs", "1", "-b", "8", "-j", "0")
    r = run_cli(*args, "--out", tmp_path / "r0", check=False, env=ONE_THREAD)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--allow-subset" in lines[0]
    r = run_cli(*args, "--out", tmp_path / "r1", "--allow-subset", "--quiet", env=ONE_THREAD)
    n = 40 - len(gone)
    assert f"training on {n} of the store's 40 samples" in r.stderr
    assert _metrics(tmp_path / "r1")[0]["samples"] > 0
    # a sample whose stage-one partner is labelled but missing here is skipped for that view
    data = TrainData(str(sub), str(world / "labels_q8"), allow_subset=True)
    assert data.matched == n
    from relabel.views import pairs_for_view

    short = 0
    for e in range(4):
        v, flat, partner = data.order(42, e)
        stored = pairs_for_view(data.recipe, data.header.seed, v, 40)
        assert len(set(flat)) == len(flat) and all(data.present[p] for p in flat)
        for p in flat:
            q = stored[p]
            assert q < 0 or data.present[q], "partner labelled but missing: must be skipped"
            assert partner[p] == q
        short += len(flat) < n
    assert short > 0  # some samples lost their partner
    r = run_cli(*args, "--out", tmp_path / "r2", "--student", "no_such_net", check=False, env=ONE_THREAD)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: unknown model"), r.stderr
    from relabel.storage import UserError
    from relabel.train.loop import train

    for bad, match in (({"batch_size": 7}, "even"), ({"mode": "nope"}, "mode"), ({"labels": str(tmp_path / "no")}, "no label store"),
                       ({"data": str(tmp_path / "no")}, "no such"), ({"mode": "online"}, "`teacher_checkpoint`"),
                       ({"teacher_checkpoint": "x.pth"}, "`mode='online'` only"),
                       ({"batch_size": 64}, "smaller batch")):
        with pytest.raises(UserError, match=match):
            train(_cfg(world, tmp_path / "r3", **bad))
