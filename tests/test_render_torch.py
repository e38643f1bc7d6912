"""Parity fuzzer: the torch renderer must give render_view's (Pillow's) bytes, exactly.

Every case goes through the public API (support_box -> region -> render_batch), rendered with every
resize kernel (``views.kernels``: dense float64 matmul, int32 taps), and is compared with
np.array_equal; a failure names the kernel, the case's image, parameters, size and how many pixels
differ.
More cases and another device: RELABEL_PARITY_CASES (a multiplier such as "4x" or "2.5", or a
total count such as "20000"), RELABEL_PARITY_DEVICE (default cpu, e.g. cuda) and
RELABEL_PARITY_SEED (default 0; another value draws other cases).
"""
from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from relabel.views.kernels import KERNELS
from relabel.views.randaug import NEGATING_OPS, SUPPORTED_OPS, OpParams, parse_randaugment
from relabel.views.torch import (GEOMETRIC_OPS, check_recipe, crop_region, mix_batch_torch, mix_pair_torch,
                                  render_batch, support_box)
from relabel.storage.errors import ConfigError, UserError
from relabel.views import (RECIPES, MixParams, Recipe, ViewParams, decode_image, group_partners, mix_batch,
                           mix_params, mix_pixels, render_view, view_params)

DEFAULT_CASES = 7000  # about the views this file renders at the default setting
_INTERPS = ("bicubic", "bilinear", "nearest", "lanczos")
DEVICE = torch.device(os.environ.get("RELABEL_PARITY_DEVICE", "cpu"))


def _multiplier() -> float:
    raw = os.environ.get("RELABEL_PARITY_CASES", "").strip().lower()
    if not raw:
        return 1.0
    if raw.endswith("x"):
        return float(raw[:-1])
    value = float(raw)
    return value if value < 100 else value / DEFAULT_CASES


MULT = _multiplier()
SEED = int(os.environ.get("RELABEL_PARITY_SEED", "0"))


def _rng(n: int) -> np.random.Generator:
    return np.random.default_rng([SEED, n])


DEPTH = 3  # the default run's cases per unit of each test's base count


def _n(base: int) -> int:
    return max(1, int(round(base * DEPTH * MULT)))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The fuzzer shares the machine; torch's intra-op pool would take every core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------ images
def _texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Smooth structure plus noise plus a few hard edges: every filter tap and clip matters."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    f = rng.uniform(0.05, 0.6, 3)
    base = np.stack([128 + 100 * np.sin(xx * f[c] + yy * f[(c + 1) % 3] + c) for c in range(3)], -1)
    base += rng.normal(0, rng.uniform(2, 40), base.shape)
    if w > 2 and h > 2 and rng.random() < 0.5:
        base[rng.integers(h):, : rng.integers(w)] = rng.choice([0.0, 255.0])
    return np.clip(base, 0, 255).astype(np.uint8)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decoded_pool(rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    """Decoded RGB images from every input kind decode_image takes, and the awkward shapes."""
    out = []

    def add(name, img, fmt="PNG", **kw):
        out.append((name, decode_image(_encode(img, fmt, **kw))))

    for w, h in ((64, 48), (37, 91), (120, 33), (9, 7)):
        add(f"rgb-png-{w}x{h}", Image.fromarray(_texture(rng, w, h)))
    add("rgb-jpeg-80x60", Image.fromarray(_texture(rng, 80, 60)), "JPEG", quality=85)
    add("gray-L-50x70", Image.fromarray(_texture(rng, 50, 70)[..., 0], "L"))
    add("palette-P-64x40", Image.fromarray(_texture(rng, 64, 40)).convert("P", palette=Image.Palette.ADAPTIVE, colors=37))
    add("cmyk-jpeg-48x48", Image.fromarray(_texture(rng, 48, 48)).convert("CMYK"), "JPEG", quality=90)
    add("cmyk-tiff-30x20", Image.fromarray(_texture(rng, 30, 20)).convert("CMYK"), "TIFF")
    sixteen = (_texture(rng, 40, 52)[..., 0].astype(np.uint16) * 257 + rng.integers(0, 257, (52, 40))).astype(np.uint16)
    add("16bit-I;16-40x52", Image.fromarray(sixteen))
    alpha = rng.integers(0, 256, (45, 33), dtype=np.uint8)
    add("rgba-png-33x45", Image.fromarray(np.dstack([_texture(rng, 33, 45), alpha]), "RGBA"))
    add("bilevel-1-25x31", Image.fromarray(_texture(rng, 25, 31)[..., 0] > 128))
    add("flat-16x16", Image.fromarray(np.full((16, 16, 3), 77, np.uint8)))
    add("two-tone-20x12", Image.fromarray(np.where(rng.random((12, 20, 1)) < 0.5, 10, 240).repeat(3, 2).astype(np.uint8)))
    add("1x1", Image.fromarray(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)))
    add("1x9", Image.fromarray(_texture(rng, 1, 9)))
    add("7x1", Image.fromarray(_texture(rng, 7, 1)))
    add("3000x40", Image.fromarray(_texture(rng, 3000, 40)))
    add("40x1500", Image.fromarray(_texture(rng, 40, 1500)))
    add("12x1300", Image.fromarray(_texture(rng, 12, 1300)))  # taller than 100:1
    return out


@pytest.fixture(scope="module")
def pool():
    return _decoded_pool(_rng(2024))


# ------------------------------------------------------------------------------------ parameters
def _crop(rng: np.random.Generator, W: int, H: int) -> tuple[float, float, float, float]:
    """Full image, sub-pixel, pixel-aligned, tiny or large fractional, extreme aspect crops."""
    kind = int(rng.integers(6))
    if kind == 0:
        return (0.0, 0.0, 1.0, 1.0)
    if kind == 1:  # pixel-aligned, as view_params makes them
        h, w = int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1))
        return (int(rng.integers(H - h + 1)) / H, int(rng.integers(W - w + 1)) / W, h / H, w / W)
    if kind == 2:  # tiny: from a fifth of a pixel to a few pixels
        h, w = min(1.0, rng.uniform(0.2, 3) / H), min(1.0, rng.uniform(0.2, 3) / W)
    elif kind == 3:  # a thin strip
        h, w = (1.0, rng.uniform(0.01, 0.1)) if rng.random() < 0.5 else (rng.uniform(0.01, 0.1), 1.0)
    else:
        h, w = rng.uniform(0.02, 1.0), rng.uniform(0.02, 1.0)
    margin = 1 - 1e-9
    return (rng.uniform(0, 1 - h) * margin, rng.uniform(0, 1 - w) * margin, h, w)


def _size(rng: np.random.Generator):
    kind = int(rng.integers(5))
    if kind == 0:
        return int(rng.integers(1, 6))
    if kind == 1:  # extreme output aspect
        a, b = int(rng.integers(1, 4)), int(rng.integers(20, 72))
        return (a, b) if rng.random() < 0.5 else (b, a)
    return int(rng.integers(6, 49))


def _op(rng: np.random.Generator, name: str, mmax: float, extreme: bool = True) -> OpParams:
    """0 and the recipe's max often, random otherwise; a sign for the ops that take one."""
    u = rng.random()
    m = 0.0 if extreme and u < 0.2 else float(mmax) if extreme and u < 0.45 else float(rng.uniform(0, mmax))
    return OpParams(name, m, name in NEGATING_OPS and bool(rng.integers(2)))


def _erase(rng: np.random.Generator):
    if rng.random() < 0.6:
        return None
    h, w = rng.uniform(0.01, 0.9), rng.uniform(0.01, 0.9)
    return (rng.uniform(0, 1 - h), rng.uniform(0, 1 - w), h, w)


# ------------------------------------------------------------------------------------ the check
def _describe(name, img, p, recipe, size, seed) -> str:
    return (f"image {name} {img.size}, recipe {recipe.name} ({recipe.interpolation}, fill {recipe.fill}, "
            f"{recipe.randaugment}), size {size}, crop {p.crop}, flip {p.flip}, ops {p.ops}, "
            f"erase {p.erase}, erase_seed {seed}")


def _check(cases, recipe: Recipe, size, *, whole_image: bool = False, batch: int = 24, kernels=tuple(KERNELS)) -> int:
    """Render ``cases`` [(name, img, params, erase_seed)] with Pillow and with each resize kernel, in
    batches; exact bytes."""
    for s in range(0, len(cases), batch):
        chunk = cases[s:s + batch]
        want = [render_view(img, p, recipe, size, erase_seed=seed) for _, img, p, seed in chunk]
        regions, offsets = [], []
        for _, img, p, _ in chunk:
            box = (0, 0) + img.size if whole_image else support_box(p, recipe, *img.size, size)
            regions.append(crop_region(img, box))
            offsets.append(box[:2])
        for kernel in kernels:
            got = render_batch(regions, offsets, [img.size for _, img, _, _ in chunk], [c[2] for c in chunk],
                               recipe, size, [c[3] for c in chunk], DEVICE, kernel=kernel)
            assert got.dtype == torch.uint8 and got.device.type == DEVICE.type
            got = got.cpu().numpy()
            bad = [i for i in range(len(chunk)) if not np.array_equal(want[i], got[i])]
            if bad:
                i = bad[0]
                d = np.abs(want[i].astype(int) - got[i].astype(int))
                name, img, p, seed = chunk[i]
                pytest.fail(f"kernel {kernel}: {len(bad)}/{len(chunk)} views differ; first: "
                            f"{_describe(name, img, p, recipe, size, seed)}: {int((d > 0).any(-1).sum())}/"
                            f"{d.shape[0] * d.shape[1]} pixels differ, max {int(d.max())}")
    return len(cases)


def _pick(rng, pool, big_every: int = 6):
    """A pool image; the long strips only now and then (they cost the Pillow side most)."""
    small = [x for x in pool if max(x[1].size) < 1000]
    return pool[int(rng.integers(len(pool)))] if rng.random() < 1 / big_every else small[int(rng.integers(len(small)))]


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("interp", ["bicubic", "bilinear", "nearest", "lanczos"])
def test_crop_resize_flip_parity(pool, interp):
    """Crop-resize alone: every crop kind, up- and downscaling, odd output shapes, flips."""
    rng = _rng(10 + _INTERPS.index(interp))
    recipe = Recipe(name=f"resize-{interp}", interpolation=interp, randaugment=None)
    n = 0
    for _ in range(_n(9)):
        size = _size(rng)
        cases = []
        for _ in range(16):
            name, img = _pick(rng, pool)
            cases.append((name, img, ViewParams(crop=_crop(rng, *img.size), flip=bool(rng.integers(2))), ()))
        n += _check(cases, recipe, size)
    # the same-size, whole-image copy and the integer-box crop shortcuts
    name, img = pool[0]
    W, H = img.size
    shortcuts = [ViewParams(crop=(0.0, 0.0, 1.0, 1.0), flip=False), ViewParams(crop=(3 / H, 5 / W, 20 / H, 30 / W), flip=True)]
    n += _check([(name, img, shortcuts[0], ())], recipe, (W, H))
    n += _check([(name, img, shortcuts[1], ())], recipe, (30, 20))
    assert n >= _n(9) * 16


def _op_recipe(interp: str, mmax: int) -> Recipe:
    return Recipe(name=f"ops-{interp}-{mmax}", interpolation=interp, randaugment=f"rand-m9-n3-mstd0.5-inc1-mmax{mmax}",
                  fill=(124, 116, 104) if mmax == 10 else (0, 255, 31))


@pytest.mark.parametrize("interp", ["bicubic", "bilinear", "nearest"])
def test_every_op_parity(pool, interp):
    """Each op alone at 0, max and random magnitudes, both signs (mmax 10, and 60 so Rotate hits
    90/180/270 and Posterize/Solarize leave their usual range), then random op sequences."""
    rng = _rng(20 + _INTERPS.index(interp))
    n = 0
    for mmax in (10, 60):
        recipe = _op_recipe(interp, mmax)
        for name in SUPPORTED_OPS:
            size = [24, (17, 9), 5, 32][int(rng.integers(4))]
            cases = []
            for k in range(_n(4 if mmax == 10 else 2)):
                pname, img = _pick(rng, pool, big_every=12)
                ops = (_op(rng, name, mmax),)
                if mmax == 60 and name == "Rotate":  # exactly 90, 180, 270 degrees and back to 0
                    ops = (OpParams("Rotate", [30.0, 60.0, 30.0, 0.0][k % 4], k % 2 == 1),)
                p = ViewParams(crop=_crop(rng, *img.size), flip=bool(rng.integers(2)), ops=ops)
                cases.append((pname, img, p, ()))
            n += _check(cases, recipe, size)
        cases = []
        for i in range(_n(48)):
            pname, img = _pick(rng, pool, big_every=12)
            ops = tuple(_op(rng, SUPPORTED_OPS[int(rng.integers(len(SUPPORTED_OPS)))], mmax)
                        for _ in range(int(rng.integers(1, 4))))
            cases.append((pname, img, ViewParams(crop=_crop(rng, *img.size), flip=bool(rng.integers(2)), ops=ops,
                                                 erase=_erase(rng)), ("seq", i)))
        n += _check(cases, recipe, [28, 28, (31, 12)][mmax // 30])
    assert n > 0


def test_lanczos_ops_parity_and_refusals(pool):
    """Lanczos renders every non-geometric op; the geometric ones raise ValueError in both
    renderers (Image.transform has no Lanczos), except Rotate by 0, which Pillow copies."""
    rng = _rng(30)
    with pytest.raises(UserError, match="'lanczos' cannot resample the geometric"):
        _op_recipe("lanczos", 10)  # refused where it is written, not on the first rotated view
    recipe = Recipe(name="ops-lanczos-10", interpolation="lanczos", randaugment=None)
    recipe.__dict__["ra"] = parse_randaugment("rand-m9-n3-mstd0.5-inc1-mmax10")  # ops given by hand below
    plain = [o for o in SUPPORTED_OPS if o not in GEOMETRIC_OPS]
    cases = []
    for i in range(_n(72)):
        pname, img = _pick(rng, pool, big_every=12)
        ops = tuple(_op(rng, plain[int(rng.integers(len(plain)))], 10) for _ in range(int(rng.integers(1, 3))))
        if i % 9 == 0:
            ops += (OpParams("Rotate", 0.0, bool(i % 2)),)
        cases.append((pname, img, ViewParams(crop=_crop(rng, *img.size), flip=bool(rng.integers(2)), ops=ops), ()))
    _check(cases, recipe, 20)
    name, img = pool[0]
    for op in sorted(GEOMETRIC_OPS):
        p = ViewParams(crop=(0.0, 0.0, 1.0, 1.0), flip=False, ops=(OpParams(op, 5.0, False),))
        with pytest.raises(ValueError):
            render_view(img, p, recipe, 16)
        with pytest.raises(ValueError):
            render_batch([crop_region(img, (0, 0) + img.size)], [(0, 0)], [img.size], [p], recipe, 16, [()], DEVICE)
    with pytest.raises(ConfigError, match="lanczos"):
        check_recipe(recipe)


def test_usi_recipe_real_draws(pool):
    """The USI recipe's own view_params draws (mixed op lists per batch), erase off and on."""
    usi = RECIPES["usi"]
    check_recipe(usi)
    n = 0
    for recipe in (usi, dataclasses.replace(usi, name="usi-erase", erase_prob=0.6)):
        for size in (224, 40, (64, 24)):
            cases = []
            count = _n(40 if size == 224 else 120)
            for i in range(count):
                name, img = pool[i % len(pool)] if size != 224 or i % 5 else pool[i % 5]
                key = f"{name}/{i}"
                view = i % 7
                p = view_params(recipe, 7, key, view, img.size)
                cases.append((name, img, p, (recipe.digest, 7, key, view)))
            n += _check(cases, recipe, size, batch=40)
    assert n >= 4 * _n(120)


def test_decoded_modes_and_extreme_shapes(pool):
    """Every decoded input kind and the 1x1 / 1500x40 / 40x1500 images, with real draws."""
    rng = _rng(40)
    recipe = dataclasses.replace(RECIPES["usi"], name="usi-m", randaugment="rand-m9-n3-mstd1.0-inc1", erase_prob=0.3)
    cases = []
    for name, img in pool:
        for v in range(_n(6)):
            p = view_params(recipe, 3, name, v, img.size)
            if v % 3 == 0:
                p = dataclasses.replace(p, crop=_crop(rng, *img.size))
            cases.append((name, img, p, ("modes", name, v)))
    _check(cases, recipe, 36)


def test_support_box_region_equals_whole_image(pool):
    """Rendering from support_box's region equals rendering from the whole image and from any
    larger region; the box lies inside the image; a region missing part of it is refused."""
    rng = _rng(50)
    n = 0
    for interp in ("bicubic", "bilinear", "nearest", "lanczos"):
        recipe = Recipe(name=f"box-{interp}", interpolation=interp,
                        randaugment=None if interp == "lanczos" else "rand-m9-mstd0.5-inc1")
        for _ in range(_n(16)):
            name, img = _pick(rng, pool, big_every=4)
            W, H = img.size
            size = _size(rng)
            p = dataclasses.replace(view_params(recipe, 1, name, int(rng.integers(1000)), img.size),
                                    crop=_crop(rng, W, H))
            x0, y0, x1, y1 = box = support_box(p, recipe, W, H, size)
            assert 0 <= x0 <= x1 <= W and 0 <= y0 <= y1 <= H, box
            bx0, by0 = int(rng.integers(x0 + 1)), int(rng.integers(y0 + 1))
            bigger = (bx0, by0, int(rng.integers(x1, W + 1)), int(rng.integers(y1, H + 1)))
            kernel = tuple(KERNELS)[n % len(KERNELS)]
            outs = [render_batch([crop_region(img, b)], [b[:2]], [img.size], [p], recipe, size, [()], DEVICE,
                                 kernel=kernel)[0].cpu().numpy() for b in (box, (0, 0, W, H), bigger)]
            assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2]), (kernel, name, p, size, box)
            assert np.array_equal(outs[0], render_view(img, p, recipe, size)), kernel
            n += 1
            if x1 - x0 > 1:
                short = (x0 + 1, y0, x1, y1)
                with pytest.raises(ValueError, match="support box"):
                    render_batch([crop_region(img, short)], [short[:2]], [img.size], [p], recipe, size, [()], DEVICE)
    assert n == 4 * _n(16)
    # whole-image regions through the batch path as well
    recipe = RECIPES["usi"]
    cases = [(name, img, view_params(recipe, 2, name, v, img.size), ()) for name, img in pool[:8] for v in range(2)]
    _check(cases, recipe, 24, whole_image=True)


@pytest.mark.parametrize("interp", ["bicubic", "nearest"])
def test_packing_never_changes_bytes(pool, monkeypatch, interp):
    """How a batch is packed (views grouped by their resize passes, chunked by size) changes the
    work, never the bytes: one view per chunk, the default chunks and one chunk per group all give
    Pillow's bytes, on batches mixing integer crops, one-pass and two-pass resizes of every shape."""
    import relabel.views.packed as rt
    from relabel.views.torch import resize_plan

    rng = _rng(95 + len(interp))
    recipe = dataclasses.replace(RECIPES["usi"], name=f"usi-pack-{interp}", interpolation=interp, erase_prob=0.5,
                                 randaugment="rand-m9-n2-mstd0.5-inc1" if interp != "nearest" else None)
    size = 24
    cases = []
    for k in range(_n(12)):
        name, img = _pick(rng, pool, big_every=3)
        W, H = img.size
        p = view_params(recipe, 4, name, k, img.size)
        if k % 4 == 1:  # Image.resize's copy shortcut: a pixel-aligned box of the output's size
            if W >= size and H >= size:
                x0, y0 = int(rng.integers(W - size + 1)), int(rng.integers(H - size + 1))
                p = dataclasses.replace(p, crop=(y0 / H, x0 / W, size / H, size / W))
        elif k % 4 == 2:
            p = dataclasses.replace(p, crop=_crop(rng, W, H))
        cases.append((name, img, p, ("pack", name, k)))
    plans = [resize_plan(c[2], recipe, *c[1].size, size) for c in cases]
    regions = [crop_region(c[1], pl.box) for c, pl in zip(cases, plans)]

    def chunks() -> int:
        packed = rt.pack_batch(regions, [pl.box[:2] for pl in plans], plans, [c[2] for c in cases],
                               [None] * len(cases), size, recipe)
        return len(packed["chunks"]) + (packed["nearest"] is not None)

    counts = []
    for waste, cap in ((0.0, 1), (rt._WASTE, rt._CHUNK_BYTES), (float("inf"), float("inf"))):
        monkeypatch.setattr(rt, "_WASTE", waste)
        monkeypatch.setattr(rt, "_CHUNK_BYTES", cap)
        counts.append(chunks())
        _check(cases, recipe, size, batch=len(cases))
    if interp != "nearest":  # the three packings differ, so each path ran
        assert counts[0] == len(cases) and counts[0] > counts[1] >= counts[2] and counts[2] <= 5, counts


def test_packed_record_round_trips_bit_for_bit():
    """A batch crosses to the device as two buffers: every array comes back with its dtype, shape
    and bits (float32 widened and narrowed exactly, float64 and NaN payloads as words, 0-d kept)."""
    from relabel.views.packed import _upload

    f32 = np.array([0.0, -0.0, np.inf, -np.inf, 1 / 3, 1e-45, 3.4028235e38, np.nan], np.float32)
    f64 = np.array([np.pi, -0.0, 5e-324, np.nan], np.float64)
    record = {"a": torch.tensor(7, dtype=torch.int64), "f32": torch.from_numpy(f32), "f64": torch.from_numpy(f64),
              "i32": torch.tensor([-2 ** 31, 2 ** 31 - 1], dtype=torch.int32),
              "rgb": torch.arange(12, dtype=torch.uint8).view(2, 2, 3), "list": [torch.zeros((0, 4), dtype=torch.int64)],
              "plain": (3, "x")}
    got = _upload(record, DEVICE)
    assert got["plain"] == (3, "x") and got["a"].shape == () and int(got["a"]) == 7
    for key, dtype, bits in (("f32", torch.float32, torch.int32), ("f64", torch.float64, torch.int64),
                             ("i32", torch.int32, torch.int32), ("rgb", torch.uint8, torch.uint8)):
        assert got[key].dtype == dtype and got[key].device.type == DEVICE.type
        assert torch.equal(got[key].cpu().view(bits), record[key].view(bits)), key
    assert got["list"][0].shape == (0, 4)
    with pytest.raises(ValueError, match="whole RGB pixels"):
        _upload({"odd": torch.zeros(4, dtype=torch.uint8)}, DEVICE)
    with pytest.raises(TypeError, match="bool"):
        _upload({"mask": torch.zeros(3, dtype=torch.bool)}, DEVICE)


def test_mixing_parity(pool):
    """mix_pair_torch / mix_batch_torch give mix_pixels / mix_batch's bytes and lambdas."""
    rng = _rng(60)
    for k in range(_n(150)):
        H, W = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        a, b = (rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(2))
        if k % 2:
            mix = MixParams("mixup", [0.0, 1.0, 0.5, 1 / 512, float(rng.random())][k % 5])
        else:
            hh, ww = rng.uniform(0, 1), rng.uniform(0, 1)
            mix = MixParams("cutmix", 1 - hh * ww, (rng.uniform(0, 1 - hh), rng.uniform(0, 1 - ww), hh, ww))
        ra, rb, rl = mix_pixels(a, b, mix)
        ta, tb, tl = mix_pair_torch(torch.from_numpy(a).to(DEVICE), torch.from_numpy(b).to(DEVICE), mix)
        assert np.array_equal(ra, ta.cpu().numpy()) and np.array_equal(rb, tb.cpu().numpy()) and rl == tl, (mix, H, W)
    usi = RECIPES["usi"]
    for view in range(_n(8)):
        n = 16
        pixels = rng.integers(0, 256, (n, 20, 20, 3), dtype=np.uint8)
        partners = group_partners(usi, 5, view, 0, n)
        positions = list(range(n))
        keep = sorted(rng.choice(n, n - 3, replace=False))  # some partners absent from the batch
        want, wl, wo = mix_batch(usi, 5, view, [positions[i] for i in keep], [pixels[i] for i in keep], partners[keep])
        got, gl, go = mix_batch_torch(usi, 5, view, [positions[i] for i in keep], torch.from_numpy(pixels[keep]).to(DEVICE),
                                      partners[keep])
        assert np.array_equal(np.stack(want), got.cpu().numpy()) and wl == gl and wo == go, view
        assert any(mix_params(usi, 5, view, p) is not None for p in positions)


def test_pairs_mixed_after_rendering(pool):
    """Render a mix group on the device and mix it there: the bytes of stage one's CPU path."""
    recipe = dataclasses.replace(RECIPES["usi"], name="usi-mix", mix_group=8)
    imgs = [pool[i % len(pool)] for i in range(8)]
    for view in range(_n(3)):
        params = [view_params(recipe, 9, f"g/{i}", view, img.size) for i, (_, img) in enumerate(imgs)]
        seeds = [(recipe.digest, 9, f"g/{i}", view) for i in range(8)]
        want = [render_view(img, p, recipe, 32, erase_seed=s) for (_, img), p, s in zip(imgs, params, seeds)]
        boxes = [support_box(p, recipe, *img.size, 32) for (_, img), p in zip(imgs, params)]
        got = render_batch([crop_region(img, b) for (_, img), b in zip(imgs, boxes)], [b[:2] for b in boxes],
                           [img.size for _, img in imgs], params, recipe, 32, seeds, DEVICE)
        partners = group_partners(recipe, 9, view, 0, 8)
        wm, wl, _ = mix_batch(recipe, 9, view, list(range(8)), want, partners)
        gm, gl, _ = mix_batch_torch(recipe, 9, view, list(range(8)), got, partners)
        assert np.array_equal(np.stack(wm), gm.cpu().numpy()) and wl == gl


def test_check_recipe_and_bad_inputs(pool):
    check_recipe(RECIPES["usi"])
    check_recipe(RECIPES["simple"])
    check_recipe(Recipe(name="lz-plain", interpolation="lanczos", randaugment=None))
    with pytest.raises(UserError, match="interpolation"):  # the recipe itself refuses it now
        Recipe(name="lz", interpolation="lanczos")
    lz = Recipe(name="lz", interpolation="lanczos", randaugment=None)
    lz.__dict__["ra"] = parse_randaugment("rand-m9-n3")  # bypassing that check: the renderer's own guard
    with pytest.raises(ConfigError, match="interpolation"):
        check_recipe(lz)
    name, img = pool[0]
    p = ViewParams(crop=(0.0, 0.0, 1.0, 1.0), flip=False)
    with pytest.raises(ValueError, match="uint8"):
        render_batch([crop_region(img, (0, 0) + img.size).float()], [(0, 0)], [img.size], [p], RECIPES["simple"], 8, [()], DEVICE)
    with pytest.raises(ValueError, match="length"):
        render_batch([], [(0, 0)], [img.size], [p], RECIPES["simple"], 8, [()], DEVICE)
    empty = render_batch([], [], [], [], RECIPES["usi"], (5, 3), [], DEVICE)
    assert tuple(empty.shape) == (0, 3, 5, 3)


def test_resize_pass_order_boundary():
    """Pillow 13 resizes vertically first when the height loses more than twice the columns the
    width loses; sizes on both sides of that boundary, with crops and upscaled widths."""
    rng = _rng(70)
    n = 0
    for interp in ("bicubic", "bilinear", "lanczos"):
        recipe = Recipe(name=f"order-{interp}", interpolation=interp, randaugment=None)
        for _ in range(_n(10)):
            W, out_w = int(rng.integers(2, 60)), int(rng.integers(1, 80))
            out_h = int(rng.integers(1, 40))
            edge = out_h + 2 * (W - out_w)
            for H in (edge - 1, edge, edge + 1):
                if H < 1:
                    continue
                img = Image.fromarray(_texture(rng, W, H))
                p = ViewParams(crop=_crop(rng, W, H) if rng.random() < 0.5 else (0.0, 0.0, 1.0, 1.0), flip=False)
                n += _check([(f"order-{W}x{H}", img, p, ())], recipe, (out_w, out_h))
    assert n > 0


@pytest.mark.parametrize("filt", ["nearest", "bilinear", "bicubic"])
def test_affine_paths_match_image_transform(filt):
    """Geometry.c's paths the ops rarely reach: nearest's scale, 16.16 fixed-point and float
    fallback (corners beyond 32768), bilinear/bicubic at and beyond the edges; random matrices."""
    from relabel.views.ops_torch import _affine_data, _k_affine
    from relabel.views.packed import _upload

    rng = _rng(80 + _INTERPS.index(filt))
    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC}[filt]
    for k in range(_n(40)):
        W, H = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        arr = _texture(rng, W, H)
        kind = k % 4
        if kind == 0:  # scale/translate only
            a = (float(rng.uniform(0.2, 3)), 0.0, float(rng.uniform(-20, 20)), 0.0, float(rng.uniform(0.2, 3)), float(rng.uniform(-20, 20)))
        elif kind == 1:  # general affine, small coordinates (fixed point for nearest)
            a = tuple(float(v) for v in rng.uniform(-2, 2, 6) * (1, 1, 10, 1, 1, 10))
        elif kind == 2:  # a corner beyond 32768: nearest's float fallback
            a = (float(rng.uniform(1500, 3000)) * rng.choice([-1, 1]), float(rng.uniform(-1, 1)), float(rng.uniform(0, W)),
                 float(rng.uniform(-1, 1)), float(rng.uniform(0.5, 2)), float(rng.uniform(0, H)))
        else:  # a rotation about the centre, as Image.rotate builds it
            from relabel.views.ops_torch import _rotate_matrix
            a = tuple(_rotate_matrix(float(rng.uniform(0, 360)), W, H))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        want = np.asarray(Image.fromarray(arr).transform((W, H), Image.Transform.AFFINE, a, resample=resample, fillcolor=fill))
        got = _k_affine(torch.from_numpy(arr)[None].to(DEVICE), _upload(_affine_data([(a, filt)], W, H), DEVICE),
                        {"fill": torch.tensor(fill, dtype=torch.uint8, device=DEVICE)})[0].cpu().numpy()
        assert np.array_equal(want, got), (filt, a, W, H, int((want != got).any(-1).sum()))


def test_histogram_ops_on_edge_histograms():
    """Equalize (its table overflowing 255, clipped by point()), AutoContrast (one value, two
    values, full range) on crafted images; the whole image is the view (same-size copy)."""
    rng = _rng(90)
    recipe = Recipe(name="hist", randaugment="rand-m9-mstd0.5-inc1")
    cases = []
    for k in range(_n(60)):
        W, H = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        values = rng.choice(256, int(rng.integers(1, 5)), replace=False)
        if k % 3 == 0:
            values = np.unique(np.r_[values, 255])
        arr = rng.choice(values, (H, W, 3)).astype(np.uint8)
        if k % 5 == 0:
            arr[...] = arr[..., :1]  # gray: the channels agree
        op = ("Equalize", "AutoContrast")[k % 2]
        ops = (OpParams(op, 0.0, False),) + ((OpParams(("AutoContrast", "Equalize")[k % 2], 0.0, False),) if k % 4 == 0 else ())
        cases.append((f"hist-{k}", Image.fromarray(arr), ViewParams(crop=(0.0, 0.0, 1.0, 1.0), flip=False, ops=ops), ()))
    for name, img, p, seed in cases:
        _check([(name, img, p, seed)], recipe, img.size)


def test_taps_kernel_tiles_tap_blocks_and_int64_never_change_bytes(pool, monkeypatch):
    """The taps kernel's tiling (one output row per tile), its tap blocks (a wide filter's taps
    gathered several at once) and its int64 accumulator (taken when a chunk's tables could leave
    int32) give Pillow's bytes, like its defaults; strips shrunk to a few pixels make filters
    hundreds of taps wide."""
    import relabel.views.kernels as kern
    import relabel.views.packed as rt

    rng = _rng(110)
    recipe = Recipe(name="taps-paths", interpolation="bicubic", randaugment=None)
    strips = [x for x in pool if x[0] in ("3000x40", "40x1500", "12x1300", "rgb-png-120x33")]
    cases = [(name, img, ViewParams(crop=_crop(rng, *img.size) if k % 2 else (0.0, 0.0, 1.0, 1.0), flip=False), ())
             for k, (name, img) in enumerate(strips * 2)]
    for tile, steps, int32 in ((1, kern._TAP_STEPS, rt._INT32), (1 << 30, 2, rt._INT32), (64 * 1024, 3, (-1, 1))):
        monkeypatch.setitem(kern._TILE_BYTES, "cpu", tile)
        monkeypatch.setattr(kern, "_TAP_STEPS", steps)
        monkeypatch.setattr(rt, "_INT32", int32)  # (-1, 1): every chunk "could overflow", so int64
        for size in ((5, 3), (7, 40), 1):
            _check(cases, recipe, size, kernels=("taps",))


def test_int32_bound_is_checked_on_the_host():
    """``_tables`` flags a chunk whose Resample.c partial sums could leave int32; Pillow's own
    coefficient tables (every filter, shrinking and enlarging) stay far inside."""
    from relabel.views.packed import _tables
    from relabel.views.resample import _Coeffs, _coeffs

    one = _Coeffs(np.array([0]), np.array([3]), np.array([[1 << 23, 1 << 22, -(1 << 22)]], np.int64))
    assert _tables([one], [0])[1] is True  # 2**21 + 255 * 3 * 2**22 > 2**31 - 1
    assert _tables([_Coeffs(one.first, one.count, one.k // 4)], [0])[1] is False
    rng = _rng(111)
    for interp in ("bicubic", "bilinear", "lanczos"):
        for _ in range(_n(30)):
            n, out = int(rng.integers(1, 3000)), int(rng.integers(1, 300))
            a = np.float32(rng.uniform(0, n - 0.5))
            c = _coeffs(n, a, np.float32(rng.uniform(float(a) + 0.25, n)), out, interp)
            tables, wide = _tables([c], [int(c.first.min())])
            assert not wide and tables.shape[-1] == max(1, int(c.count.max())), (interp, n, out)


def test_the_kernel_is_picked_by_timing_and_kernels_must_agree(pool, monkeypatch, caplog):
    """auto: every kernel renders the device's first batches (timed after a warm-up), the fastest
    is kept and logged once; a forced kernel is never timed; kernels that disagree are an error."""
    import logging

    import relabel.views.kernels as kern
    from relabel.storage import ConfigError as CfgError
    from relabel.views import ViewRenderer, create_renderer, render_now

    recipe = RECIPES["usi"]
    samples = [(i, 0, -1, name, img) for i, (name, img) in enumerate(pool[:6])]
    auto = create_renderer("torch", ViewRenderer(recipe, 0, 24), "cpu")
    want = render_now(create_renderer("pillow", ViewRenderer(recipe, 0, 24)), samples)
    with caplog.at_level(logging.INFO, logger="relabel.views.kernels"):
        for _ in range(4):
            assert torch.equal(render_now(auto, samples, "cpu"), want)
    picker = auto.kernels
    assert picker.kernel_for("cpu") in KERNELS and set(picker.timings["cpu"]) == set(KERNELS)
    assert all(len(t) == picker.trials for t in picker.timings["cpu"].values())  # none timed once picked
    assert len([r for r in caplog.records if "render kernel on cpu" in r.getMessage()]) == 1
    for name in KERNELS:
        forced = create_renderer("torch", ViewRenderer(recipe, 0, 24), "cpu", kernel=name)
        assert torch.equal(render_now(forced, samples, "cpu"), want)
        assert forced.kernels.kernel_for("cpu") == name and forced.kernels.timings == {}
    with pytest.raises(CfgError, match="render_kernel"):
        create_renderer("torch", ViewRenderer(recipe, 0, 24), "cpu", kernel="fp16")
    good = kern.KERNELS["taps"]
    off_by_one = kern.ResizeKernel("taps", lambda t, tab, axis, wide: good.run(t, tab, axis, wide) ^ 1)
    monkeypatch.setitem(kern.KERNELS, "taps", off_by_one)
    with pytest.raises(CfgError, match="give different bytes"):
        render_now(create_renderer("torch", ViewRenderer(recipe, 0, 24), "cpu"), samples, "cpu")
