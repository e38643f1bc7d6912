"""The stage-two ``Trainer``: student, optimizer, schedule, weight EMA, AMP and the loss, one step
at a time. Modes differ only in where the target comes from: ``cached`` takes the stored top-k rows
the ``ReplayLoader`` gathered, ``online`` runs the teacher on the same replayed pixels and takes its
full softmax (USI; ``kd_target="topk"``: the same top-k + rest the store holds), ``supervised`` uses
ground truth only."""
from __future__ import annotations

import logging

import torch

from relabel.dist import Dist
from relabel.models import Normalize, autocast, create
from relabel.rng import derive_key
from relabel.teacher import Teacher, compile_backend, rebuild_teacher, topk_logprobs
from relabel.storage.errors import ConfigError, named

from .checkpoint import run_inputs
from .config import TrainConfig
from .data import TrainData, finish_pixels
from .losses import kd_loss, kd_loss_full, mixed_ce, truncate_topk

log = logging.getLogger("relabel.train.loop")  # the run's story: one logger for the whole trainer


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
            raise ConfigError(f"{named('opt')} {cfg.opt!r}: {e}") from None
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
                raise ConfigError(f"{named('teacher')} names one model; give one {named('teacher_checkpoint')} "
                                f"(or none: the labels' own teacher and ensemble are used without {named('teacher')})")
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
