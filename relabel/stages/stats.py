"""``relabel info --stats``: what a label set says, in one streaming pass over its views.

The counting is ``relabel.storage.stats.LabelStats`` (numpy, bounded memory); this module feeds it
view by view with what the store does not record: which views blended two images, with whom and by
how much (recomputed from the recipe and the seed, as stage one mixed them), and the ground truth
(the store's own per-sample classes when it has them, else DATA's, matched by key). ``plot_stats``
draws the result.
"""
from __future__ import annotations

import numpy as np

from relabel.storage.errors import StoreError, named
from relabel.storage.stats import LabelStats, teacher_class_names

from .show_config import StatsConfig

ROWS_PER_STEP = 1 << 14  # rows per LabelStats.add: bounds its float64 temporaries (~1.5 MB each at k = 10)


def ground_truth(store, data: str | None, allow_subset: bool = False) -> tuple[np.ndarray | None, str | None]:
    """(class per store position in the teacher's index space, -1 unknown; where it came from) or
    (None, None). The store's own record wins (``sample_classes``, schema 4), else DATA's, matched by
    key. DATA, when given, is checked either way: other classes are refused, another dataset too
    unless ``allow_subset``."""
    h = store.header
    from_data = _data_classes(store, data, allow_subset) if data is not None else None
    own = getattr(store, "sample_classes", None)
    classes = own() if callable(own) else None
    if isinstance(classes, np.ndarray):
        return h.teacher_class(classes), "store"
    if from_data is not None:
        return from_data, "data"
    return None, None


def _data_classes(store, data: str, allow_subset: bool) -> np.ndarray:
    from relabel.storage import open_source

    h = store.header
    src = open_source(data)
    where = getattr(store, "path", "the labels")
    if list(src.class_names) != list(h.class_names):
        raise StoreError(f"{data}: its classes are not the ones the labels were made for ({len(src.class_names)} in "
                         f"DATA, {len(h.class_names)} in {where}); pass the images the labels were made from")
    index = src.index()
    at = np.asarray([index.get(k, -1) for k in store.keys], np.int64)
    if not (at >= 0).any():
        raise StoreError(f"{data}: none of the {len(at):,} keys of {where} is in DATA; pass the images the labels "
                         f"were made from")
    # the fingerprint as a store of this schema records it (keys and classes; since schema 4 each key's class too)
    fp = src.fingerprint_for(h.schema_version) if hasattr(src, "fingerprint_for") else src.fingerprint
    if h.fingerprint not in (fp, src.fingerprint) and not allow_subset:
        raise StoreError(f"{data}: another dataset than the labels' (fingerprint {fp[:12]} vs "
                         f"{h.fingerprint[:12]}): {int((at >= 0).sum()):,} of the {len(at):,} keys of {where} are in "
                         f"DATA; set {named('allow_subset', True)} to count the ground truth of those")
    gt = np.full(len(at), -1, np.int64)
    gt[at >= 0] = h.teacher_class(np.asarray(src.labels)[at[at >= 0]])
    return gt


def view_mixing(recipe, seed: int, img_size: int, view: int, rows: np.ndarray, readable: np.ndarray,
                pairs: np.ndarray | None = None):
    """For store positions ``rows`` under ``view``: (mixed, partner position or -1, own lambda), as stage
    one mixed them: a pair is blended when both decoded and the pair's mixing fires. ``pairs``: the
    view's ``pairs_for_view``, when the caller has it already."""
    from relabel.views import mix_lambda, mix_params, pairs_for_view

    n = len(rows)
    partner, lam = np.full(n, -1, np.int64), np.ones(n)
    if not recipe.mixes or n == 0:
        return np.zeros(n, bool), partner, lam
    q = (pairs if pairs is not None else pairs_for_view(recipe, seed, view, len(readable)))[rows]
    mixed = (q >= 0) & readable[np.maximum(q, 0)]
    first = np.minimum(rows, q)
    by_pair: dict[int, float | None] = {}
    for i in np.nonzero(mixed)[0]:
        f = int(first[i])
        if f not in by_pair:
            mix = mix_params(recipe, seed, view, f)
            by_pair[f] = None if mix is None else mix_lambda(mix, img_size, img_size)
        if by_pair[f] is None:
            mixed[i] = False
        else:
            lam[i] = by_pair[f]
    partner[mixed] = q[mixed]
    return mixed, partner, lam


def label_stats(store: str | StatsConfig, data: str | None = None, **settings) -> dict:
    """Statistics of a label store, an export or a pulled range of views, in one pass over its
    views (memory: one view's rows at a time; see ``relabel.storage.stats``).

    ``label_stats(StatsConfig(...))`` or ``label_stats(store, data=None, stats_samples=..., seed=...,
    allow_subset=..., progress=...)``. Returns plain data: ``relabel.storage.stats.LabelStats.result``
    plus ``store``, ``views_held`` and ``ground_truth`` (``store``, ``data`` or None: then no agreement).
    """
    if isinstance(store, StatsConfig):
        if data is not None or settings:
            raise TypeError("label_stats(StatsConfig) takes no other settings; set them on the StatsConfig")
        cfg = store
    else:
        cfg = StatsConfig(store=str(getattr(store, "path", store)), data=data, **settings)
    from relabel.progress import progress_bar
    from relabel.storage.header import STATUS_UNREADABLE
    from relabel.storage.labels import open_labels
    from relabel.views import create_recipe, pairs_for_view

    st = store if hasattr(store, "read_view") else open_labels(cfg.store)
    h = st.header
    if not st.complete:
        raise StoreError(f"{cfg.store}: the label store is incomplete ({len(st.pending_shards())} shard(s) pending); "
                         f"finish 'relabel generate' first")
    gt, gt_from = ground_truth(st, cfg.data, cfg.allow_subset)
    status = st.status()
    readable = status != STATUS_UNREADABLE
    N = h.num_samples
    chosen = np.arange(N)
    if cfg.stats_samples is not None and cfg.stats_samples < N:
        chosen = np.sort(np.random.default_rng(cfg.seed).choice(N, cfg.stats_samples, replace=False))
    rows = chosen[readable[chosen]]
    lo, hi = getattr(st, "held_views", (0, h.views))
    recipe = create_recipe(h.recipe)
    stats = LabelStats(h.num_classes, h.topk, teacher_class_names(h.class_names, h.num_classes, h.class_map))
    stats.add_samples(len(chosen), int((~readable[chosen]).sum()))
    with progress_bar(cfg.progress, "stats", hi - lo, unit="views") as bar:
        for v in range(lo, hi):
            idx, lp = st.read_view(v)
            pairs = pairs_for_view(recipe, h.seed, v, N) if recipe.mixes else None
            for a in range(0, len(rows), ROWS_PER_STEP):
                r = rows[a:a + ROWS_PER_STEP]
                mixed, partner, lam = view_mixing(recipe, h.seed, h.img_size, v, r, readable, pairs)
                stats.add(idx[r], lp[r], None if gt is None else gt[r], mixed,
                          None if gt is None else np.where(mixed, gt[np.maximum(partner, 0)], -1), lam)
            del idx, lp
            bar.advance(1)
    out = stats.result()
    out.update(store=cfg.store, views_held=[int(lo), int(hi)], ground_truth=gt_from)
    return out


def plot_stats(s: dict, path: str, title: str | None = None) -> None:
    """Rest mass and top-1 probability histograms and per-class agreement, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = s["topk"]
    per = s.get("per_class") if s.get("per_class") and s["per_class"]["class"] else None
    fig, axes = plt.subplots(1, 3 if per else 2, figsize=(16 if per else 11, 4.6), constrained_layout=True)
    fig.suptitle(title or f"{s['store']}: {s['views']:,} views of {s['samples']:,} samples", fontsize=12)

    ax = axes[0]
    hr = s["histograms"]["rest_mass"]
    counts = np.asarray(hr["counts"], float)
    group = max(1, len(counts) // 80)  # ~80 bars over 8 decades
    counts = counts[: len(counts) // group * group].reshape(-1, group).sum(1)
    edges = np.logspace(np.log10(hr["lo"]), np.log10(hr["hi"]), len(counts) + 1)
    nz = np.nonzero(counts)[0]
    if len(nz):
        a, b = max(0, nz[0] - 2), min(len(counts), nz[-1] + 3)
        ax.stairs(100 * counts[a:b] / max(s["views"], 1), edges[a:b + 1], fill=True, color="#4c72b0")
        ax.set_xscale("log")
    for name, x, style in (("median", s["rest_mass"]["p50"], "--"), ("p95", s["rest_mass"]["p95"], ":")):
        ax.axvline(x, color="k", ls=style, lw=1, label=f"{name} {x:.2g}")
    ax.set_title(f"rest mass: probability outside the top-{k}\n(mean {s['rest_mass']['mean']:.3g})", fontsize=10)
    ax.set_xlabel("rest mass (log scale)")
    ax.set_ylabel("% of views")
    ax.legend(fontsize=9)

    ax = axes[1]
    h1 = s["histograms"]["top1_prob"]
    counts = np.asarray(h1["counts"], float).reshape(50, -1).sum(1)
    ax.stairs(100 * counts / max(s["views"], 1), np.linspace(0, 1, 51), fill=True, color="#55a868")
    ax.axvline(s["top1_prob"]["mean"], color="k", ls="--", lw=1, label=f"mean {s['top1_prob']['mean']:.2f}")
    ax.set_xlim(0, 1)
    ax.set_title("the teacher's top-1 probability", fontsize=10)
    ax.set_xlabel("probability of the top-1 class")
    ax.set_ylabel("% of views")
    ax.legend(fontsize=9)

    if per:
        ax = axes[2]
        agree = np.asarray(per["agreement"]) * 100
        names, views = per["name"], per["views"]
        order = np.argsort(agree, kind="stable")
        if len(order) <= 30:  # a bar per class, named, its value written beside it (0% is no bar at all)
            ax.barh(range(len(order)), agree[order], color="#c44e52")
            for j, i in enumerate(order):
                ax.text(agree[i] + 1, j, f"{agree[i]:.0f}%", va="center", fontsize=8)
            ax.set_yticks(range(len(order)), [f"{names[i]} ({views[i]:,} views)" for i in order], fontsize=8)
            ax.set_xlim(0, 108)
            ax.set_xlabel("% of the class's views whose top-1 is the class")
        else:  # many classes: the sorted curve, the worst ones named
            ax.plot(np.arange(len(order)), agree[order], color="#c44e52")
            worst = "\n".join(f"{names[i]}: {agree[i]:.1f}% of {views[i]:,} views" for i in order[:5])
            ax.text(0.03, 0.97, "lowest:\n" + worst, transform=ax.transAxes, va="top", fontsize=8,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})
            ax.set_ylim(0, 100)
            ax.set_xlabel(f"{len(order):,} classes, sorted by agreement")
            ax.set_ylabel("% of the class's views whose top-1 is the class")
        a = s["agreement"]
        parts = [f"unmixed {100 * a['unmixed']['top1']:.1f}%" if a["unmixed"]["top1"] is not None else None,
                 f"mixed (larger class) {100 * a['mixed']['top1_major']:.1f}%" if a["mixed"]["top1_major"] is not None
                 else None]
        ax.set_title("per class: top-1 = the class\n(" + ", ".join(p for p in parts if p) + ")", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["label_stats", "plot_stats", "ground_truth", "view_mixing"]
