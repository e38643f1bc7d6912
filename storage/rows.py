"""Label rows that cannot be a real top-k: what every reader refuses before training on them."""
from __future__ import annotations

import numpy as np


def check_label_rows(index: np.ndarray, logp: np.ndarray, num_classes: int, tolerance: float) -> np.ndarray:
    """Rows (..., k) / (..., k+1) that cannot be a real top-k: a class twice, a class out of range,
    or bins whose probabilities do not sum to one (all-zero rows of a never-written view do not).
    Returns a boolean mask of the bad rows. Runs on a whole view's labels the first time a process
    reads it, so it stays cheap: column-pair compares in the stored index dtype, a float32 sum."""
    k = index.shape[-1]
    flat = index.reshape(-1, k)
    bad = np.zeros(flat.shape[0], bool)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= num_classes):
        bad |= ((flat < 0) | (flat >= num_classes)).any(-1)
    if k > 1:
        cols = np.ascontiguousarray(flat.T)
        for i in range(k - 1):
            for j in range(i + 1, k):
                bad |= cols[i] == cols[j]
    total = np.exp(logp.reshape(-1, k + 1).astype(np.float32, copy=False)).sum(-1)
    lo, hi = np.float32(np.exp(-tolerance)), np.float32(np.exp(tolerance))
    bad |= ~((total >= lo) & (total <= hi))  # NaN fails too
    return bad.reshape(index.shape[:-1])
