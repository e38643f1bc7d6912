"""Distillation from top-k + rest soft labels, and cross-entropy on mixed ground truth.

A stored label is k+1 log-probabilities under the teacher's full softmax (T=1): its top-k classes
and one "rest" bin. Renormalized over the k+1 bins it gives the exact top-k probabilities and the
exact leftover mass; spreading the rest uniformly over the other C-k classes makes a full target
whose KL to the student is computed sparsely, without a dense B x C target.
"""
from __future__ import annotations

import torch


def kd_loss(logits: torch.Tensor, idx: torch.Tensor, logp: torch.Tensor, temperature: float = 1.0,
            renorm: bool = False) -> torch.Tensor:
    """Per-sample KL(teacher || student); ``idx`` (B, k) classes, ``logp`` (B, k+1) stored log-probs.

    T == 1 and not ``renorm``: the top-k + uniform-rest target (exact leftover mass).
    ``renorm``: the top-k only, renormalized (rest dropped).
    T != 1: the top-k re-tempered (softmax(logp_topk / T), rest dropped) against log_softmax(z / T),
    times T^2 so gradients keep their scale, as in Hinton et al.
    """
    logits, logp = logits.float(), logp.float()
    k, C = idx.shape[1], logits.shape[1]
    if temperature != 1.0 or renorm:
        p = torch.softmax(logp[:, :k] / temperature, dim=-1)
        lq = torch.log_softmax(logits / temperature, dim=-1)
        kl = (torch.xlogy(p, p) - p * lq.gather(1, idx)).sum(-1)
        return kl * temperature ** 2
    lp = torch.log_softmax(logp, dim=-1)  # stored rounding: make the k+1 bins sum to one
    p = lp.exp()
    p_top, rest = p[:, :k], p[:, k]
    lq = torch.log_softmax(logits, dim=-1)
    lq_top = lq.gather(1, idx)
    others = max(C - k, 1)
    rest_lq_sum = lq.sum(-1) - lq_top.sum(-1)  # sum of log q over the classes outside the top-k
    return ((torch.xlogy(p_top, p_top) - p_top * lq_top).sum(-1)
            + torch.xlogy(rest, rest / others) - rest / others * rest_lq_sum)


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

