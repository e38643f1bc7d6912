"""``relabel show``: a contact sheet of stored views with their labels, to see what the teacher saw
and said.

One row per sample, one column per stored view. Each tile is the exact pixels the student replays:
the sample goes through ``TrainData`` (keys matched to DATA, the drift check), its ``ViewDataset``
item and ``MixCollate`` (the pair mixed as stage one mixed it) and ``finish_pixels``, the
``ReplayLoader``'s own path, at the store's size; on the sheet a tile is only enlarged by a whole
factor (nearest neighbour), so its pixels stay as they are. The caption under it: the target (the
ground truth, or for a mixed view both classes with their shares), the teacher's top-3 with
probabilities (stored top-k renormalized with the rest bin, as the trainer reads them) and the rest
mass. Everything on the sheet is also in a JSON sidecar beside the PNG, for scripts and tests.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from relabel.settings import config_of_call
from relabel.storage.errors import ConfigError, named
from relabel.storage.stats import probabilities, teacher_class_names

from .show_config import ShowConfig

DEFAULT_COLUMNS = 8
TOP = 3
# Colours: readable on white, told apart by more than hue (the marks ✓/✗ and the bar say it too).
INK, DIM, GREY_TILE = (20, 20, 20), (110, 110, 110), (200, 200, 200)
GOOD, BAD, MIX = (0, 120, 60), (190, 30, 30), (120, 60, 170)
MINOR = (230, 150, 0)  # the frame when the top-1 is the smaller class of a mix
BAR, BAR_GOOD = (214, 222, 235), (200, 232, 210)


def percent(p: float) -> str:
    """A probability as the caption writes it: whole percents from 10% to 99.5%, one decimal below
    and above ('99.6%'), '<0.1%' and '>99.9%' at the ends (so only a true 0 or 1 reads '0%' / '100%')."""
    x = 100.0 * float(p)
    if x >= 100.0 or x <= 0.0:
        return f"{x:.0f}%"
    if x >= 99.95:
        return ">99.9%"
    if 9.95 <= x < 99.5:
        return f"{x:.0f}%"
    if x >= 0.05:
        return f"{x:.1f}%"
    return "<0.1%"


def _font(size: int, bold: bool = False):
    """DejaVu Sans from matplotlib's data (a dependency, so the sheet looks the same everywhere)."""
    try:
        import matplotlib

        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name), size)
    except Exception:  # pragma: no cover - no matplotlib fonts: Pillow's own
        return ImageFont.load_default(size)


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` cut (with an ellipsis) to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _wrap_words(draw, text: str, font, width: int, lines: int) -> list[str]:
    """``text`` over at most ``lines`` lines of ``width`` pixels, broken between words."""
    out, cur = [], ""
    for w in text.split(" "):
        if cur and draw.textlength(cur + " " + w, font=font) > width:
            out.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    out.append(cur)
    if len(out) > lines:
        out = out[:lines - 1] + [_fit(draw, " ".join(out[lines - 1:]), font, width)]
    return out


def _wrap(draw, text: str, font, width: int, lines: int) -> list[str]:
    """``text`` over at most ``lines`` lines of ``width`` pixels (breaking anywhere: keys have no spaces)."""
    out = []
    while text and len(out) < lines:
        n = len(text)
        while n > 1 and draw.textlength(text[:n], font=font) > width:
            n -= 1
        out.append(text[:n])
        text = text[n:]
    if text:
        out[-1] = _fit(draw, out[-1] + text, font, width)
    return out


def show(store: str | ShowConfig, data: str | None = None, **settings) -> Image.Image:
    """A contact sheet of stored views and their labels; returns the image (PIL, RGB).

    ``show(ShowConfig(...))`` or ``show(store, data, out=..., samples=..., key=[...], views=[...],
    seed=..., tile_size=...)``. With ``out`` the PNG is written there and a JSON sidecar (same name,
    ``.json``) beside it; the sidecar's content is also ``image.info["relabel"]``: per tile the key,
    view, ground truth, top-3 (class index, name, probability), rest mass, mix partner and lambda,
    whether the image was unreadable, and where the tile lies on the sheet.

    Raises ``relabel.RelabelError`` (one line in the CLI) for an unknown key, a view the store does not
    hold, DATA of another dataset, and everything ``ReplayLoader`` refuses.
    """
    cfg = config_of_call(ShowConfig, store if isinstance(store, ShowConfig) else str(getattr(store, "path", store)),
                         None if data is None else str(data), settings, "show",
                         "the labels and the images they were made from")
    from relabel.train.data import TrainData

    td = TrainData(cfg.data, cfg.store, allow_subset=cfg.allow_subset, allow_drift=cfg.allow_pixel_drift)
    h = td.header
    positions = _positions(td, cfg)
    views = _views(td, cfg)
    tiles = [[_tile(td, p, v) for v in views] for p in positions]
    names = teacher_class_names(h.class_names, h.num_classes, h.class_map)
    _label(td, positions, views, tiles, names)
    image, meta = _draw(td, cfg, positions, views, tiles, names)
    if cfg.out:
        out = str(cfg.out)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        image.save(out, format="PNG")
        with open(sidecar_path(out), "w") as f:
            json.dump(meta, f, indent=1)
    image.info["relabel"] = meta
    return image


def sidecar_path(png: str) -> str:
    return os.path.splitext(png)[0] + ".json"


# ---------------------------------------------------------------------------- what to show
def _positions(td, cfg: ShowConfig) -> list[int]:
    keys = td.store.keys
    if cfg.key:
        index = {k: i for i, k in enumerate(keys)}
        missing = [k for k in cfg.key if k not in index]
        if missing:
            raise ConfigError(f"{named('key')} {missing[0]!r} is not a sample of {cfg.store} ({len(keys):,} samples; "
                              f"keys look like {keys[0]!r}); give a key the store holds")
        return [index[k] for k in dict.fromkeys(cfg.key)]
    n = min(cfg.samples, len(keys))
    return np.sort(np.random.default_rng(cfg.seed).choice(len(keys), n, replace=False)).tolist()


def _views(td, cfg: ShowConfig) -> list[int]:
    lo, hi = td.view_lo, td.view_lo + td.views
    held = f"views {lo}-{hi - 1}" + (f" only (a pulled range of the {td.header.views})" if lo > 0 else "")
    if cfg.views is None:
        return list(range(lo, min(hi, lo + DEFAULT_COLUMNS)))
    bad = [v for v in cfg.views if not lo <= v < hi]
    if bad:
        raise ConfigError(f"{named('views')}: view {bad[0]} is not in {cfg.store}, which holds {held}; "
                          f"choose views in {lo}..{hi - 1}")
    return list(cfg.views)


def _tile(td, p: int, v: int) -> dict:
    """One tile's pixels, rendered as ``ReplayLoader`` renders them (or why there are none), and its
    mixing as stage one mixed it (the pair, when both images decoded and its mixing fires)."""
    from relabel.storage.header import STATUS_UNREADABLE
    from relabel.train.data import finish_pixels
    from relabel.views import group_partners, mix_lambda, mix_params

    h, rec = td.header, td.recipe
    t = {"position": int(p), "view": int(v), "key": td.store.keys[p], "state": "ok", "pixels": None,
         "partner": None, "lam": 1.0, "mix": None}
    if td.store.status()[p] == STATUS_UNREADABLE:
        t["state"] = "unreadable"
        return t
    g0 = p - p % rec.mix_group  # its mix group alone: the partner without pairing the whole store
    q = int(group_partners(rec, h.seed, v, g0, min(rec.mix_group, h.num_samples - g0))[p - g0])
    mix = mix_params(rec, h.seed, v, min(p, q)) if q >= 0 and td.status_ok[q] else None
    if mix is not None:
        t["partner"], t["lam"], t["mix"] = q, mix_lambda(mix, h.img_size, h.img_size), mix.kind
    if not td.present[p]:
        t["state"] = "missing"
        return t
    if mix is not None and not td.present[q]:  # stage one mixed it with an image DATA lacks
        t["state"] = "partner_missing"
        return t
    q = q if q >= 0 and td.usable[q] else -1  # as ReplayLoader pairs it
    ds = td.dataset()
    batch = td.collate()([ds[(p, v, q)]] + ([ds[(q, v, p)]] if q >= 0 else []))
    finish_pixels(td.renderer, batch, None)
    t["pixels"] = batch["pixels"][0].permute(1, 2, 0).contiguous().numpy()
    # the replayed batch's own mixing (the same as above: one mixing contract for both stages)
    t["partner"] = int(batch["partner"][0]) if int(batch["partner"][0]) >= 0 else None
    t["lam"] = float(batch["lam"][0]) if t["partner"] is not None else 1.0
    t["mix"] = t["mix"] if t["partner"] is not None else None
    return t


def _classes(td) -> np.ndarray:
    """Ground truth per store position in the teacher's index space: DATA's (as ReplayLoader's ``y``),
    else the store's own record (schema 4) for keys DATA lacks; -1 unknown."""
    gt = np.array(td.gt)
    own = getattr(td.store, "sample_classes", None)
    own = own() if callable(own) else None
    if isinstance(own, np.ndarray):
        fill = (gt < 0) & (own >= 0)
        gt[fill] = td.header.teacher_class(own[fill])
    return gt


def _label(td, positions, views, tiles, names) -> None:
    """The stored labels of every tile (read per view, or gathered where the store can)."""
    k, classes = td.header.topk, _classes(td)
    gather = getattr(td.store, "gather", None)
    pos = np.asarray([p for p in positions for _ in views], np.int64)
    vw = np.asarray([v for _ in positions for v in views], np.int64)
    if gather is not None:
        idx, lp = gather(pos, vw)
    else:
        rows = {v: td.store.read_view(v) for v in views}
        idx = np.stack([rows[v][0][p] for p, v in zip(pos, vw)])
        lp = np.stack([rows[v][1][p] for p, v in zip(pos, vw)])
    prob = probabilities(lp)
    flat = [t for row in tiles for t in row]
    for t, i, pr in zip(flat, idx, prob):
        gt = int(classes[t["position"]])
        t["ground_truth"] = None if gt < 0 else {"index": gt, "name": names[gt]}
        if t["partner"] is not None:
            g = int(classes[t["partner"]])
            t["partner_key"] = td.store.keys[t["partner"]]
            t["partner_class"] = None if g < 0 else {"index": g, "name": names[g]}
        if t["state"] == "unreadable":  # no labels: stage one stored zeros
            t["top"], t["rest"] = [], None
            continue
        t["top"] = [{"index": int(c), "name": names[int(c)], "prob": float(p)} for c, p in zip(i[:TOP], pr[:TOP])]
        t["rest"] = float(pr[k])


def _target(t: dict) -> tuple[list[tuple[str, float]], int | None, set]:
    """(the target's classes with their shares, the class the top-1 should be or None for an even
    blend, the classes in the target)."""
    gt = t.get("ground_truth")
    if gt is None:
        return [], None, set()
    if t["partner"] is None:
        return [(gt["name"], 1.0)], gt["index"], {gt["index"]}
    pc = t.get("partner_class")
    if pc is None:  # mixed with an image of unknown class: the target is not known
        return [], None, set()
    if pc["index"] == gt["index"]:
        return [(gt["name"], 1.0)], gt["index"], {gt["index"]}
    lam = t["lam"]
    major = gt["index"] if lam > 0.5 else pc["index"] if lam < 0.5 else None
    return [(gt["name"], lam), (pc["name"], 1 - lam)], major, {gt["index"], pc["index"]}


# ---------------------------------------------------------------------------- drawing
def _draw(td, cfg: ShowConfig, positions, views, tiles, names):
    h = td.header
    S = h.img_size
    scale = max(1, math.ceil(cfg.tile_size / S))
    T = S * scale
    f, fb, fs, ft = _font(13), _font(13, bold=True), _font(11), _font(15, bold=True)
    line, pad, border = 17, 14, 3
    cap_lines = 2 + TOP + 1  # target (2 lines for a mix), top-3, rest
    col_w = max(T, 190)
    lay = _Layout(T, scale, col_w, line, border, f, fb)
    head_w = 170
    colhead_h = line + 6
    row_h = T + 2 * border + 6 + cap_lines * line + pad
    W = head_w + len(views) * (col_w + pad) + pad
    t = h.teacher
    model = "ensemble" if t.get("members") else t.get("model") or t.get("name")
    title = (f"{cfg.store}: teacher {model}, recipe {h.recipe.get('name')} seed {h.seed}, "
             f"{S} px views" + (f" shown x{scale}" if scale > 1 else "") + f", top-{h.topk} of {h.num_classes} classes")
    legend = ("Each tile is what the student replays. Under it: the target (a mixed view: both images' classes and "
              "shares), the teacher's top-3 (✓ a target class) and the rest (the mass outside the stored top-k). "
              "Frame: green, the top-1 is the target (of a mix: its larger class); amber, the smaller class of a mix; "
              "red, neither.")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_lines = _wrap_words(measure, title, ft, W - 2 * pad, 3)
    legend_lines = _wrap_words(measure, legend, fs, W - 2 * pad, 6)
    title_h = 8 + 20 * len(title_lines) + 4 + 14 * len(legend_lines) + 10
    H = title_h + colhead_h + len(positions) * row_h + pad
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    for i, s in enumerate(title_lines):
        d.text((pad, 8 + 20 * i), s, font=ft, fill=INK)
    for i, s in enumerate(legend_lines):
        d.text((pad, 8 + 20 * len(title_lines) + 4 + 14 * i), s, font=fs, fill=DIM)

    y0 = title_h
    for j, v in enumerate(views):
        d.text((head_w + j * (col_w + pad) + border, y0), f"view {v}", font=fb, fill=INK)
    y0 += colhead_h
    meta_tiles = []
    for r, (p, row) in enumerate(zip(positions, tiles)):
        y = y0 + r * row_h
        gt = row[0].get("ground_truth")
        key_lines = _wrap(d, td.store.keys[p], f, head_w - pad, 3)
        for i, s in enumerate(key_lines):
            d.text((pad, y + border + i * line), s, font=f, fill=INK)
        cls = "unreadable image" if row[0]["state"] == "unreadable" else (
            f"class: {gt['name']}" if gt else "class: ? (unknown)")
        for i, s in enumerate(_wrap(d, cls, fb, head_w - pad, 2)):
            d.text((pad, y + border + (len(key_lines) + i) * line + 4), s, font=fb, fill=INK)
        for j, tile in enumerate(row):
            x = head_w + j * (col_w + pad) + border
            meta_tiles.append(_draw_tile(d, img, tile, x, y + border, lay))
            meta_tiles[-1].update(row=r, col=j)
    meta = {"store": cfg.store, "data": cfg.data, "img_size": S, "scale": scale, "topk": h.topk,
            "views": list(views), "keys": [td.store.keys[p] for p in positions], "tiles": meta_tiles}
    return img, meta


@dataclass(frozen=True)
class _Layout:
    T: int  # tile side on the sheet
    scale: int  # whole enlargement factor of the view's pixels
    col_w: int
    line: int
    border: int
    f: Any  # caption font
    fb: Any  # bold


def _draw_tile(d, img, t, x, y, lay: _Layout) -> dict:
    """One tile and its caption at (x, y); returns its sidecar record."""
    T, scale, col_w, line, border, f, fb = lay.T, lay.scale, lay.col_w, lay.line, lay.border, lay.f, lay.fb
    meta = {"key": t["key"], "position": t["position"], "view": t["view"], "box": [x, y, x + T, y + T],
            "unreadable": t["state"] == "unreadable", "state": t["state"],
            "ground_truth": t.get("ground_truth"), "top": t.get("top", []), "rest": t.get("rest"),
            "mix": None, "caption": []}
    if t["partner"] is not None:
        meta["mix"] = {"kind": t["mix"], "partner_key": t.get("partner_key"), "partner_class": t.get("partner_class"),
                       "lam": t["lam"]}
    if t["pixels"] is None:  # a labelled grey tile saying why there are no pixels
        d.rectangle([x, y, x + T - 1, y + T - 1], fill=GREY_TILE)
        why = {"unreadable": ["unreadable image", "stage one could not", "decode it: no labels"],
               "missing": ["not in DATA", "(no image to render)"],
               "partner_missing": ["mixed with", t.get("partner_key") or "?", "which DATA lacks"]}[t["state"]]
        for i, s in enumerate(why):
            s = _fit(d, s, f, T - 8)
            d.text((x + (T - d.textlength(s, font=f)) / 2, y + T / 2 + (i - len(why) / 2) * line), s,
                   font=fb if i == 0 else f, fill=INK)
    else:
        px = t["pixels"]
        if scale > 1:
            px = np.repeat(np.repeat(px, scale, 0), scale, 1)
        img.paste(Image.fromarray(px), (x, y))
    shares, major, target = _target(t)
    top = t.get("top") or []
    if top and target:  # is the top-1 what the target says? (the frame, around pixels only)
        ok = top[0]["index"] == major if major is not None else top[0]["index"] in target
        colour = GOOD if ok else MINOR if top[0]["index"] in target else BAD
        if t["pixels"] is not None:
            d.rectangle([x - border, y - border, x + T + border - 1, y + T + border - 1], outline=colour,
                        width=border)
        meta["top1_is_target"] = bool(ok)
    cy = y + T + border + 4
    caption = []
    if t["state"] != "unreadable":
        gt, pc = t.get("ground_truth"), t.get("partner_class")
        if t["partner"] is not None:
            own, other = (gt or {}).get("name", "?"), (pc or {}).get("name", "?")
            same = " (same class)" if gt and pc and gt["index"] == pc["index"] else ""
            lacks = " (not in DATA)" if t["state"] == "partner_missing" else ""
            lines = [(f"{t['mix']}: {percent(t['lam'])} {own}", MIX),
                     (f"  + {percent(1 - t['lam'])} {other}{same}{lacks}", MIX)]
        else:
            lines = [(f"target: {shares[0][0]}" if shares else "target: ? (class unknown)", INK), ("", INK)]
        for i, (s, colour) in enumerate(lines):
            if s:
                s = _fit(d, s, fb, col_w)
                d.text((x, cy + i * line), s, font=fb, fill=colour)
                caption.append(s)
    cy += 2 * line
    for i, e in enumerate(top):
        yy = cy + i * line
        hit = e["index"] in target
        d.rectangle([x, yy + 1, x + max(1, round(e["prob"] * col_w)) - 1, yy + line - 2], fill=BAR_GOOD if hit else BAR)
        mark = "✓" if hit else ("✗" if i == 0 and target else " ")
        num = percent(e["prob"])
        name = _fit(d, f"{mark} {i + 1}. {e['name']}", f, col_w - d.textlength(num, font=f) - 8)
        colour = GOOD if hit else (BAD if i == 0 and target else INK)
        d.text((x + 2, yy), name, font=f, fill=colour)
        d.text((x + col_w - d.textlength(num, font=f) - 2, yy), num, font=f, fill=colour)
        caption.append(f"{name} {num}")
    if t.get("rest") is not None:
        yy = cy + len(top) * line
        num = percent(t["rest"])
        s = _fit(d, "   rest: other classes", f, col_w - d.textlength(num, font=f) - 8)
        d.text((x + 2, yy), s, font=f, fill=DIM)
        d.text((x + col_w - d.textlength(num, font=f) - 2, yy), num, font=f, fill=DIM)
        caption.append(f"{s.strip()} {num}")
    meta["caption"] = caption
    return meta


__all__ = ["show", "percent", "sidecar_path"]
