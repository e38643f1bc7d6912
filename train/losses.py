"""Distillation from top-k + rest soft labels (or the teacher's full softmax), and cross-entropy on
mixed ground truth.

A stored label is k+1 log-probabilities under the teacher's full softmax (T=1): its top-k classes
and one "rest" bin. Renormalized over the k+1 bins it gives the exact top-k probabilities and the
exact leftover mass; spreading the rest uniformly over the other C-k classes makes a full target
whose KL to the student is computed sparsely, without a dense B x C target.
"""
from __future__ import annotations

import math

import torch

from relabel.settings import check_value

from .config import TrainConfig


def _temperature(t) -> float:
    """A KD temperature, checked as ``relabel train``'s ``kd_temperature`` (T = 0 would divide by zero)."""
    if type(t) is float and t > 0 and math.isfinite(t):
        return t
    return check_value(TrainConfig, "kd_temperature", t, called="temperature")


def kd_loss(logits: torch.Tensor, idx: torch.Tensor, logp: torch.Tensor, temperature: float = 1.0,
            renorm: bool = False) -> torch.Tensor:
    """Per-sample T^2 * KL(target_T || softmax(z / T)); ``idx`` (B, k) classes, ``logp`` (B, k+1) stored log-probs.

    The target is the top-k + uniform-rest distribution (each of the C-k other classes gets
    rest / (C-k)), tempered as a whole: every log-probability divided by T, renormalized. So the
    loss is continuous in T, equals Hinton's KD on that distribution, and at T=1 is the plain KL.
    ``renorm``: the top-k only, renormalized (rest dropped), tempered the same way.
    """
    logits, logp = logits.float(), logp.float()
    k, C = idx.shape[1], logits.shape[1]
    T = _temperature(temperature)
    lq = torch.log_softmax(logits / T, dim=-1)
    lq_top = lq.gather(1, idx)
    others = C - k
    if renorm or others == 0:  # no class outside the top-k (k == C): the rest bin has nowhere to go
        p = torch.softmax(logp[:, :k] / T, dim=-1)
        return (torch.xlogy(p, p) - p * lq_top).sum(-1) * T * T
    lp = torch.log_softmax(logp, dim=-1)  # stored rounding: make the k+1 bins sum to one
    top, rest_each = lp[:, :k] / T, (lp[:, k] - math.log(others)) / T  # log p of one "other" class, tempered
    z = torch.logsumexp(torch.cat([top, (rest_each + math.log(others))[:, None]], dim=-1), dim=-1)
    p_top, p_other = (top - z[:, None]).exp(), (rest_each - z).exp()  # tempered, renormalized
    rest_lq_sum = lq.sum(-1) - lq_top.sum(-1)  # sum of log q over the classes outside the top-k
    kl = ((torch.xlogy(p_top, p_top) - p_top * lq_top).sum(-1)
          + others * torch.xlogy(p_other, p_other) - p_other * rest_lq_sum)
    return kl * T * T


def kd_loss_full(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample T^2 * KL(softmax(t / T) || softmax(z / T)): the teacher's full distribution (USI, Hinton)."""
    T = _temperature(temperature)
    lp = torch.log_softmax(teacher_logits.float() / T, dim=-1)
    lq = torch.log_softmax(logits.float() / T, dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1) * T * T


def truncate_topk(idx: torch.Tensor, logp: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored top-K row as a top-k row (k <= K): the dropped classes' mass joins the rest bin."""
    if k >= idx.shape[-1]:
        return idx, logp
    rest = torch.logsumexp(logp[..., k:], dim=-1, keepdim=True)
    return idx[..., :k], torch.cat([logp[..., :k], rest], dim=-1)


def mixed_ce(logits: torch.Tensor, y: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor,
             smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample CE with target lam*onehot(y) + (1-lam)*onehot(y_partner), label-smoothed like timm."""
    lq = torch.log_softmax(logits.float(), dim=-1)
    C = lq.shape[1]
    off = smoothing / C
    on = 1.0 - smoothing + off
    lam = lam.to(lq.dtype)
    picked = lam * lq.gather(1, y[:, None])[:, 0] + (1 - lam) * lq.gather(1, y_partner[:, None])[:, 0]
    return -((on - off) * picked + off * lq.sum(-1))


def dense_target(idx: torch.Tensor, logp: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The full (B, C) target a stored label stands for (for checks and plots; the loss never needs it)."""
    p = torch.softmax(logp.float(), dim=-1)
    k = idx.shape[1]
    rest = p[:, k:] / max(num_classes - k, 1)
    out = rest.expand(-1, num_classes).clone()
    return out.scatter(1, idx, p[:, :k])
