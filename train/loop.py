"""The stage-two trainer: one stored view per sample per epoch (or R with ``aug_repeats``), labels
read once per epoch.

``train(TrainConfig(...))`` runs a whole training. ``build`` + ``make_loader`` + ``Trainer`` expose
one step at a time (``relabel bench`` times ``Trainer.train_step`` per mode with them). Modes differ only in where the target comes from: ``cached``
gathers the stored top-k rows, ``online`` runs the teacher on the same replayed pixels and takes its
full softmax (USI; ``kd_target="topk"``: the same top-k + rest the store holds), ``supervised`` uses
ground truth only.

Settings that a preset can set default to None in ``TrainConfig``; ``resolve_config`` fills them
from the preset (``PRESETS``), then from ``DEFAULTS``: a value given explicitly always wins.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from .. import __version__
from relabel.dist import Dist
from relabel.runtime import default_workers
from relabel.models import Normalize, autocast, create, out_of_memory, pick_device, resolve_name
from relabel.progress import progress_bar
from relabel.rng import derive_key
from relabel.teacher import Teacher, compile_backend, rebuild_teacher, topk_logprobs
from relabel.storage import UserError
from relabel.storage.errors import ConfigError, setting
from relabel.storage.paths import is_inside

from .data import TrainData, finish_pixels
from .replay import ReplayLoader
from .evaluate import eval_loader, evaluate
from .losses import kd_loss, kd_loss_full, mixed_ce, truncate_topk
from .report import plot_curves, summary_line, write_metrics

log = logging.getLogger(__name__)

MODES = ("cached", "online", "supervised")
KD_TARGETS = ("full", "topk")
CLIP_MODES = ("norm", "value", "agc")

# What a setting is when neither the user nor a preset gave it.
DEFAULTS = dict(kd_weight=1.0, ce_weight=0.0, smoothing=0.1, model_ema=True, model_ema_decay=0.9998,
                model_ema_decay_batch=0, model_ema_warmup=True, opt="adamw", lr=2e-3, weight_decay=2e-2,
                warmup_epochs=5.0, warmup_lr=1e-4, min_lr=1e-6, aug_repeats=1, eval_crop_pct=None)

# What USI's train.py (Alibaba-MIIL/Solving_ImageNet, timm 0.5.4) sets; README's table compares each value.
PRESETS = {
    "usi": dict(ce_weight=1.0, kd_weight=5.0, smoothing=0.0, model_ema=True, model_ema_decay=0.99996,
                model_ema_decay_batch=1024, model_ema_warmup=False, opt="adamw", lr=2e-3, weight_decay=2e-2,
                warmup_epochs=5.0, warmup_lr=1e-4, min_lr=1e-6, aug_repeats=3, eval_crop_pct=0.95),
}


@dataclass
class TrainConfig:
    data: str
    labels: str | None  # None: supervised from scratch, views from `recipe` (a teacher, say)
    out: str
    student: str = "deit_s"
    val: str | None = None
    mode: str = "cached"
    preset: str | None = None  # "usi": USI's recipe for every setting below that is None
    epochs: int = 300
    stop_epoch: int | None = None  # end this invocation after this epoch; the schedule still spans `epochs`
    batch_size: int = 128
    img_size: int | None = None  # default: the store's (the teacher's) size
    teacher: str | None = None  # online: default the store's teacher
    teacher_checkpoint: str | list[str] | None = None  # one per member of the store's ensemble
    device: str = "auto"
    resume: bool = False
    allow_subset: bool = False
    pretrained: bool = False
    drop: float | None = None
    drop_path: float | None = None
    opt: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float | None = None
    warmup_lr: float | None = None
    min_lr: float | None = None
    model_ema: bool | None = None
    model_ema_decay: float | None = None
    model_ema_decay_batch: int | None = None  # the global batch `model_ema_decay` is for (0: as given)
    model_ema_warmup: bool | None = None
    clip_grad: float | None = None
    clip_mode: str = "norm"
    smoothing: float | None = None
    kd_weight: float | None = None
    ce_weight: float | None = None
    kd_temperature: float = 1.0
    kd_renorm: bool = False
    kd_target: str | None = None  # online: "full" (default) or "topk"; cached is always the stored top-k
    fresh_views: bool = False  # online/supervised: new views every epoch instead of the stored ones
    aug_repeats: int | None = None  # R views of about N/R samples per epoch (USI: 3)
    views_limit: int | None = None  # replay only the first V stored views
    topk_limit: int | None = None  # use only the first k of the stored top-k (the rest joins the rest bin)
    eval_crop_pct: float | None = None  # default: the student's pretrained_cfg crop_pct
    amp: bool | None = None  # None: on for CUDA
    amp_dtype: str = "bfloat16"
    channels_last: bool = True
    workers: int = field(default_factory=default_workers)
    seed: int = 42
    recipe: str = "usi"  # without --labels: the views' recipe; one fresh view per epoch
    allow_pixel_drift: bool = False  # train even if views render differently here than in stage one
    compile: bool | str = False  # torch.compile the student (and an online teacher); a string: the backend
    renderer: str = "auto"  # pillow (in workers), torch (on the device), auto: torch on CUDA; same bytes
    progress: bool = True
    log: bool = True


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """A copy with every None setting filled: from the preset first, then from DEFAULTS."""
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise ConfigError(f"unknown {setting('preset')} {cfg.preset!r}; use one of {', '.join(PRESETS)}")
    preset = PRESETS.get(cfg.preset, {})
    fill = {k: preset.get(k, v) for k, v in DEFAULTS.items() if getattr(cfg, k) is None}
    if cfg.kd_target is None:
        fill["kd_target"] = "full" if cfg.mode == "online" else "topk"
    return replace(cfg, **fill)


# Settings a resumed run must share with the checkpoint to continue the same run.
# The schedule (epochs, lr, ...) is restored from the checkpoint, so a new value would be silently ignored.
# The loss and the weight average are part of the run too: a preset or temperature given only on resume
# would change them mid-run.
_RESUME_KEYS = ("student", "mode", "seed", "batch_size", "img_size", "opt", "model_ema", "amp_dtype", "kd_target",
                "aug_repeats", "views_limit", "topk_limit", "fresh_views", "epochs", "lr", "weight_decay",
                "warmup_epochs", "warmup_lr", "min_lr", "preset", "kd_weight", "ce_weight", "smoothing",
                "kd_temperature", "kd_renorm", "model_ema_decay", "model_ema_decay_batch", "model_ema_warmup",
                "eval_crop_pct", "drop", "drop_path", "momentum", "clip_grad", "clip_mode")


def _validate(cfg: TrainConfig) -> None:
    """Refuse bad settings before any data is read (``cfg`` resolved)."""
    if cfg.mode not in MODES:
        raise ConfigError(f"unknown {setting('mode')} {cfg.mode!r}; use one of {', '.join(MODES)}")
    from relabel.views import resolve_renderer

    resolve_renderer(cfg.renderer, None)
    if cfg.labels and is_inside(cfg.out, cfg.labels):  # checkpoints would be published with the labels
        raise ConfigError(f"{cfg.out}: {setting('out')} lies inside the label store {cfg.labels}; put the run elsewhere")
    fin = lambda x: x is not None and math.isfinite(x)  # noqa: E731
    opt_fin = lambda x: x is None or math.isfinite(x)  # noqa: E731
    for name, ok, rule in (
            ("epochs", cfg.epochs >= 1, ">= 1"), ("batch_size", cfg.batch_size >= 1, ">= 1"),
            ("workers", cfg.workers >= 0, ">= 0"),
            ("kd_temperature", fin(cfg.kd_temperature) and cfg.kd_temperature > 0, "finite and > 0"),
            ("lr", fin(cfg.lr) and cfg.lr > 0, "finite and > 0"),
            ("weight_decay", fin(cfg.weight_decay) and cfg.weight_decay >= 0, "finite and >= 0"),
            ("momentum", fin(cfg.momentum) and cfg.momentum >= 0, "finite and >= 0"),
            ("warmup_epochs", fin(cfg.warmup_epochs) and cfg.warmup_epochs >= 0, "finite and >= 0"),
            ("warmup_lr", fin(cfg.warmup_lr) and cfg.warmup_lr >= 0, "finite and >= 0"),
            ("min_lr", fin(cfg.min_lr) and cfg.min_lr >= 0, "finite and >= 0"),
            ("smoothing", fin(cfg.smoothing) and 0 <= cfg.smoothing < 1, "in [0, 1)"),
            ("kd_weight", fin(cfg.kd_weight) and cfg.kd_weight >= 0, "finite and >= 0"),
            ("ce_weight", fin(cfg.ce_weight) and cfg.ce_weight >= 0, "finite and >= 0"),
            ("drop", opt_fin(cfg.drop) and (cfg.drop is None or 0 <= cfg.drop < 1), "in [0, 1)"),
            ("drop_path", opt_fin(cfg.drop_path) and (cfg.drop_path is None or 0 <= cfg.drop_path < 1), "in [0, 1)"),
            ("clip_grad", opt_fin(cfg.clip_grad) and (cfg.clip_grad is None or cfg.clip_grad > 0), "finite and > 0"),
            ("model_ema_decay", fin(cfg.model_ema_decay) and 0 <= cfg.model_ema_decay <= 1, "in [0, 1]"),
            ("model_ema_decay_batch", cfg.model_ema_decay_batch >= 0, ">= 0 (0: the decay as given)"),
            ("eval_crop_pct", opt_fin(cfg.eval_crop_pct) and (cfg.eval_crop_pct is None or 0 < cfg.eval_crop_pct <= 1),
             "in (0, 1]"),
            ("aug_repeats", cfg.aug_repeats >= 1, ">= 1"),
            ("views_limit", cfg.views_limit is None or cfg.views_limit >= 1, ">= 1"),
            ("topk_limit", cfg.topk_limit is None or cfg.topk_limit >= 1, ">= 1"),
            ("stop_epoch", cfg.stop_epoch is None or cfg.stop_epoch >= 1, ">= 1"),
            ("img_size", cfg.img_size is None or 8 <= cfg.img_size <= 4096, "between 8 and 4096")):
        if not ok:
            raise ConfigError(f"{setting(name)} must be {rule} (got {getattr(cfg, name)})")
    if cfg.clip_mode not in CLIP_MODES:
        raise ConfigError(f"{setting('clip_mode')} must be one of {', '.join(CLIP_MODES)} (got {cfg.clip_mode!r})")
    if cfg.kd_target not in KD_TARGETS:
        raise ConfigError(f"{setting('kd_target')} must be one of {', '.join(KD_TARGETS)} (got {cfg.kd_target!r})")
    resolve_name(cfg.student)  # an unknown model fails before any data is read
    if cfg.amp_dtype not in ("bfloat16", "float16"):
        raise ConfigError(f"{setting('amp_dtype')} must be bfloat16 or float16 (got {cfg.amp_dtype!r})")
    if cfg.mode != "online" and (cfg.teacher or cfg.teacher_checkpoint):
        raise ConfigError(f"{setting('teacher')}/{setting('teacher_checkpoint')} are for {setting('mode', 'online')} "
                        f"only")
    if cfg.labels is None and cfg.mode != "supervised":
        raise ConfigError(f"{setting('mode', cfg.mode)} needs {setting('labels')}, a label store (only "
                        f"{setting('mode', 'supervised')} trains without labels)")
    if cfg.mode != "supervised" and cfg.kd_weight == 0 and cfg.ce_weight == 0:
        raise ConfigError(f"{setting('kd_weight')} and {setting('ce_weight')} are both 0: nothing to train on")
    if cfg.mode == "cached" and cfg.kd_target == "full":
        raise ConfigError(f"{setting('kd_target', 'full')} needs the teacher in the loop ({setting('mode', 'online')}): "
                        f"cached labels are the "
                        "stored top-k + rest")
    if cfg.mode == "cached" and cfg.fresh_views:
        raise ConfigError(f"{setting('fresh_views', True)} needs {setting('mode', 'online')} or supervised: "
                        f"cached labels exist for stored views only")
    if cfg.topk_limit is not None and cfg.mode == "online" and cfg.kd_target == "full":
        raise ConfigError(f"{setting('topk_limit')} truncates top-k targets; online's default target is the full "
                        f"softmax (add {setting('kd_target', 'topk')})")


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
        model, self.info = create(cfg.student, pretrained=cfg.pretrained, num_classes=h.num_classes,
                                   checkpoint_setting=None, **kwargs)
        self.module = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
        self.model = self.module
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:  # the step only: checkpoints, EMA and the optimizer keep the plain module
            self.model = torch.compile(self.model, backend=compile_backend(cfg.compile))
        self.normalize = Normalize(self.info.mean, self.info.std).to(device)
        try:
            self.optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                 momentum=cfg.momentum)
        except (ValueError, AssertionError) as e:
            raise ConfigError(f"{setting('opt')} {cfg.opt!r}: {e}") from None
        logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)  # its 1-epoch warning assumes integer steps
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=cfg.epochs, lr_min=cfg.min_lr,
                                           warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.warmup_lr)
        amp = device.type == "cuda" if cfg.amp is None else cfg.amp
        self.precision = ("bf16" if cfg.amp_dtype == "bfloat16" else "fp16") if amp else "fp32"
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        # USI's decay is per step at a global batch of 1024: d ** (B / 1024) keeps the same average
        # over the same number of images at another batch B.
        b_ref = cfg.model_ema_decay_batch
        self.ema_decay = cfg.model_ema_decay ** (cfg.batch_size * self.dist.world / b_ref) if b_ref else cfg.model_ema_decay
        self.ema = ModelEmaV3(model, decay=self.ema_decay, use_warmup=cfg.model_ema_warmup) if cfg.model_ema else None
        self.teacher = self._teacher() if cfg.mode == "online" else None
        self.epoch, self.step_in_epoch, self.steps_in_epoch, self.global_step = 0, 0, 1, 0

    def _teacher(self):
        """The store's teacher (one model or the whole ensemble), or ``--teacher`` instead of it."""
        cfg, rec = self.cfg, self.data.header.teacher
        ckpts = [] if cfg.teacher_checkpoint is None else (
            [cfg.teacher_checkpoint] if isinstance(cfg.teacher_checkpoint, str) else list(cfg.teacher_checkpoint))
        dev, prec = str(self.device), rec.get("precision", "auto")
        if cfg.teacher is None:  # the labels' own teacher, checked against the checkpoints given
            random = rec.get("weights") == "random" and not ckpts  # benchmarks: speed does not depend on weights
            t, notes = rebuild_teacher(rec, ckpts or None, device=dev, precision=prec, compile=cfg.compile)
            if self.dist.rank == 0:
                for n in notes + (["the store's teacher had random weights; these are other random ones"]
                                  if random else []):
                    log.warning("note: %s: online and cached targets differ", n)
        else:
            if len(ckpts) > 1:
                raise ConfigError(f"{setting('teacher')} names one model; give one {setting('teacher_checkpoint')} "
                                f"(or none: the labels' own teacher and ensemble are used without {setting('teacher')})")
            t = Teacher(cfg.teacher, ckpts[0] if ckpts else None, device=dev, precision=prec, compile=cfg.compile,
                        num_classes=self.data.header.num_classes)
            # the store's own teacher named again: same model and checkpoint bytes (pretrained weights have
            # no sha256 here and may change between timm versions, so they are always noted)
            mine = t.record()
            same = (mine.get("model"), mine.get("checkpoint_sha256")) == (rec.get("model"), rec.get("checkpoint_sha256"))
            if self.dist.rank == 0 and not (same and mine.get("checkpoint_sha256")):
                log.warning("note: online teacher %s is not necessarily the store's teacher %s: online and cached "
                            "targets may differ", t.info.model, rec.get("model"))
        if t.num_classes != self.data.header.num_classes:
            raise ConfigError(f"the online teacher has {t.num_classes} classes; the labels have "
                            f"{self.data.header.num_classes}")
        return t

    def begin_epoch(self, epoch: int, steps: int) -> None:
        """Seed torch's RNG from (seed, epoch, rank) so dropout/drop-path replay on resume."""
        self.epoch, self.step_in_epoch, self.steps_in_epoch = epoch, 0, max(steps, 1)
        torch.manual_seed(derive_key("torch", self.cfg.seed, epoch, self.dist.rank) % (1 << 63))

    def kd_per_sample(self, logits: torch.Tensor, batch: dict, pixels: torch.Tensor) -> torch.Tensor:
        """Per-sample T^2 KL(target || student) for a KD mode; ``pixels`` are the batch's replayed views."""
        cfg, dev = self.cfg, self.device
        if cfg.mode == "cached":  # the batch's stored rows, gathered on the device by the ReplayLoader
            idx, logp = batch["topk_index"].to(dev, non_blocking=True), batch["topk_logp"].to(dev, non_blocking=True)
            if cfg.topk_limit is not None:
                idx, logp = truncate_topk(idx, logp, cfg.topk_limit)
            return kd_loss(logits, idx, logp, cfg.kd_temperature, cfg.kd_renorm)
        t = self.teacher.logits(pixels).clone()
        if cfg.kd_target == "full":  # USI: the teacher's whole distribution
            return kd_loss_full(logits, t, cfg.kd_temperature)
        # the same top-k + rest the store holds, before its rounding
        idx, logp = topk_logprobs(t, cfg.topk_limit or self.data.header.topk)
        return kd_loss(logits, idx, logp, cfg.kd_temperature, cfg.kd_renorm)

    def target_loss(self, logits: torch.Tensor, batch: dict, pixels: torch.Tensor) -> torch.Tensor:
        cfg, dev = self.cfg, self.device
        y, y2, lam = (batch[k].to(dev, non_blocking=True) for k in ("y", "y_partner", "lam"))
        if cfg.mode == "supervised":
            return mixed_ce(logits, y, y2, lam, cfg.smoothing).mean()
        loss = cfg.kd_weight * self.kd_per_sample(logits, batch, pixels).mean()
        if cfg.ce_weight:
            loss = loss + cfg.ce_weight * mixed_ce(logits, y, y2, lam, cfg.smoothing).mean()
        return loss

    def train_step(self, batch: dict) -> torch.Tensor:
        """One optimizer update on one batch; returns the loss (detached, on the device: no sync)."""
        from timm.utils import dispatch_clip_grad

        self.scheduler.step(self.epoch + self.step_in_epoch / self.steps_in_epoch)
        self.model.train()
        if "pixels" not in batch:  # a batch straight from the DataLoader: the renderer's device stage
            finish_pixels(self.data.renderer, batch, self.device)
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
                "num_classes": self.data.header.num_classes, "class_names": list(self.data.header.class_names),
                "class_map": None if self.data.class_map is None else self.data.class_map.tolist(),
                "inputs": run_inputs(self.cfg, self.data)}

    def load_state(self, ckpt: dict) -> None:
        self.module.load_state_dict(ckpt["state_dict"])
        if self.ema is not None and ckpt.get("state_dict_ema") is not None:
            self.ema.module.load_state_dict(ckpt["state_dict_ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.global_step = int(ckpt["global_step"])


def run_inputs(cfg: TrainConfig, data: TrainData) -> dict:
    """What a run trains on, for --resume to compare: DATA, its classes, and the labels' identity."""
    h = data.header
    labels = None
    if cfg.labels is not None:
        t = h.teacher or {}
        labels = {"path": cfg.labels, "fingerprint": h.fingerprint, "teacher": t.get("model"),
                  "teacher_sha256": t.get("checkpoint_sha256"), "teacher_weights": t.get("weights"),
                  "recipe": data.recipe.digest, "seed": h.seed, "topk": h.topk, "num_classes": h.num_classes,
                  "views": data.views, "img_size": h.img_size, "encoding": h.encoding.to_dict(),
                  "class_map": None if data.class_map is None else data.class_map.tolist()}
    return {"data": cfg.data, "data_fingerprint": data.source.fingerprint,
            "class_names": list(data.source.class_names), "labels": labels}


def _check_inputs(cfg: TrainConfig, ckpt: dict, data: TrainData) -> None:
    """--resume: refuse other data, other labels or other classes than the run started with."""
    old = ckpt.get("inputs")
    if not old:  # a checkpoint from before inputs were recorded
        return
    now, diff = run_inputs(cfg, data), []
    if old["data_fingerprint"] != now["data_fingerprint"]:
        diff.append(f"DATA (run: {old['data']} fingerprint {old['data_fingerprint'][:12]}, now: {now['data']} "
                    f"fingerprint {now['data_fingerprint'][:12]})")
    if old["class_names"] != now["class_names"]:
        gone = sorted(set(old["class_names"]) ^ set(now["class_names"]))[:3]
        diff.append(f"class names ({len(old['class_names'])} vs {len(now['class_names'])}"
                    f"{'; e.g. ' + ', '.join(gone) if gone else ', other order'})")
    a, b = old["labels"] or {}, now["labels"] or {}
    if bool(a) != bool(b):
        diff.append(f"labels (run: {a.get('path')}, now: {b.get('path')})")
    else:
        changed = [k for k in a if k != "path" and a.get(k) != b.get(k)]
        if changed:
            diff.append(f"labels {b.get('path')} ({', '.join(f'{k} run: {a.get(k)}, now: {b.get(k)}' for k in changed)})")
    if diff:
        raise ConfigError(f"{cfg.out}: {setting('resume', True)} with other inputs than the run started with: "
                        f"{'; '.join(diff)}; use the run's own, or start a new run in another {setting('out')}")


def build(cfg: TrainConfig, dist: Dist | None = None) -> tuple[TrainData, Trainer]:
    """Data matched to the labels, and a ready trainer (student, optimizer, EMA, teacher if online)."""
    cfg = resolve_config(cfg)
    _validate(cfg)
    dist = dist or Dist()
    device = pick_device(dist.device_str(cfg.device))
    data = TrainData(cfg.data, cfg.labels, cfg.allow_subset, cfg.img_size,
                     plan=dict(recipe=cfg.recipe, seed=cfg.seed, views=cfg.epochs * cfg.aug_repeats),
                     views_limit=cfg.views_limit, repeats=cfg.aug_repeats, fresh=cfg.fresh_views,
                     allow_drift=cfg.allow_pixel_drift, renderer=cfg.renderer, device=device)
    if cfg.topk_limit is not None and cfg.topk_limit > data.header.topk:
        raise ConfigError(f"{setting('topk_limit', cfg.topk_limit)}: {cfg.labels} stores the top {data.header.topk}; "
                        f"use 1 to {data.header.topk}")
    data.batches(cfg.seed, 0, cfg.batch_size)  # fails early on an odd batch for a mixing recipe
    return data, Trainer(cfg, data, device, dist)


def make_loader(data: TrainData, cfg: TrainConfig, device: torch.device, dist: Dist | None = None) -> ReplayLoader:
    """The run's ``ReplayLoader`` (the one stage-two data path: workers decode and plan, the device
    renders, labels are gathered on the device); call ``loader.set_epoch(e)`` before each epoch."""
    dist = dist or Dist()
    return ReplayLoader.for_data(data, cfg.batch_size, seed=cfg.seed, workers=cfg.workers, rank=dist.rank,
                                 world=dist.world, device=device, with_labels=cfg.mode == "cached")


def _save(obj: dict | str, path: str) -> None:
    """Write a checkpoint (or copy the file ``obj``) under a temporary name and rename it into place:
    a kill or a full disk leaves the previous file whole. A failed write is the user's to fix."""
    tmp = path + ".tmp"
    try:
        if isinstance(obj, str):
            shutil.copyfile(obj, tmp)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        try:
            os.remove(tmp)
        except OSError:
            pass
        kept = " (the last good checkpoint is kept)" if os.path.exists(path) else ""
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"the write failed: {str(e).splitlines()[0][:100]}"
        raise UserError(f"{path}: could not write the checkpoint ({why}; is the disk full?){kept}; "
                        f"free disk space and rerun with {setting('resume', True)}") from None


def _load_resume(cfg: TrainConfig) -> dict | None:
    last = os.path.join(cfg.out, "last.pth")
    if not cfg.resume:
        if os.path.exists(last):
            raise ConfigError(f"{cfg.out}: already holds a run (last.pth); set {setting('resume', True)} to continue it "
                            f"or use another {setting('out')}")
        return None
    if not os.path.isfile(last):
        raise ConfigError(f"{cfg.out}: nothing to resume (no last.pth); drop {setting('resume', True)} to start a run")
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    old = ckpt.get("config", {})
    diff = [f"{k} (run: {old.get(k)}, now: {getattr(cfg, k)})" for k in _RESUME_KEYS
            if k in old and old.get(k) != getattr(cfg, k)]
    if diff:
        raise ConfigError(f"{cfg.out}: {setting('resume', True)} with other settings: {'; '.join(diff)}")
    return ckpt


def _check_finite(losses: list, epoch: int, cfg: TrainConfig, force: bool = False) -> None:
    """Stop a run whose loss became NaN/inf: nothing of this epoch is saved, the last checkpoint stays."""
    vals = torch.stack(losses).float().cpu() if losses and torch.is_tensor(losses[0]) else torch.tensor(losses, dtype=torch.float32)
    bad = (~torch.isfinite(vals)).nonzero()
    if len(bad) or force:
        where = f" at step {int(bad[0]) + 1}" if len(bad) else " on another process"
        kept = f"epoch {epoch} in {cfg.out}/last.pth is kept" if epoch else "no checkpoint was written"
        raise UserError(f"the loss became non-finite in epoch {epoch + 1}{where}; stopped, {kept}; "
                        f"lower {setting('lr')} (now {cfg.lr:g}) or set {setting('clip_grad')}, then rerun (with "
                        f"{setting('resume', True)} to continue)")


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
        raise ConfigError(f"{cfg.out}: is a file; {setting('out')} must be a folder for the run")
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

    ckpt = _load_resume(cfg)
    start = int(ckpt["epoch"]) if ckpt else 0
    data, tr = build(cfg, dist)
    h = data.header
    if ckpt is not None:
        _check_inputs(cfg, ckpt, data)
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
            raise ConfigError(f"{setting('batch_size', cfg.batch_size)} x {dist.world} process(es) is more than the "
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
            raise UserError(out_of_memory(tr.device, f"training {cfg.student} ({cfg.mode})", cfg.batch_size,
                                          f" (with {setting('resume', True)} to continue){kept}")) from None
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
            _save(state, os.path.join(cfg.out, "last.pth"))
            if is_best:
                _save(os.path.join(cfg.out, "last.pth"), os.path.join(cfg.out, "best.pth"))
            write_metrics(history, cfg.out)
            if epoch + 1 == stop or time.monotonic() - plotted > 60:
                plot_curves(history, cfg.out)
                plotted = time.monotonic()
        say(summary_line(m, cfg.epochs))
        dist.barrier()
    return TrainResult(out=cfg.out, epochs_done=len(history), matched=data.matched, num_samples=h.num_samples,
                       best_top1=best, last=history[-1] if history else {})

