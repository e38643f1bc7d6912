"""Stage two: ``train(TrainConfig(...))`` runs a whole training, one stored view per sample per epoch
(or R with ``aug_repeats``), from the ``ReplayLoader`` (the one stage-two data path).

``build`` + ``make_loader`` + ``Trainer`` expose one step at a time (``relabel bench`` times
``Trainer.train_step`` per mode with them). The settings are ``train/config.py``, the trainer
``train/trainer.py``, checkpoints and resume checks ``train/checkpoint.py``; their names are
re-exported here.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from .. import __version__
from relabel.dist import Dist
from relabel.models import out_of_memory, pick_device
from relabel.progress import progress_bar
from relabel.storage.errors import ConfigError, named

from .checkpoint import check_inputs, load_resume, run_inputs, save_checkpoint
from .config import (CLIP_MODES, DEFAULTS, KD_TARGETS, MODES, PRESETS, TrainConfig, _validate, register_preset,
                     resolve_config)
from .data import TrainData
from .evaluate import eval_loader, evaluate
from .replay import ReplayLoader
from .report import plot_curves, summary_line, write_metrics
from .trainer import Trainer

log = logging.getLogger(__name__)


def build(cfg: TrainConfig, dist: Dist | None = None) -> tuple[TrainData, Trainer]:
    """Data matched to the labels, and a ready trainer (student, optimizer, EMA, teacher if online)."""
    cfg = resolve_config(cfg)
    _validate(cfg)
    dist = dist or Dist()
    device = pick_device(dist.device_str(cfg.device))
    data = TrainData(cfg.data, cfg.labels, cfg.allow_subset, cfg.img_size,
                     plan=dict(recipe=cfg.recipe, seed=cfg.seed, views=cfg.epochs * cfg.aug_repeats),
                     views_limit=cfg.views_limit, repeats=cfg.aug_repeats, fresh=cfg.fresh_views,
                     allow_drift=cfg.allow_pixel_drift, renderer=cfg.renderer, device=device,
                     render_kernel=cfg.render_kernel)
    if cfg.topk_limit is not None and cfg.topk_limit > data.header.topk:
        raise ConfigError(f"{named('topk_limit', cfg.topk_limit)}: {cfg.labels} stores the top {data.header.topk}; "
                        f"use 1 to {data.header.topk}")
    data.batches(cfg.seed, 0, cfg.batch_size)  # fails early on an odd batch for a mixing recipe
    return data, Trainer(cfg, data, device, dist)


def make_loader(data: TrainData, cfg: TrainConfig, device: torch.device, dist: Dist | None = None) -> ReplayLoader:
    """The run's ``ReplayLoader`` (the one stage-two data path: workers decode and plan, the device
    renders, labels are gathered on the device); call ``loader.set_epoch(e)`` before each epoch."""
    dist = dist or Dist()
    return ReplayLoader.for_data(data, cfg.batch_size, seed=cfg.seed, workers=cfg.workers, rank=dist.rank,
                                 world=dist.world, device=device, with_labels=cfg.mode == "cached")


def _check_finite(losses: list, epoch: int, cfg: TrainConfig, force: bool = False) -> None:
    """Stop a run whose loss became NaN/inf: nothing of this epoch is saved, the last checkpoint stays."""
    vals = torch.stack(losses).float().cpu() if losses and torch.is_tensor(losses[0]) else torch.tensor(losses, dtype=torch.float32)
    bad = (~torch.isfinite(vals)).nonzero()
    if len(bad) or force:
        where = f" at step {int(bad[0]) + 1}" if len(bad) else " on another process"
        kept = f"epoch {epoch} in {cfg.out}/last.pth is kept" if epoch else "no checkpoint was written"
        raise ConfigError(f"the loss became non-finite in epoch {epoch + 1}{where}; stopped, {kept}; "
                          f"lower {named('lr')} (now {cfg.lr:g}) or set {named('clip_grad')}, then rerun (with "
                          f"{named('resume', True)} to continue)")


@dataclass(frozen=True)
class TrainResult:
    """Where a run is and how it scores. ``last`` is the last epoch's record (the last line of
    ``metrics.jsonl``: losses, lr, img/s, val/EMA top-1 ...); empty when no epoch ran."""
    out: str
    epochs_done: int
    matched: int  # samples trained on (labelled, readable and present in DATA)
    num_samples: int  # samples in the label store (or in DATA without labels)
    best_top1: float | None
    last: dict

    @property
    def val_top1(self) -> float | None:
        return self.last.get("val_top1")

    @property
    def ema_top1(self) -> float | None:
        return self.last.get("ema_top1")


def train(cfg: TrainConfig) -> TrainResult:
    """Stage two: train (or with ``cfg.resume`` continue) a student; checkpoints and metrics in ``cfg.out``.

    Args:
        cfg: the run; settings left None come from ``cfg.preset`` and then from ``DEFAULTS``.
    Returns:
        A ``TrainResult``.
    Raises:
        ConfigError: bad or conflicting settings (including a resume that would change the run);
        SourceError / StoreError: unreadable images or labels; RelabelError: a non-finite loss.
    """
    cfg = resolve_config(cfg)
    _validate(cfg)
    if os.path.isfile(cfg.out):
        raise ConfigError(f"{cfg.out}: is a file; {named('out')} must be a folder for the run")
    dist = Dist.from_env(cfg.device)
    try:
        return _train(cfg, dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: Dist) -> TrainResult:
    lead = dist.rank == 0

    def say(msg: str) -> None:  # the run's story (epoch lines, what it trains on): the lead process tells it
        if lead and cfg.log:
            log.info(msg)

    ckpt = load_resume(cfg)
    start = int(ckpt["epoch"]) if ckpt else 0
    data, tr = build(cfg, dist)
    h = data.header
    if ckpt is not None:
        check_inputs(cfg, ckpt, data)
    if data.matched < h.num_samples or len(data.source) > data.matched:
        used = (len(data.order(cfg.seed, start)[1]) if cfg.aug_repeats == 1
                else sum(map(len, data.repeat_items(cfg.seed, start))))
        say(f"labels: training on {data.matched} of the store's {h.num_samples} samples "
            f"({len(data.source)} images in DATA, {int((~data.status_ok).sum())} unreadable in stage one); "
            f"epoch {start + 1} uses {used} after skipping partners missing from DATA")
    if data.class_map is not None:
        say(f"ground truth in the teacher's {h.num_classes}-class index space via the store's class map "
            f"({len(h.class_names)} dataset classes)")
    if cfg.mode == "online":
        say(f"online target: the teacher's {'full softmax' if cfg.kd_target == 'full' else f'top-{cfg.topk_limit or h.topk} + rest'}"
            f"{f' at T={cfg.kd_temperature:g}' if cfg.kd_temperature != 1 else ''}, "
            f"{'fresh views every epoch' if cfg.fresh_views else 'the stored views'}")
    if cfg.aug_repeats > 1:
        say(f"repeated augmentation: about {data.matched // cfg.aug_repeats} samples x {cfg.aug_repeats} different "
            f"views per epoch")
    if tr.ema is not None and cfg.model_ema_decay_batch:
        say(f"EMA decay {tr.ema_decay:.8f} per step (= {cfg.model_ema_decay} at a batch of {cfg.model_ema_decay_batch}, "
            f"scaled to the global batch {cfg.batch_size * dist.world})")
    loader = make_loader(data, cfg, tr.device, dist)
    val = None
    if cfg.val:
        val = eval_loader(cfg.val, h.class_names, data.img_size, cfg.eval_crop_pct or tr.info.crop_pct, cfg.batch_size,
                          cfg.workers, dist.rank, dist.world, pin_memory=tr.device.type == "cuda",
                          class_map=data.class_map)
    history, best = [], None
    plotted = -math.inf  # curves.png is redrawn at most once a minute (0.25 s a plot) and after the last epoch
    if ckpt is not None:
        tr.load_state(ckpt)
        history, best = list(ckpt["history"]), ckpt.get("best_top1")
        say(f"resuming {cfg.out} after epoch {start}")
    if lead:
        os.makedirs(cfg.out, exist_ok=True)
    stop = min(cfg.epochs, cfg.stop_epoch or cfg.epochs)
    for epoch in range(start, stop):
        loader.set_epoch(epoch)
        n = len(loader)
        if n == 0:
            raise ConfigError(f"{named('batch_size', cfg.batch_size)} x {dist.world} process(es) is more than the "
                            f"{data.matched} usable samples; use a smaller batch")
        tr.begin_epoch(epoch, n)
        losses, wait, t0 = [], 0.0, time.perf_counter()
        try:
            with progress_bar(cfg.progress and lead, f"epoch {epoch + 1}/{cfg.epochs}", n, unit="batch") as bar:
                it, tw = iter(loader), t0
                while (batch := next(it, None)) is not None:  # (the loader renders on the device: inside the try)
                    wait += time.perf_counter() - tw  # time the step waited for the DataLoader
                    losses.append(tr.train_step(batch))
                    if not dist.active and len(losses) % 50 == 0:  # one rank alone may stop early; DDP checks below
                        _check_finite(losses, epoch, cfg)
                    bar.advance(1)
                    tw = time.perf_counter()
                wait += time.perf_counter() - tw
        except torch.cuda.OutOfMemoryError:
            kept = f"; epoch {epoch} in {cfg.out}/last.pth is kept" if epoch else "; no checkpoint was written"
            raise ConfigError(out_of_memory(tr.device, f"training {cfg.student} ({cfg.mode})", cfg.batch_size,
                                            f" (with {named('resume', True)} to continue){kept}")) from None
        losses = torch.stack(losses).float().cpu().tolist()
        train_s = time.perf_counter() - t0
        train_loss = dist.sum(float(sum(losses))) / dist.sum(len(losses))  # every rank sees a NaN of any rank
        if not math.isfinite(train_loss):
            _check_finite(losses, epoch, cfg, force=True)
        views = loader.epoch_views
        m = {"epoch": epoch + 1, "mode": cfg.mode, "view": views[0] if len(views) == 1 else views,
             "train_loss": train_loss, "lr": tr.lr,
             "steps": len(losses), "samples": dist.sum(len(losses) * cfg.batch_size),
             "img_s": dist.sum(len(losses) * cfg.batch_size / train_s), "data_wait_frac": wait / train_s,
             "train_seconds": train_s}
        for prefix, model in (("val", tr.module), ("ema", tr.ema.module if tr.ema else None)):
            top1 = top5 = None
            if val is not None and model is not None:
                c1, c5, cnt = (dist.sum(x) for x in evaluate(model, val, tr.normalize, tr.device, tr.precision))
                top1, top5 = 100.0 * c1 / max(cnt, 1), 100.0 * c5 / max(cnt, 1)
            m[f"{prefix}_top1"], m[f"{prefix}_top5"] = top1, top5
        m["epoch_seconds"] = time.perf_counter() - t0
        m["losses"] = losses
        history.append(m)
        is_best = val is None or best is None or m["val_top1"] > best
        best = m["val_top1"] if val is not None and is_best else best
        if lead:
            state = {**tr.state(), "epoch": epoch + 1, "config": asdict(cfg), "metrics": m, "history": history,
                     "best_top1": best, "writer": __version__}
            save_checkpoint(state, os.path.join(cfg.out, "last.pth"))
            if is_best:
                save_checkpoint(os.path.join(cfg.out, "last.pth"), os.path.join(cfg.out, "best.pth"))
            write_metrics(history, cfg.out)
            if epoch + 1 == stop or time.monotonic() - plotted > 60:
                plot_curves(history, cfg.out)
                plotted = time.monotonic()
        say(summary_line(m, cfg.epochs))
        dist.barrier()
    return TrainResult(out=cfg.out, epochs_done=len(history), matched=data.matched, num_samples=h.num_samples,
                       best_top1=best, last=history[-1] if history else {})


__all__ = ["train", "build", "make_loader", "TrainConfig", "TrainResult", "Trainer", "resolve_config", "run_inputs",
           "MODES", "KD_TARGETS", "CLIP_MODES", "DEFAULTS", "PRESETS", "register_preset"]
