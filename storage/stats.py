"""What a label set says, in one streaming pass with bounded memory: ``LabelStats``.

It takes the rows of one view at a time (the store's top-k indices and decoded log-probs) and keeps
counts, sums and fixed histograms, never the rows: memory is O(classes + bins) whatever the store's
size (plus a classes x classes table of what the teacher predicts instead, for up to
``MAX_CONFUSION`` classes). The store does not record which views were mixed, with whom, or by how
much; the caller recomputes that from the recipe and the seed (``relabel.stages.stats``) and passes
it in, so this module stays numpy-only. ``format_stats`` and ``stats_markdown`` write the result for a
terminal and for the dataset card; ``DEFINITIONS`` says what each number means.
"""
from __future__ import annotations

import math

import numpy as np

TOP1_BINS = 1000  # linear over [0, 1]: quantiles to 0.001
REST_BINS, REST_LO = 2000, 1e-8  # log-spaced over [1e-8, 1] (below: one more bin): quantiles to ~1% of the value
MAX_CONFUSION = 2048  # a dense (C, C) int64 table up to 32 MiB; above, "most often instead" is not tracked
WORST = 10

DEFINITIONS = {
    "top1_prob": "the teacher's probability of its own top-1 class (stored top-k renormalized with the rest bin, "
                 "as the trainer reads it)",
    "rest_mass": "probability outside the stored top-k: how much top-k leaves out (choose k by it)",
    "entropy": "entropy in nats of the stored target: the top-k, and the rest spread evenly over the other "
               "classes (what the student is trained against)",
    "agreement_unmixed": "share of unmixed views whose top-1 is the sample's ground-truth class",
    "agreement_mixed_major": "share of mixed views whose top-1 is the class with the larger weight (lambda) in "
                             "the mixed target; when both halves weigh 0.5, either class counts",
    "agreement_mixed_either": "share of mixed views whose top-1 is one of the two mixed classes",
    "per_class": "per target class (unmixed: the ground truth; mixed: the larger class; ties left out): "
                 "share of its views whose top-1 is that class",
}


def teacher_class_names(class_names: list[str], num_classes: int, class_map: list[int] | None) -> list[str]:
    """A name for every teacher class: the dataset's class names, placed by the class map when the
    teacher has other classes than the folders (teacher classes no folder maps to: 'class N')."""
    if class_map is None:
        names = [str(c) for c in class_names][:num_classes]
        return names + [f"class {i}" for i in range(len(names), num_classes)]
    names = [f"class {i}" for i in range(num_classes)]
    for name, t in zip(class_names, class_map):
        names[int(t)] = str(name)
    return names


def probabilities(logp: np.ndarray) -> np.ndarray:
    """Stored k+1 log-probs -> probabilities renormalized over the k+1 bins (the trainer's log-softmax:
    the encoding rounds each value, so they need not sum to one exactly)."""
    lp = np.asarray(logp, np.float64)
    m = lp.max(axis=-1, keepdims=True)
    p = np.exp(lp - m)
    return p / p.sum(axis=-1, keepdims=True)


class LabelStats:
    """Streaming statistics over views; ``add`` each view's rows, then ``result()``.

    ``target`` is each row's ground-truth class in the teacher's index space (-1 unknown), or None
    when no ground truth is known (the agreement numbers are then left out).
    """

    def __init__(self, num_classes: int, topk: int, class_names: list[str]):
        C = self.num_classes = int(num_classes)
        self.topk, self.class_names = int(topk), list(class_names)
        self.views = self.mixed_views = 0
        self.sum_top1 = self.sum_rest = self.sum_entropy = 0.0
        self.top1_hist = np.zeros(TOP1_BINS, np.int64)
        self.rest_hist = np.zeros(REST_BINS + 1, np.int64)  # [0]: below REST_LO (rest 0 included)
        self.known = False
        self.unmixed_n = self.unmixed_agree = 0
        self.mixed_n = self.mixed_major = self.mixed_either = 0
        self.class_views = np.zeros(C, np.int64)
        self.class_agree = np.zeros(C, np.int64)
        self.confusion = np.zeros((C, C), np.int64) if C <= MAX_CONFUSION else None
        self.samples = self.unreadable = 0

    # ------------------------------------------------------------------ accumulate
    def add(self, index: np.ndarray, logp: np.ndarray, target: np.ndarray | None = None,
            mixed: np.ndarray | None = None, partner_target: np.ndarray | None = None,
            lam: np.ndarray | None = None) -> None:
        """Rows of one view for readable samples: ``index`` (n, k), ``logp`` (n, k+1) as the store
        decodes them; ``mixed`` (n,) bool, ``partner_target`` (n,) and ``lam`` (n,) the own image's
        weight, for views that blend two images (None: nothing mixed)."""
        n = len(index)
        if n == 0:
            return
        p = probabilities(logp)
        k, C = self.topk, self.num_classes
        top1, rest = p[:, 0], p[:, k]
        self.views += n
        self.sum_top1 += float(top1.sum())
        self.sum_rest += float(rest.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p[:, :k] > 0, p[:, :k] * np.log(p[:, :k]), 0.0).sum(1)
            if C > k:  # the rest spread evenly over the other C - k classes
                h -= np.where(rest > 0, rest * np.log(rest / (C - k)), 0.0)
        self.sum_entropy += float(h.sum())
        self.top1_hist += np.bincount(np.minimum((top1 * TOP1_BINS).astype(np.int64), TOP1_BINS - 1),
                                      minlength=TOP1_BINS)
        with np.errstate(divide="ignore"):
            pos = np.log10(np.maximum(rest, 1e-300) / REST_LO) / -math.log10(REST_LO) * REST_BINS
        b = np.where(rest < REST_LO, 0, 1 + np.minimum(pos.astype(np.int64), REST_BINS - 1))
        self.rest_hist += np.bincount(b, minlength=REST_BINS + 1)
        mixed = np.zeros(n, bool) if mixed is None else np.asarray(mixed, bool)
        self.mixed_views += int(mixed.sum())
        if target is None:
            return
        self.known = True
        pred = np.asarray(index[:, 0], np.int64)
        t = np.asarray(target, np.int64)
        un = ~mixed & (t >= 0)
        self.unmixed_n += int(un.sum())
        self.unmixed_agree += int((pred[un] == t[un]).sum())
        # the class each view is counted under: its own, or the mixed target's larger half
        cls = np.where(un, t, -1)
        if mixed.any():
            q = np.asarray(partner_target, np.int64)
            lm = np.asarray(lam, np.float64)
            mx = mixed & (t >= 0) & (q >= 0)
            same = t == q
            major = np.where(same | (lm > 0.5), t, np.where(lm < 0.5, q, -1))  # -1: an even blend of two classes
            either = (pred == t) | (pred == q)
            self.mixed_n += int(mx.sum())
            self.mixed_either += int(either[mx].sum())
            self.mixed_major += int(np.where(major >= 0, pred == major, either)[mx].sum())
            cls = np.where(mx, major, cls)
        counted = cls >= 0
        c, hit = cls[counted], pred[counted] == cls[counted]
        self.class_views += np.bincount(c, minlength=C)
        self.class_agree += np.bincount(c[hit], minlength=C)
        if self.confusion is not None and (~hit).any():  # in place: no (C, C) temporary per call
            np.add.at(self.confusion.reshape(-1), c[~hit] * C + pred[counted][~hit], 1)

    def add_samples(self, samples: int, unreadable: int) -> None:
        """Samples the pass covered, and how many of them stage one could not decode (no labels)."""
        self.samples += int(samples)
        self.unreadable += int(unreadable)

    # ------------------------------------------------------------------ results
    def _top1_quantile(self, q: float) -> float:
        return _quantile(self.top1_hist, q, lambda i: (i + 1) / TOP1_BINS)

    def _rest_quantile(self, q: float) -> float:
        return _quantile(self.rest_hist, q, lambda i: REST_LO if i == 0 else REST_LO ** (1 - i / REST_BINS))

    def result(self) -> dict:
        """Plain data (JSON-ready): the numbers, the worst classes, histograms for a plot, definitions."""
        V = max(self.views, 1)
        out = {
            "views": self.views, "samples": self.samples, "unreadable_samples": self.unreadable,
            "mixed_views": self.mixed_views, "topk": self.topk, "num_classes": self.num_classes,
            "top1_prob": {"mean": self.sum_top1 / V, "p50": self._top1_quantile(0.5)},
            "rest_mass": {"mean": self.sum_rest / V, "p50": self._rest_quantile(0.5), "p95": self._rest_quantile(0.95)},
            "entropy": {"mean": self.sum_entropy / V},
            "agreement": None, "worst_classes": [], "per_class": None,
            "histograms": {
                "top1_prob": {"scale": "linear", "lo": 0.0, "hi": 1.0, "counts": self.top1_hist.tolist()},
                "rest_mass": {"scale": "log10", "lo": REST_LO, "hi": 1.0, "counts": self.rest_hist[1:].tolist(),
                              "below_lo": int(self.rest_hist[0])}},
            "definitions": DEFINITIONS,
        }
        if not self.known:
            return out
        out["agreement"] = {
            "unmixed": {"views": self.unmixed_n, "top1": _share(self.unmixed_agree, self.unmixed_n)},
            "mixed": {"views": self.mixed_n, "top1_major": _share(self.mixed_major, self.mixed_n),
                      "top1_either": _share(self.mixed_either, self.mixed_n)}}
        seen = np.nonzero(self.class_views)[0]
        agree = self.class_agree[seen] / self.class_views[seen]
        out["per_class"] = {"class": seen.tolist(), "name": [self.class_names[c] for c in seen],
                            "views": self.class_views[seen].tolist(), "agreement": agree.tolist()}
        # most disagreement first; among equals, the class with more views (the surer number)
        for i in np.lexsort((-self.class_views[seen], agree))[:WORST]:
            c = int(seen[i])
            if agree[i] >= 1.0:
                break
            row = {"class": c, "name": self.class_names[c], "views": int(self.class_views[c]),
                   "agreement": float(agree[i]), "instead": None, "instead_share": None}
            if self.confusion is not None and self.confusion[c].any():
                j = int(self.confusion[c].argmax())
                row["instead"] = self.class_names[j]
                row["instead_share"] = float(self.confusion[c, j] / self.class_views[c])
            out["worst_classes"].append(row)
        return out


def _share(a: int, n: int) -> float | None:
    return a / n if n else None


def _quantile(hist: np.ndarray, q: float, upper) -> float:
    """The upper edge of the bin where the cumulative count reaches q (0 for an empty histogram)."""
    total = int(hist.sum())
    if not total:
        return 0.0
    i = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(upper(min(i, len(hist) - 1)))


# ---------------------------------------------------------------------- writing it down
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _rows(s: dict) -> list[tuple[str, str]]:
    """(what, value) lines shared by the terminal and the card."""
    k, C = s["topk"], s["num_classes"]
    a = s["agreement"]
    rows = []
    if a is None:
        rows.append(("top-1 = ground truth", "needs the ground truth: the images the labels were made from"))
    else:
        un, mx = a["unmixed"], a["mixed"]
        rows.append(("top-1 = ground truth (unmixed views)", f"{_pct(un['top1'])} of {un['views']:,}" if un["views"]
                     else "no unmixed views (the recipe mixed every pair)"))
        if mx["views"]:
            rows.append(("top-1 = larger class of the mix (mixed views)", f"{_pct(mx['top1_major'])} of {mx['views']:,}"))
            rows.append(("top-1 = either mixed class (mixed views)", f"{_pct(mx['top1_either'])}"))
    rows += [
        ("mean top-1 probability", f"{s['top1_prob']['mean']:.3f} (median {s['top1_prob']['p50']:.3f})"),
        (f"rest mass (outside the top-{k})", f"mean {s['rest_mass']['mean']:.4f}, p50 {s['rest_mass']['p50']:.2g}, "
                                             f"p95 {s['rest_mass']['p95']:.2g}"),
        ("mean entropy", f"{s['entropy']['mean']:.3f} nats" + (f" (rest spread over the other {C - k:,} classes)"
                                                               if C > k else "")),
        ("unreadable samples (no labels)", f"{s['unreadable_samples']:,} of {s['samples']:,}"),
    ]
    return rows


def _worst(s: dict) -> list[str]:
    out = []
    for w in s["worst_classes"]:
        instead = f"; top-1 is most often {w['instead']} ({_pct(w['instead_share'])})" if w["instead"] else ""
        out.append(f"{w['name']}: {_pct(w['agreement'])} of {w['views']:,} views{instead}")
    return out


def format_stats(s: dict, where: str = "") -> str:
    """The statistics for a terminal: one number a line, then the classes with most disagreement."""
    mixed = f", {s['mixed_views']:,} of them mixed" if s["mixed_views"] else ""
    head = f"{where + ': ' if where else ''}statistics over {s['views']:,} views of {s['samples']:,} samples{mixed}"
    rows = _rows(s)
    width = max(len(r[0]) for r in rows)
    lines = [head] + [f"  {a:<{width}}  {b}" for a, b in rows]
    worst = _worst(s)
    if worst:
        lines.append("  most disagreement (per target class: top-1 = that class)")
        lines += [f"    {w}" for w in worst]
    if s["agreement"] is not None and s["mixed_views"]:
        lines.append("  (mixed views blend two images; the larger class is the one with lambda > 0.5)")
    return "\n".join(lines)


def stats_markdown(s: dict) -> str:
    """The statistics as a markdown table (and the worst classes as a list), for the dataset card."""
    lines = [f"Over {s['views']:,} views of {s['samples']:,} samples"
             + (f" ({s['mixed_views']:,} mixed: two images blended)" if s["mixed_views"] else "") + ".", "",
             "| statistic | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in _rows(s)]
    worst = _worst(s)
    if worst:
        lines += ["", "Classes where the teacher disagrees with the target most:", ""] + [f"- {w}" for w in worst]
    return "\n".join(lines)


__all__ = ["LabelStats", "DEFINITIONS", "teacher_class_names", "probabilities", "format_stats", "stats_markdown"]
