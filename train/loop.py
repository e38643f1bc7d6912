"""The stage-two trainer: one stored view per sample per epoch, labels read once per epoch.

``train(TrainConfig(...))`` runs a whole training. ``build`` + ``make_loader`` + ``Trainer`` expose
one step at a time; ``bench_setup`` gives a ready trainer plus batches, so a benchmark can time
``Trainer.train_step`` per mode. Modes differ only in where the target comes from: ``cached``
gathers the stored top-k rows, ``online`` runs the teacher on the same replayed pixels and takes the
same top-k + rest, ``supervised`` uses ground truth only.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader

from .. import __version__
from relabel.dist import Dist
from relabel.models import Normalize, autocast, create, pick_device, resolve_name
from relabel.progress import progress_bar
from relabel.rng import derive_key
from relabel.teacher import Teacher, topk_logprobs
from relabel.storage import UserError

from .data import EpochBatchSampler, TrainData
from .evaluate import eval_loader, evaluate
from .losses import kd_loss, mixed_ce
from .report import plot_curves, summary_line, write_metrics

MODES = ("cached", "online", "supervised")


@dataclass
class TrainConfig:
    data: str
    labels: str | None  # None: supervised from scratch, views from `recipe` (a teacher, say)
    out: str
    student: str = "deit_s"
    val: str | None = None
    mode: str = "cached"
    epochs: int = 300
    stop_epoch: int | None = None  # end this invocation after this epoch; the schedule still spans `epochs`
    batch_size: int = 128
    img_size: int | None = None  # default: the store's (the teacher's) size
    teacher: str | None = None  # online: default the store's teacher
    teacher_checkpoint: str | None = None
    device: str = "auto"
    resume: bool = False
    allow_subset: bool = False
    pretrained: bool = False
    drop: float | None = None
    drop_path: float | None = None
    opt: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 2e-2
    momentum: float = 0.9
    warmup_epochs: float = 5
    warmup_lr: float = 1e-4
    min_lr: float = 1e-6
    model_ema: bool = True
    model_ema_decay: float = 0.9998
    clip_grad: float | None = None
    clip_mode: str = "norm"
    smoothing: float = 0.1
    kd_weight: float = 1.0
    ce_weight: float = 0.0
    kd_temperature: float = 1.0
    kd_renorm: bool = False
    amp: bool | None = None  # None: on for CUDA
    amp_dtype: str = "bfloat16"
    channels_last: bool = True
    workers: int = 4
    seed: int = 42
    recipe: str = "usi"  # without --labels: the views' recipe; one fresh view per epoch
    progress: bool = True
    log: bool = True


# Settings a resumed run must share with the checkpoint to continue the same run.
_RESUME_KEYS = ("student", "mode", "seed", "batch_size", "img_size", "opt", "model_ema", "amp_dtype")


def _validate(cfg: TrainConfig) -> None:
    if cfg.mode not in MODES:
        raise UserError(f"unknown --mode {cfg.mode!r}; use one of {', '.join(MODES)}")
    for name, ok, rule in (("epochs", cfg.epochs >= 1, ">= 1"), ("batch-size", cfg.batch_size >= 1, ">= 1"),
                           ("workers", cfg.workers >= 0, ">= 0"), ("kd-temperature", cfg.kd_temperature > 0, "> 0"),
                           ("lr", cfg.lr > 0, "> 0"), ("smoothing", 0 <= cfg.smoothing < 1, "in [0, 1)"),
                           ("stop-epoch", cfg.stop_epoch is None or cfg.stop_epoch >= 1, ">= 1"),
                           ("img-size", cfg.img_size is None or cfg.img_size >= 8, ">= 8")):
        if not ok:
            raise UserError(f"--{name} must be {rule} (got {getattr(cfg, name.replace('-', '_'))})")
    resolve_name(cfg.student)  # an unknown model fails before any data is read
    if cfg.amp_dtype not in ("bfloat16", "float16"):
        raise UserError(f"--amp-dtype must be bfloat16 or float16 (got {cfg.amp_dtype!r})")
    if cfg.mode != "online" and (cfg.teacher or cfg.teacher_checkpoint):
        raise UserError("--teacher/--teacher-checkpoint are for --mode online only")
    if cfg.labels is None and cfg.mode != "supervised":
        raise UserError(f"--mode {cfg.mode} needs --labels STORE (only --mode supervised trains without labels)")
    if cfg.mode != "supervised" and cfg.kd_weight == 0 and cfg.ce_weight == 0:
        raise UserError("--kd-weight and --ce-weight are both 0: nothing to train on")


class Trainer:
    """Student, optimizer, schedule, EMA, AMP and the loss; ``train_step(batch)`` does one update."""

    def __init__(self, cfg: TrainConfig, data: TrainData, device: torch.device, dist: Dist | None = None):
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler
        from timm.utils import ModelEmaV3

        self.cfg, self.data, self.device, self.dist = cfg, data, device, dist or Dist()
        h = data.header
        torch.manual_seed(cfg.seed)
        kwargs = {k: v for k, v in (("drop_rate", cfg.drop), ("drop_path_rate", cfg.drop_path)) if v is not None}
        model, self.info = create(cfg.student, pretrained=cfg.pretrained, num_classes=h.num_classes, **kwargs)
        self.module = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
        self.model = self.module
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.normalize = Normalize(self.info.mean, self.info.std).to(device)
        try:
            self.optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                 momentum=cfg.momentum)
        except (ValueError, AssertionError) as e:
            raise UserError(f"--opt {cfg.opt!r}: {e}") from None
        logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)  # its 1-epoch warning assumes integer steps
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=cfg.epochs, lr_min=cfg.min_lr,
                                           warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.warmup_lr)
        amp = device.type == "cuda" if cfg.amp is None else cfg.amp
        self.precision = ("bf16" if cfg.amp_dtype == "bfloat16" else "fp16") if amp else "fp32"
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self.ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=True) if cfg.model_ema else None
        self.teacher = self._teacher() if cfg.mode == "online" else None
        self.labels: tuple[torch.Tensor, torch.Tensor] | None = None
        self.epoch, self.step_in_epoch, self.steps_in_epoch, self.global_step = 0, 0, 1, 0

    def _teacher(self) -> Teacher:
        cfg, rec = self.cfg, self.data.header.teacher
        name = cfg.teacher or rec.get("model")
        if not cfg.teacher_checkpoint and not cfg.teacher and rec.get("checkpoint_sha256"):
            raise UserError(f"the store's teacher {name} was loaded from a checkpoint "
                            f"(sha256 {rec['checkpoint_sha256'][:12]}); pass it with --teacher-checkpoint")
        random = rec.get("weights") == "random" and not cfg.teacher and not cfg.teacher_checkpoint  # benchmarks
        t = Teacher(name, cfg.teacher_checkpoint, device=str(self.device), precision=rec.get("precision", "auto"),
                    pretrained=not random, num_classes=self.data.header.num_classes)
        if t.num_classes != self.data.header.num_classes:
            raise UserError(f"teacher {name} has {t.num_classes} classes; the labels have {self.data.header.num_classes}")
        if self.dist.rank == 0 and (random or (t.info.model, t.info.checkpoint_sha256) != (rec.get("model"), rec.get("checkpoint_sha256"))):
            mine = f"{getattr(t, 'weights', '')} {t.info.checkpoint_sha256 or ''}".strip()[:24]
            theirs = f"{rec.get('weights', '')} {rec.get('checkpoint_sha256') or ''}".strip()[:24]
            print(f"note: online teacher {t.info.model} ({mine}) is not the store's teacher {rec.get('model')} "
                  f"({theirs}): online and cached targets differ", file=sys.stderr)
        return t

    def begin_epoch(self, epoch: int, view: int, steps: int) -> None:
        """Seed torch's RNG from (seed, epoch, rank) so dropout/drop-path replay on resume; load labels."""
        self.epoch, self.step_in_epoch, self.steps_in_epoch = epoch, 0, max(steps, 1)
        torch.manual_seed(derive_key("torch", self.cfg.seed, epoch, self.dist.rank) % (1 << 63))
        if self.cfg.mode == "cached":
            idx, logp = self.data.store.read_view(view)
            self.labels = (torch.from_numpy(idx).to(self.device), torch.from_numpy(logp).to(self.device))

    def target_loss(self, logits: torch.Tensor, batch: dict, pixels: torch.Tensor) -> torch.Tensor:
        cfg, dev = self.cfg, self.device
        y, y2, lam = (batch[k].to(dev, non_blocking=True) for k in ("y", "y_partner", "lam"))
        if cfg.mode == "supervised":
            return mixed_ce(logits, y, y2, lam, cfg.smoothing).mean()
        if cfg.mode == "cached":
            pos = batch["positions"].to(dev, non_blocking=True)
            idx, logp = self.labels[0][pos], self.labels[1][pos]
        else:  # the same top-k + rest the store holds, before its rounding
            idx, logp = (t.clone() for t in topk_logprobs(self.teacher.logits(pixels), self.data.header.topk))
        loss = cfg.kd_weight * kd_loss(logits, idx, logp, cfg.kd_temperature, cfg.kd_renorm).mean()
        if cfg.ce_weight:
            loss = loss + cfg.ce_weight * mixed_ce(logits, y, y2, lam, cfg.smoothing).mean()
        return loss

    def train_step(self, batch: dict) -> torch.Tensor:
        """One optimizer update on one batch; returns the loss (detached, on the device: no sync)."""
        from timm.utils import dispatch_clip_grad

        self.scheduler.step(self.epoch + self.step_in_epoch / self.steps_in_epoch)
        self.model.train()
        pixels = batch["pixels"].to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            logits = self.model(self.normalize(pixels))
        loss = self.target_loss(logits.float(), batch, pixels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.cfg.clip_grad:
            dispatch_clip_grad(self.module.parameters(), self.cfg.clip_grad, mode=self.cfg.clip_mode)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.global_step += 1
        self.step_in_epoch += 1
        if self.ema is not None:
            self.ema.update(self.module, step=self.global_step)
        return loss.detach()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state(self) -> dict:
        """Everything a resume needs, as plain dicts/tensors/numbers (torch.load(weights_only=True))."""
        return {"state_dict": self.module.state_dict(),
                "state_dict_ema": self.ema.module.state_dict() if self.ema else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None, "global_step": self.global_step,
                "arch": self.info.model, "model_info": self.info.to_dict(),
                "num_classes": self.data.header.num_classes, "class_names": list(self.data.header.class_names)}

    def load_state(self, ckpt: dict) -> None:
        self.module.load_state_dict(ckpt["state_dict"])
        if self.ema is not None and ckpt.get("state_dict_ema") is not None:
            self.ema.module.load_state_dict(ckpt["state_dict_ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.global_step = int(ckpt["global_step"])


def build(cfg: TrainConfig, dist: Dist | None = None) -> tuple[TrainData, Trainer]:
    """Data matched to the labels, and a ready trainer (student, optimizer, EMA, teacher if online)."""
    _validate(cfg)
    dist = dist or Dist()
    data = TrainData(cfg.data, cfg.labels, cfg.allow_subset, cfg.img_size,
                     plan=dict(recipe=cfg.recipe, seed=cfg.seed, views=cfg.epochs))
    data.batches(cfg.seed, 0, cfg.batch_size)  # fails early on an odd batch for a mixing recipe
    device = pick_device(dist.device_str(cfg.device))
    return data, Trainer(cfg, data, device, dist)


def make_loader(data: TrainData, cfg: TrainConfig, device: torch.device, dist: Dist | None = None
                ) -> tuple[DataLoader, EpochBatchSampler]:
    """Workers decode + render + mix; call ``sampler.set_epoch(e)`` before iterating an epoch."""
    dist = dist or Dist()
    sampler = EpochBatchSampler(data, cfg.seed, cfg.batch_size, dist.rank, dist.world)
    gpu = device.type == "cuda"
    loader = DataLoader(data.dataset(), batch_sampler=sampler, collate_fn=data.collate(), num_workers=cfg.workers,
                        pin_memory=gpu, persistent_workers=gpu and cfg.workers > 0,
                        prefetch_factor=4 if cfg.workers else None,
                        generator=torch.Generator().manual_seed(cfg.seed))  # keeps the global RNG untouched
    return loader, sampler


def bench_setup(cfg: TrainConfig, batches: int = 1, epoch: int = 0) -> tuple[Trainer, list[dict]]:
    """A trainer with ``epoch`` begun (its labels loaded) and that epoch's first batches, for timing
    ``trainer.train_step(batch)`` per mode without the DataLoader in the measurement."""
    data, tr = build(cfg)
    loader, sampler = make_loader(data, cfg, tr.device)
    sampler.set_epoch(epoch)
    tr.begin_epoch(epoch, sampler.view, len(sampler))
    it = iter(loader)
    return tr, [b for _, b in zip(range(batches), it)]


def _save(obj: dict, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_resume(cfg: TrainConfig) -> dict | None:
    last = os.path.join(cfg.out, "last.pth")
    if not cfg.resume:
        if os.path.exists(last):
            raise UserError(f"{cfg.out}: already holds a run (last.pth); pass --resume to continue it or use another --out")
        return None
    if not os.path.isfile(last):
        raise UserError(f"{cfg.out}: nothing to resume (no last.pth); drop --resume to start a run")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    old = ckpt.get("config", {})
    diff = [f"{k} (run: {old.get(k)}, now: {getattr(cfg, k)})" for k in _RESUME_KEYS if old.get(k) != getattr(cfg, k)]
    if diff:
        raise UserError(f"{cfg.out}: --resume with other settings: {'; '.join(diff)}")
    return ckpt


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) a run; returns the last epoch's metrics plus run facts."""
    _validate(cfg)
    if os.path.isfile(cfg.out):
        raise UserError(f"{cfg.out}: is a file; --out must be a folder for the run")
    dist = Dist.from_env(cfg.device)
    try:
        return _train(cfg, dist)
    finally:
        dist.close()


def _train(cfg: TrainConfig, dist: Dist) -> dict:
    lead = dist.rank == 0

    def log(msg: str) -> None:
        if lead and cfg.log:
            print(msg, file=sys.stderr, flush=True)

    ckpt = _load_resume(cfg)
    start = int(ckpt["epoch"]) if ckpt else 0
    data, tr = build(cfg, dist)
    h = data.header
    if data.matched < h.num_samples or len(data.source) > data.matched:
        log(f"labels: training on {data.matched} of the store's {h.num_samples} samples "
            f"({len(data.source)} images in DATA, {int((~data.status_ok).sum())} unreadable in stage one); "
            f"epoch {start + 1} uses {len(data.order(cfg.seed, start)[1])} after skipping partners missing from DATA")
    loader, sampler = make_loader(data, cfg, tr.device, dist)
    val = None
    if cfg.val:
        val = eval_loader(cfg.val, h.class_names, data.img_size, tr.info.crop_pct, cfg.batch_size, cfg.workers,
                          dist.rank, dist.world, pin_memory=tr.device.type == "cuda")
    history, best = [], None
    if ckpt is not None:
        tr.load_state(ckpt)
        history, best = list(ckpt["history"]), ckpt.get("best_top1")
        log(f"resuming {cfg.out} after epoch {start}")
    if lead:
        os.makedirs(cfg.out, exist_ok=True)
    stop = min(cfg.epochs, cfg.stop_epoch or cfg.epochs)
    for epoch in range(start, stop):
        sampler.set_epoch(epoch)
        n = len(sampler)
        if n == 0:
            raise UserError(f"--batch-size {cfg.batch_size} x {dist.world} process(es) is more than the "
                            f"{data.matched} usable samples; use a smaller batch")
        tr.begin_epoch(epoch, sampler.view, n)
        losses, wait, t0 = [], 0.0, time.perf_counter()
        with progress_bar(cfg.progress and lead, f"epoch {epoch + 1}/{cfg.epochs}", n, unit="batch") as bar:
            it, tw = iter(loader), t0
            while (batch := next(it, None)) is not None:
                wait += time.perf_counter() - tw  # time the step waited for the DataLoader
                losses.append(tr.train_step(batch))
                bar.advance(1)
                tw = time.perf_counter()
            wait += time.perf_counter() - tw
        losses = torch.stack(losses).float().cpu().tolist()
        train_s = time.perf_counter() - t0
        m = {"epoch": epoch + 1, "mode": cfg.mode, "view": sampler.view,
             "train_loss": dist.sum(float(sum(losses))) / dist.sum(len(losses)), "lr": tr.lr,
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
            _save(state, os.path.join(cfg.out, "last.pth"))
            if is_best:
                shutil.copyfile(os.path.join(cfg.out, "last.pth"), os.path.join(cfg.out, "best.pth"))
            write_metrics(history, cfg.out)
            plot_curves(history, cfg.out)
        log(summary_line(m, cfg.epochs))
        dist.barrier()
    last = history[-1] if history else {}
    return {**last, "best_top1": best, "out": cfg.out, "matched": data.matched, "num_samples": h.num_samples,
            "epochs_done": len(history)}

