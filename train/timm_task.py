"""``CachedDistillationTask``: cached-label KD as a ``timm.task.TrainingTask``, for timm-based loops.

timm's ``LogitDistillationTask`` runs a teacher in every step; this task reads the teacher's stored
top-k instead, so a loop written for timm's tasks (``task(input, target)["loss"].backward()``, EMA,
``prepare_distributed``, ``compile``) switches to cached labels by swapping the task and the loader:
the ``target`` is a ``relabel.ReplayLoader`` batch (a dict), which carries the cached rows and the
mixed ground truth of exactly those samples and that epoch's view.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from relabel.settings import check_value

from .config import TrainConfig

try:
    from timm.task import TrainingTask
except ImportError as e:  # pragma: no cover - a timm from before its task API
    raise ImportError("CachedDistillationTask needs a timm with the timm.task API; pip install -U timm") from e

from .losses import kd_loss, mixed_ce


class CachedDistillationTask(TrainingTask):
    """``loss = task_loss_weight * CE(mixed ground truth) + distill_loss_weight * KL(cached teacher || student)``.

    The defaults are USI's weights (1 and 5). The KD term is the same as ``relabel train --mode cached``
    (top-k + uniform rest, ``kd_loss``); the CE term is label-smoothed like timm's.

    Args:
        model: the student (any ``nn.Module`` returning logits in the teacher's class space).
        distill_loss_weight: weight of the KD term.
        task_loss_weight: weight of the ground-truth CE term (0: KD only).
        temperature: KD temperature (target and student divided by T, loss x T^2).
        smoothing: label smoothing of the CE term.
        device, dtype, verbose: as ``timm.task.TrainingTask``.

    Example::

        task = CachedDistillationTask(model)
        for b in loader:                                   # a relabel.ReplayLoader(..., normalize_for=model)
            out = task(b["input"], b)
            out["loss"].backward()
    """

    def __init__(self, model: nn.Module, distill_loss_weight: float = 5.0, task_loss_weight: float = 1.0,
                 temperature: float = 1.0, smoothing: float = 0.0, device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None, verbose: bool = False):
        super().__init__(device=device, dtype=dtype, verbose=verbose)
        # the settings relabel train has for these, checked by their limits (one ConfigError, as the CLI)
        distill_loss_weight, task_loss_weight, temperature, smoothing = (
            check_value(TrainConfig, name, value, called=called) for name, called, value in (
                ("kd_weight", "distill_loss_weight", distill_loss_weight),
                ("ce_weight", "task_loss_weight", task_loss_weight),
                ("kd_temperature", "temperature", temperature), ("smoothing", "smoothing", smoothing)))
        self.trainable_module = model
        self.distill_loss_weight, self.task_loss_weight = distill_loss_weight, task_loss_weight
        self.temperature, self.smoothing = temperature, smoothing

    def prepare_distributed(self, device_ids: Optional[list] = None, **ddp_kwargs) -> "CachedDistillationTask":
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.trainable_module = DDP(self.trainable_module, device_ids=device_ids, **ddp_kwargs)
        return self

    def compile(self, backend: str = "inductor", mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        self.trainable_module = torch.compile(self.trainable_module, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = self.trainable_module
        return self.trainable_module

    def forward(self, input: torch.Tensor, target: dict) -> dict[str, torch.Tensor]:
        """``target``: a ReplayLoader batch (``topk_index``, ``topk_logp``, ``y``, ``y_partner``, ``lam``)."""
        dev = input.device
        logits = self.trainable_module(input)
        kd = kd_loss(logits, target["topk_index"].to(dev), target["topk_logp"].to(dev), self.temperature).mean()
        task = mixed_ce(logits, target["y"].to(dev), target["y_partner"].to(dev), target["lam"].to(dev),
                        self.smoothing).mean()
        loss = self.task_loss_weight * task + self.distill_loss_weight * kd
        return {"loss": loss, "output": logits, "task_loss": task, "kd_loss": kd}
