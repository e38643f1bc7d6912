"""Bench parts on the label store itself: reading an epoch (``labels``), bytes per view (``size``), writing at scale (``scale``)."""
from __future__ import annotations

import os
import resource
import shutil
import time

import numpy as np


from .common import measure, stub_teacher_topk, synthetic_logits
from .config import BenchConfig


# ------------------------------------------------------------------------------------ labels
def _synthetic_store(path: str, n: int, views: int, k: int, num_classes: int, rng, pool: int | None = 65536,
                     samples_per_shard: int = 16384):
    """A store written by a stub teacher: rows drawn from a pool of precomputed top-k rows (speed),
    or fresh logits for every view when ``pool`` is None (sizes: no repeats for zstd to find)."""
    from relabel.storage import LabelStore, StoreHeader
    from relabel.storage.order import store_order

    if pool is not None:  # in slices: the pool's logits never sit in memory at once
        parts = [stub_teacher_topk(synthetic_logits(min(4096, pool - i), num_classes, rng), k) for i in range(0, pool, 4096)]
        idx_pool, lp_pool = (np.concatenate([p[j] for p in parts]) for j in (0, 1))
    h = StoreHeader(num_samples=n, views=views, topk=k, num_classes=num_classes,
                    class_names=[str(i) for i in range(num_classes)], fingerprint="0" * 64,
                    teacher={"model": "stub"}, recipe={"name": "none"}, seed=0, img_size=224,
                    views_per_shard=min(10, views), samples_per_shard=samples_per_shard)
    store = LabelStore.create(path, h, store_order([f"s{i:08d}" for i in range(n)], h.seed))
    t0, peak = time.perf_counter(), _rss_mib()
    start = peak
    for sh in store.pending_shards():
        shape = (sh.v1 - sh.v0, sh.s1 - sh.s0)
        if pool is not None:
            rows = rng.integers(0, pool, shape)
            idx, lp = idx_pool[rows], lp_pool[rows]
        else:
            idx, lp = (a.reshape(*shape, -1) for a in stub_teacher_topk(synthetic_logits(shape[0] * shape[1], num_classes, rng), k))
        store.write_shard(sh, 0, idx, lp, np.ones(sh.s1 - sh.s0, np.uint8))
        peak = max(peak, _rss_mib())
    return store, time.perf_counter() - t0, (start, peak)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_labels(cfg: BenchConfig, tmp: str) -> dict:
    from relabel.storage import LabelStore

    rng = np.random.default_rng(0)
    views = 10
    n = max(1, cfg.label_views // views)
    _synthetic_store(os.path.join(tmp, "labels"), n, views, 10, cfg.num_classes, rng)
    batch = 1024
    epochs = LabelStore.open(os.path.join(tmp, "labels"))  # as a trainer holds it; chunks are not cached

    def epoch():
        epochs.read_view(int(rng.integers(views)))
        return n

    reader = LabelStore.open(os.path.join(tmp, "labels"))

    def random_batches():
        for _ in range(20):
            reader.gather(rng.integers(0, n, batch), rng.integers(0, views, batch))
        return 20 * batch

    r = measure({"epoch": epoch, "random": random_batches}, cfg.repeats)
    return {"store_views": n * views, "epoch_views_per_s": r["epoch"]["median"],
            "random_views_per_s": r["random"]["median"], "random_batch": batch, "detail": r}


# ------------------------------------------------------------------------------------ size
def bench_size(cfg: BenchConfig, tmp: str) -> dict:
    """Bytes per view on disk and the fidelity of the stored encoding, at k = 5, 10, 20."""
    import torch

    from relabel.storage.encoding import ValueEncoding

    from relabel.teacher import topk_logprobs

    rng = np.random.default_rng(1)
    n, views = 16384, 4
    out: dict = {"logits": f"synthetic ImageNet-like, {cfg.num_classes} classes (no pretrained teacher offline)"}
    logits = torch.from_numpy(synthetic_logits(2048, cfg.num_classes, rng))
    full = torch.log_softmax(logits, -1)
    for k in (5, 10, 20):
        store, _, _ = _synthetic_store(os.path.join(tmp, f"size{k}"), n, views, k, cfg.num_classes, rng, pool=None)
        out[f"bytes_per_view_k{k}"] = store.label_bytes() / (n * views)
        idx, lp = topk_logprobs(logits, k)
        enc = ValueEncoding()
        q = torch.from_numpy(enc.decode(enc.encode(lp.numpy())))
        p_exact, logq = lp.exp(), torch.log_softmax(q, -1)
        out[f"kl_loss_k{k}"] = float((p_exact * (lp - logq)).sum(-1).mean())
        # against the full distribution: top-k + leftover spread evenly over the other classes
        rest = logq[:, -1:] - np.log(cfg.num_classes - k)
        recon = rest.expand(-1, cfg.num_classes).clone().scatter(1, idx, logq[:, :k])
        out[f"kl_full_k{k}"] = float((full.exp() * (full - recon)).sum(-1).mean())
    out.update(_correlated_size(cfg, tmp, rng))
    return out


def correlated_views(base: np.ndarray, views: int, rng, noise: float = 0.3, mixed: bool = False):
    """Logits of ``views`` views per sample: the sample's own logits, scaled per view (a tight crop is
    surer than a loose one) plus per-class noise; ``mixed``: each view's probabilities mixed with a
    random partner's (USI's recipe mixes every view, each with another partner). Yields per view."""
    n = len(base)
    for _ in range(views):
        lg = rng.uniform(0.7, 1.1, (n, 1)).astype(np.float32) * base
        lg += noise * rng.standard_normal(base.shape, dtype=np.float32)
        if mixed:
            p = np.exp(lg - lg.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            lam = rng.beta(1.0, 1.0, (n, 1)).astype(np.float32)
            lg = np.log(lam * p + (1 - lam) * p[rng.permutation(n)] + 1e-30)
        yield lg


def _fast_topk(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """stub_teacher_topk with a float32 log-sum-exp (1e-6 nats apart; the q8 step is 6e-2): sizes only."""
    m = logits.max(1, keepdims=True)
    lse = m + np.log(np.exp(logits - m).sum(1, keepdims=True))
    idx = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(logits, idx, 1)
    order = np.argsort(-top, axis=1, kind="stable")
    idx, top = np.take_along_axis(idx, order, 1), np.take_along_axis(top, order, 1) - lse
    rest = np.log(np.clip(-np.expm1(np.logaddexp.reduce(top.astype(np.float64), axis=1, keepdims=True)), 1e-30, None))
    return idx, np.concatenate([top, rest], 1).astype(np.float32)


def _correlated_size(cfg: BenchConfig, tmp: str, rng) -> dict:
    """Bytes per view at k=10 when a sample's views share their top classes (real teachers do; the
    fresh-logit sizes above are the worst case), with the store's format and with the best codec
    found for it (numcodecs: byte shuffle on indices, delta over ranks on values)."""
    import torch
    from numcodecs import Blosc, Zstd

    from relabel.storage import LabelStore, StoreHeader
    from relabel.storage.order import store_order
    from relabel.storage.encoding import ValueEncoding


    n, views, k, C = min(16384, max(1024, cfg.label_views // 10)), 10, 10, cfg.num_classes  # one chunk per view
    base = synthetic_logits(n, C, rng)
    enc, out = ValueEncoding(), {}
    for mixed in (False, True):
        h = StoreHeader(num_samples=n, views=views, topk=k, num_classes=C, class_names=[str(i) for i in range(C)],
                        fingerprint="0" * 64, teacher={"model": "stub"}, recipe={"name": "none"}, seed=0,
                        img_size=224, views_per_shard=views, samples_per_shard=n)
        path = os.path.join(tmp, f"size-corr{int(mixed)}")
        store = LabelStore.create(path, h, store_order([f"s{i:08d}" for i in range(n)], h.seed))
        idx, lp = zip(*(_fast_topk(lg, k) for lg in correlated_views(base, views, rng, mixed=mixed)))
        idx, lp = np.stack(idx), np.stack(lp)
        store.write_shard(store.shard(0, 0), 0, idx, lp, np.ones(n, np.uint8))
        tag = "_mixed" if mixed else ""
        out[f"bytes_per_view_k10_correlated{tag}"] = store.label_bytes() / (n * views)
        out[f"top10_overlap_with_view0{tag}"] = float(np.mean(
            [len(np.intersect1d(idx[v, s], idx[0, s])) for v in range(1, views) for s in range(0, n, 64)]))
        if not mixed:
            t_lp = torch.from_numpy(lp[0])
            q = torch.from_numpy(enc.decode(enc.encode(lp[0])))
            out["kl_loss_k10_correlated"] = float((t_lp.exp() * (t_lp - torch.log_softmax(q, -1))).sum(-1).mean())
            best = 0
            for v in range(views):  # per view, as the store chunks them (the epoch read stays one chunk)
                q8 = enc.encode(lp[v])
                q8[:, 1:k] = np.diff(q8[:, :k].astype(np.int16), axis=1).astype(np.uint8)  # ranks ascend in -log p
                best += len(Blosc("zstd", 9, Blosc.SHUFFLE).encode(np.ascontiguousarray(idx[v].astype(h.index_dtype))))
                best += len(Zstd(9).encode(q8.tobytes()))
            out["bytes_per_view_k10_correlated_best_codec"] = best / (n * views)
        shutil.rmtree(path, ignore_errors=True)
    return out


# ------------------------------------------------------------------------------------ scale
def bench_scale(cfg: BenchConfig, tmp: str) -> dict:
    """Write many views through the store with a stub teacher; memory must stay flat."""
    rng = np.random.default_rng(2)
    views = 10
    n = max(1, cfg.scale_views // views)
    _, seconds, (start, peak) = _synthetic_store(os.path.join(tmp, "scale"), n, views, 10, cfg.num_classes, rng,
                                                 pool=16384)
    return {"views": n * views, "views_per_s": n * views / seconds, "seconds": seconds,
            "rss_writing_start_mib": start, "peak_rss_mib": peak, "rss_growth_mib": peak - start}
