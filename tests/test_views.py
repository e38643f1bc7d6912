"""The view contract: parameters from a counter-based RNG, deterministic pixels, mixing."""
from __future__ import annotations

import hashlib
import io
import multiprocessing as mp

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from relabel.views import (RECIPES, MixParams, Recipe, ViewRenderer, create_recipe, decode_image, mix_batch,
                           mix_params, mix_pixels, pairs_for_view, render_view, store_order, view_params)
from relabel.storage import UserError


def _image(seed=0, size=(96, 72)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.float64)
    arr += rng.normal(0, 20, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return decode_image(buf.getvalue())


def _digest(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


JOBS = [(f"cls/img{i}", v) for i in range(3) for v in range(4)]


def _render_all(recipe_name="usi", seed=0, size=48):
    r = ViewRenderer(RECIPES[recipe_name], seed, size)
    img = _image()
    return _digest(r.render(k, v, img) for k, v in JOBS)


class _Views(Dataset):
    def __len__(self):
        return len(JOBS)

    def __getitem__(self, i):
        k, v = JOBS[i]
        return torch.from_numpy(ViewRenderer(RECIPES["usi"], 0, 48).render(k, v, _image()))


def _child(q):
    q.put(_render_all())


def test_replay_identical_across_processes_and_workers():
    here = _render_all()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    there = q.get(timeout=120)
    p.join()
    assert here == there
    for workers in (0, 2):
        batches = list(DataLoader(_Views(), batch_size=5, num_workers=workers))
        assert _digest(b.numpy() for b in torch.cat(batches)) == here


def test_golden_hash_and_every_input_matters():
    base = _render_all()
    assert base == _render_all()
    assert _render_all(seed=1) != base
    assert _render_all(size=40) != base
    assert _render_all(recipe_name="simple") != base
    r = ViewRenderer(RECIPES["usi"], 0, 48)
    img = _image()
    assert _digest([r.render("cls/img0", 0, img)]) != _digest([r.render("cls/img0", 1, img)])
    assert _digest([r.render("cls/img0", 0, img)]) != _digest([r.render("cls/img1", 0, img)])
    assert _digest([r.render("cls/img0", 0, img)]) != _digest([r.render("cls/img0", 0, _image(seed=5))])
    tweaked = Recipe(name="usi", scale=(0.09, 1.0))
    assert tweaked.digest != RECIPES["usi"].digest
    assert _digest([ViewRenderer(tweaked, 0, 48).render("cls/img0", 0, img)]) != _digest([r.render("cls/img0", 0, img)])
    assert base == GOLDEN_HASH, f"golden view hash changed: {base}"


# Recorded once (Pillow 13); a change of any input, or of the pixel code, changes it.
GOLDEN_HASH = "b4dd1938b86e1676896db09bd56b97877d1ff52661065d6e38160babe6cb15c2"


def test_parameter_statistics_match_recipe():
    usi = RECIPES["usi"]
    params = [view_params(usi, 0, f"k{i}", v, (500, 400)) for i in range(400) for v in range(10)]
    areas = np.array([p.crop[2] * p.crop[3] for p in params])
    ratios = np.array([(p.crop[3] * 500) / (p.crop[2] * 400) for p in params])
    assert 0.08 * 0.95 <= areas.min() and areas.max() <= 1.0
    # torchvision's own RandomResizedCrop sampler on the same image size, as the reference
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    ref = np.array([(h * w) / (500 * 400) for _ in range(4000)
                    for (_, _, h, w) in [RandomResizedCrop.get_params(torch.empty(3, 400, 500), [0.08, 1.0], [3 / 4, 4 / 3])]])
    assert abs(areas.mean() - ref.mean()) < 0.02 and abs(np.median(areas) - np.median(ref)) < 0.03
    assert abs(np.log(ratios).mean()) < 0.03 and ratios.min() > 0.74 and ratios.max() < 1.35
    assert abs(np.mean([p.flip for p in params]) - 0.5) < 0.03
    n_ops = np.array([len(p.ops) for p in params])
    assert abs(n_ops.mean() - 1.0) < 0.05  # 2 layers x p=0.5
    mixes = [mix_params(usi, 0, v, p) for v in range(20) for p in range(0, 400, 2)]
    assert all(m is not None for m in mixes)  # mix_prob 1
    kinds = np.array([m.kind == "cutmix" for m in mixes])
    assert abs(kinds.mean() - 0.5) < 0.05
    lam_mix = np.array([m.lam for m in mixes if m.kind == "mixup"])
    assert abs(lam_mix.mean() - 0.5) < 0.03 and abs(lam_mix.var() - 0.8 * 0.8 / (1.6 ** 2 * 2.6)) < 0.015
    simple = RECIPES["simple"]
    assert mix_params(simple, 0, 0, 0) is None and all(not p.ops for p in [view_params(simple, 0, "k", 0, (64, 64))])


def test_pairs_are_a_matching_within_groups():
    usi = RECIPES["usi"]
    for n in (130, 64, 7):
        partner = pairs_for_view(usi, 0, 3, n)
        paired = np.nonzero(partner >= 0)[0]
        assert np.array_equal(partner[partner[paired]], paired)  # symmetric
        assert np.all(partner[paired] // usi.mix_group == paired // usi.mix_group)  # inside the group
        assert (partner < 0).sum() == sum(1 for g in range(0, n, 64) if min(64, n - g) % 2)
    assert not np.array_equal(pairs_for_view(usi, 0, 3, 128), pairs_for_view(usi, 0, 4, 128))


def test_mixing_both_ways_and_at_any_resolution():
    a = np.full((32, 32, 3), 200, np.uint8)
    b = np.full((32, 32, 3), 10, np.uint8)
    out_a, out_b, lam = mix_pixels(a, b, MixParams("mixup", 0.75))
    assert lam == 0.75 and out_a[0, 0, 0] == int(200 * 0.75 + 10 * 0.25 + 0.5) and out_b[0, 0, 0] == int(10 * 0.75 + 200 * 0.25 + 0.5)
    out_a, out_b, lam = mix_pixels(a, b, MixParams("cutmix", 0.75, (0.25, 0.25, 0.5, 0.5)))
    assert lam == 0.75 and (out_a == 10).sum() == 16 * 16 * 3 and (out_b == 200).sum() == 16 * 16 * 3
    # a batch mixes present pairs only, the same way whatever else is in it
    usi = RECIPES["usi"]
    partner = pairs_for_view(usi, 0, 0, 64)
    p = 0
    q = int(partner[p])
    pix = {i: np.full((8, 8, 3), i * 3, np.uint8) for i in range(64)}
    alone = mix_batch(usi, 0, 0, [p, q], [pix[p], pix[q]], [q, p])
    crowd = mix_batch(usi, 0, 0, list(range(64)), [pix[i] for i in range(64)], partner)
    assert np.array_equal(alone[0][0], crowd[0][p]) and alone[1][0] == crowd[1][p] and crowd[2][p] == q
    lonely = mix_batch(usi, 0, 0, [p], [pix[p]], [q])
    assert np.array_equal(lonely[0][0], pix[p]) and lonely[2] == [-1]
    # normalized crops: the same view at two resolutions shows the same content
    img = _image()
    prm = view_params(RECIPES["simple"], 0, "k", 0, img.size)
    big = render_view(img, prm, RECIPES["simple"], 64).astype(float)
    small = render_view(img, prm, RECIPES["simple"], 32).astype(float)
    down = np.asarray(Image.fromarray(big.astype(np.uint8)).resize((32, 32), Image.Resampling.BOX), float)
    assert np.abs(down - small).mean() < 6


def test_erasing_is_deterministic():
    rec = Recipe(name="erase", erase_prob=1.0, randaugment=None, mix_prob=0.0)
    r = ViewRenderer(rec, 0, 48)
    img = _image()
    x1, x2 = r.render("k", 0, img), r.render("k", 0, img)
    plain = ViewRenderer(Recipe(name="plain", randaugment=None, mix_prob=0.0), 0, 48).render("k", 0, img)
    assert np.array_equal(x1, x2) and not np.array_equal(x1, plain)


def test_recipes_from_files_and_errors(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: usi\nmixup_alpha: 0.2\nmix_group: 32\n")
    r = create_recipe(str(tmp_path / "mine.yaml"))
    assert r.name == "mine" and r.mixup_alpha == 0.2 and r.mix_group == 32 and r.randaugment == RECIPES["usi"].randaugment
    (tmp_path / "mine.json").write_text('{"base": "simple", "hflip": 0.0}')
    assert create_recipe(str(tmp_path / "mine.json")).hflip == 0.0
    assert create_recipe(r.to_dict()) == r
    for text, msg in (("colour: 3\n", "unknown setting"), ("mix_group: 3\n", "mix_group"),
                      ("randaugment: rand-zz\n", "recipe"), ("[1, 2]\n", "mapping")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(UserError, match=msg):
            create_recipe(str(tmp_path / "bad.yaml"))
    with pytest.raises(UserError, match="unknown recipe"):
        create_recipe("nope")


def test_store_order_is_a_seeded_shuffle():
    keys = [f"c{i // 50}/{i}" for i in range(500)]
    a, b = store_order(keys, 0), store_order(list(reversed(keys)), 0)
    assert a == b and sorted(a) == sorted(keys) and a != sorted(keys) and store_order(keys, 1) != a
    # classes spread over mix groups: a group of 64 holds many classes
    assert len({k.split("/")[0] for k in a[:64]}) >= 8
