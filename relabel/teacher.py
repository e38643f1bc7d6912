"""The teacher: batched inference on uint8 views -> top-k log-probabilities (+ the rest bin)."""
from __future__ import annotations

import torch

from .models import Normalize, autocast, create, pick_device


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (B, k), log-probs (B, k+1)): top-k under the full softmax plus log(leftover mass)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top, idx = logp.topk(k, dim=-1)
    rest = torch.logsumexp(logp.scatter(-1, idx, float("-inf")), dim=-1, keepdim=True)
    return idx, torch.cat([top, rest], dim=-1)


class Teacher:
    """A timm classifier in eval mode that sees uint8 pixels and normalizes them its own way."""

    def __init__(self, name: str, checkpoint: str | None = None, device: str = "auto",
                 precision: str = "auto", pretrained: bool = True, num_classes: int | None = None):
        self.device = pick_device(device)
        model, self.info = create(name, checkpoint=checkpoint, pretrained=pretrained, num_classes=num_classes)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.normalize = Normalize(self.info.mean, self.info.std).to(self.device)
        self.precision = precision
        self.weights = "checkpoint" if checkpoint else ("pretrained" if pretrained else "random")

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @torch.inference_mode()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: uint8 (B, 3, H, W) on any device."""
        x = self.normalize(pixels.to(self.device, non_blocking=True))
        with autocast(self.device, self.precision):
            return self.model(x).float()

    @torch.inference_mode()
    def topk(self, pixels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return topk_logprobs(self.logits(pixels), k)


def teacher_record(teacher: Teacher) -> dict:
    """What the store header says about the teacher (weights: checkpoint, pretrained or random)."""
    d = teacher.info.to_dict()
    d.update(precision=teacher.precision, weights=teacher.weights)
    return d
