"""relabel.views.randaug against timm's own RandAugment code, plus sampling statistics."""
from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from relabel.views.randaug import (
    NEGATING_OPS, RAND_INCREASING_TRANSFORMS, RAND_TRANSFORMS, SUPPORTED_OPS, OpParams,
    RandAugmentConfig, apply_op, apply_ops, op_argument, parse_randaugment, sample_ops,
)
from relabel.rng import CounterRNG

aa = pytest.importorskip("timm.data.auto_augment")

FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean
RESAMPLES = (Image.Resampling.BICUBIC, Image.Resampling.BILINEAR)
# (magnitude, magnitude_max): in range, fractional, clamped at 10, and beyond 10 with mmax 15
MAGNITUDES = ((0, 10), (3, 10), (5.5, 10), (7, 10), (10, 10), (12, 10), (13, 15))
TIMM_OPS = sorted(set(aa._RAND_TRANSFORMS) | set(aa._RAND_INCREASING_TRANSFORMS)
                  | {"TranslateX", "TranslateY"})


def _image(w=64, h=48, seed=0) -> Image.Image:
    g = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 200 / w + 20, y * 180 / h + 40, (x + y) * 100 / (w + h) + 60], -1)
    arr = np.clip(base + g.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _timm_apply(img, name, magnitude, negate, monkeypatch, *, resample, mmax=10,
                translate_const=250):
    """Run timm's AugmentOp end to end (clamp, level fn, aug fn) with the sign forced.

    prob=1 and magnitude_std=0 mean the only global-random draw left is _randomly_negate's
    random.random(); returns (image, number of random.random() calls)."""
    calls = []

    def fake_random():
        calls.append(1)
        return 0.9 if negate else 0.1  # timm negates when random() > 0.5

    monkeypatch.setattr(random, "random", fake_random)
    hp = dict(translate_const=translate_const, img_mean=FILL, interpolation=resample,
              magnitude_max=mmax)
    try:
        out = aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hp)(img)
    except ValueError:
        # Pillow >= 13 rejects posterize bits < 1, which timm passes; Pillow < 13 (what timm
        # was written against) zeroed every channel, the behaviour we keep.
        bits = aa.LEVEL_TO_ARG[name](max(0.0, min(magnitude, mmax)), hp)[0]
        if not (name.startswith("Posterize") and bits < 1):
            raise
        out = Image.new(img.mode, img.size, 0)
    monkeypatch.undo()
    return out, len(calls)


def test_op_lists_match_timm():
    assert RAND_TRANSFORMS == tuple(aa._RAND_TRANSFORMS)
    assert RAND_INCREASING_TRANSFORMS == tuple(aa._RAND_INCREASING_TRANSFORMS)
    assert set(TIMM_OPS) <= set(SUPPORTED_OPS)


@pytest.mark.parametrize("resample", RESAMPLES, ids=["bicubic", "bilinear"])
@pytest.mark.parametrize("name", TIMM_OPS)
def test_op_pixels_match_timm(name, resample, monkeypatch):
    img = _image()
    src = np.asarray(img)
    changed = False
    for tc in ((250, 20) if name in ("TranslateX", "TranslateY") else (250,)):
        for m, mmax in MAGNITUDES:
            for negate in ((False, True) if name in NEGATING_OPS else (False,)):
                ref, n_calls = _timm_apply(img, name, m, negate, monkeypatch, resample=resample,
                                           mmax=mmax, translate_const=tc)
                # timm draws a sign exactly for the ops we mark as negating
                assert n_calls == (1 if name in NEGATING_OPS else 0), name
                ours = apply_op(img, OpParams(name, m, negate), fill=FILL, resample=resample,
                                magnitude_max=mmax, translate_const=tc)
                assert ours.mode == ref.mode and ours.size == ref.size
                a = np.asarray(ours).astype(int)
                b = np.asarray(ref).astype(int)
                diff = np.abs(a - b).max()
                assert diff == 0, f"{name} m={m} mmax={mmax} neg={negate} tc={tc}: {diff}"
                changed |= not np.array_equal(a, src)
    assert changed, f"{name} never changed the image; the comparison would be vacuous"


@pytest.mark.parametrize("name", TIMM_OPS)
def test_op_argument_equals_timm_level_fn(name, monkeypatch):
    """Bit-equal floats, which sub-pixel differences in the pixel test could hide."""
    for m, mmax in MAGNITUDES + ((2.4999, 10), (6.1, 10), (9.87, 10)):
        for negate in (False, True) if name in NEGATING_OPS else (False,):
            monkeypatch.setattr(random, "random", lambda: 0.9 if negate else 0.1)
            level_fn = aa.LEVEL_TO_ARG[name]
            hp = dict(translate_const=123)
            want = level_fn(max(0.0, min(m, mmax)), hp)[0] if level_fn else None
            monkeypatch.undo()
            got = op_argument(OpParams(name, m, negate), magnitude_max=mmax, translate_const=123)
            assert type(got) is type(want) and got == want, (name, m, negate, got, want)


def test_apply_ops_sequence_matches_timm(monkeypatch):
    cfg = parse_randaugment("rand-m9-n3-mstd1-p0.7-inc1")
    img = _image(seed=1)
    for i in range(40):
        ops = sample_ops(cfg, CounterRNG("seq", i))
        ref = img
        for op in ops:
            ref, _ = _timm_apply(ref, op.name, op.magnitude, op.negate, monkeypatch,
                                 resample=RESAMPLES[0])
        ours = apply_ops(img, ops, fill=FILL, resample=RESAMPLES[0], magnitude_max=10.0)
        assert np.array_equal(np.asarray(ours), np.asarray(ref)), ops


def test_apply_op_rejects_bad_params():
    img = _image()
    with pytest.raises(ValueError, match="unknown"):
        apply_op(img, OpParams("Cutout", 5, False), fill=FILL, resample=RESAMPLES[0])
    with pytest.raises(ValueError, match="sign"):
        apply_op(img, OpParams("Equalize", 5, True), fill=FILL, resample=RESAMPLES[0])


def test_parse_spec():
    cfg = parse_randaugment("rand-m7-mstd0.5-inc1")
    assert (cfg.num_ops, cfg.magnitude, cfg.magnitude_std) == (2, 7, 0.5)
    assert cfg.increasing and cfg.ops == tuple(aa._RAND_INCREASING_TRANSFORMS)
    assert (cfg.prob, cfg.magnitude_max) == (0.5, 10.0)
    assert parse_randaugment("rand").magnitude == 10  # timm's default when 'm' is absent
    assert parse_randaugment("rand-mstd101").magnitude_std == math.inf
    assert parse_randaugment("rand-m7").ops == tuple(aa._RAND_TRANSFORMS)


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-p0.3", "rand-mstd101",
                                  "rand-m12-mmax15-inc1", "rand", "rand-n1-m0-inc0"])
def test_parse_matches_timm(spec):
    ours = parse_randaugment(spec)
    ra = aa.rand_augment_transform(spec, hparams=dict(translate_const=250, img_mean=FILL))
    assert ours.num_ops == ra.num_layers and ra.choice_weights is None
    assert ours.ops == tuple(op.name for op in ra.ops)
    for op in ra.ops:
        assert (op.prob, op.magnitude, op.magnitude_std) == (
            ours.prob, ours.magnitude, ours.magnitude_std)
        assert (op.magnitude_max or 10) == ours.magnitude_max


@pytest.mark.parametrize("spec", ["rand-mX", "rand-m", "auto-m9", "rand-q3", "rand-m7.5",
                                  "rand-tweights", "rand-m9-", "rand-inc", "rand-p1.5", ""])
def test_parse_malformed(spec):
    with pytest.raises(ValueError):
        parse_randaugment(spec)


def test_config_validation_and_json_roundtrip():
    with pytest.raises(ValueError, match="unknown"):
        RandAugmentConfig(ops=("Rotate", "Cutout"))
    with pytest.raises(ValueError):
        RandAugmentConfig(prob=-0.1)
    for cfg in (RandAugmentConfig(), parse_randaugment("rand-m7-mstd101-inc1-n3"),
                RandAugmentConfig(ops=("Rotate", "TranslateX"), magnitude=4.5)):
        text = json.dumps(cfg.to_dict(), allow_nan=False)
        assert RandAugmentConfig.from_dict(json.loads(text)) == cfg
    assert RandAugmentConfig().magnitude == 9 and RandAugmentConfig().ops == RAND_TRANSFORMS


N = 20000


def _draw(spec, tag="t"):
    cfg = parse_randaugment(spec)
    return cfg, [sample_ops(cfg, CounterRNG(tag, i)) for i in range(N)]


def test_sample_statistics():
    cfg, views = _draw("rand-m7-mstd0.5-inc1")
    counts = Counter(len(v) for v in views)  # two layers each firing w.p. 0.5
    for k, p in ((0, 0.25), (1, 0.5), (2, 0.25)):
        assert abs(counts[k] / N - p) < 0.015, counts
    fired = [op for v in views for op in v]
    freq = Counter(op.name for op in fired)
    assert set(freq) == set(cfg.ops)
    for name in cfg.ops:  # sd of each share is ~0.0018
        assert abs(freq[name] / len(fired) - 1 / len(cfg.ops)) < 0.01, freq
    mags = np.array([op.magnitude for op in fired])
    assert abs(mags.mean() - 7) < 0.02 and abs(mags.std() - 0.5) < 0.02
    assert mags.min() >= 0 and mags.max() <= 10
    signs = [op.negate for op in fired if op.name in NEGATING_OPS]
    assert abs(np.mean(signs) - 0.5) < 0.02
    assert not any(op.negate for op in fired if op.name not in NEGATING_OPS)


def test_sample_single_layer_rate_uniform_and_clamp():
    _, views = _draw("rand-n1-m8-p0.3-mstd101", "u")
    assert abs(sum(len(v) for v in views) / N - 0.3) < 0.015
    mags = np.array([op.magnitude for v in views for op in v])
    assert mags.min() >= 0 and mags.max() < 8
    assert abs(mags.mean() - 4) < 0.1 and abs(mags.var() - 64 / 12) < 0.3
    _, views = _draw("rand-m10-mstd1-p1", "c")
    mags = np.array([op.magnitude for v in views for op in v])
    assert mags.max() == 10 and abs((mags == 10).mean() - 0.5) < 0.02


def test_sample_determinism_and_alignment():
    cfg = parse_randaugment("rand-m9-n3-mstd0.5-inc1")
    a = [sample_ops(cfg, CounterRNG("d", i)) for i in range(200)]
    assert a == [sample_ops(cfg, CounterRNG("d", i)) for i in range(200)]
    assert a != [sample_ops(cfg, CounterRNG("e", i)) for i in range(200)]
    # Outcomes never shift the stream: the same layers pick the same ops whatever fires or
    # however magnitudes are drawn, and a lower prob only drops layers.
    names = None
    for mstd in (0.0, 0.5, math.inf):
        full = RandAugmentConfig(num_ops=3, magnitude=9, magnitude_std=mstd, prob=1.0,
                                 increasing=True)
        half = RandAugmentConfig(num_ops=3, magnitude=9, magnitude_std=mstd, prob=0.5,
                                 increasing=True)
        fa = [sample_ops(full, CounterRNG("d", i)) for i in range(200)]
        got = [[op.name for op in v] for v in fa]
        assert names is None or got == names
        names = got
        for i, v in enumerate(fa):
            h = list(sample_ops(half, CounterRNG("d", i)))
            it = iter(v)
            assert all(op in it for op in h), (v, h)  # h is a subsequence of v
