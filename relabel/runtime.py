"""Process-level defaults shared by the CLI and the config records (one place, so they cannot drift).

Kept free of torch: the CLI computes its defaults before any heavy import (``--help`` stays fast).
"""
from __future__ import annotations

import os


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def has_gpu() -> bool:
    """An NVIDIA GPU is visible to this process (checked without importing torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidia0") or os.path.isdir("/proc/driver/nvidia/gpus")


def default_workers() -> int:
    """DataLoader workers per process when none are given. On a GPU machine the workers only read,
    decode and plan (the torch renderer draws on the GPU), and the GPU must not wait: every core of
    this process's share but two (the main process and the CUDA driver's threads). On a CPU machine
    the workers render too and share the cores with the model: at most 8."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun: processes on this machine
    except ValueError:
        local = 1
    share = max(1, _cores() // local)
    if has_gpu():
        return max(1, share - 2)
    return min(8, share)
