"""torchrun awareness: rank, world size, barriers. One process without torchrun is rank 0 of 1."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from relabel.storage.errors import ConfigError

# Seconds every rank has to reach the rendezvous (torchrun starts them together). Only the rendezvous:
# later barriers may legitimately wait for a slow rank for as long as torch's default allows.
RENDEZVOUS_TIMEOUT_S = 120.0


def _env_int(name: str, default: int | None = None) -> int:
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        if default is None:
            raise ConfigError(f"WORLD_SIZE is set but {name} is not: a stale torchrun environment? Launch with "
                              f"torchrun, or unset RANK WORLD_SIZE LOCAL_RANK MASTER_ADDR MASTER_PORT to run one process")
        return default
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"{name}={v!r} is not an integer; launch with torchrun, or unset RANK WORLD_SIZE "
                          f"LOCAL_RANK to run one process") from None


def _rendezvous(rank: int, world: int):
    """torch's env:// rendezvous (the same store torchrun's agents and workers expect) under a bounded
    wait: a stale environment or a rank that never comes is an error after the timeout, not a hang."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    if not addr or not port:
        raise ConfigError(f"RANK/WORLD_SIZE are set (WORLD_SIZE={world}) but MASTER_ADDR/MASTER_PORT are not: a stale "
                          f"torchrun environment? Launch with torchrun, or unset RANK WORLD_SIZE LOCAL_RANK to run "
                          f"one process")
    try:
        timeout = float(os.environ.get("RELABEL_DIST_TIMEOUT", RENDEZVOUS_TIMEOUT_S))
    except ValueError:
        raise ConfigError(f"RELABEL_DIST_TIMEOUT={os.environ['RELABEL_DIST_TIMEOUT']!r} is not a number of "
                          f"seconds") from None
    try:
        store, _, _ = next(tdist.rendezvous("env://", timeout=timedelta(seconds=timeout)))
    except (RuntimeError, ValueError, OSError) as e:  # DistStoreError / DistNetworkError are RuntimeErrors
        raise ConfigError(f"torch.distributed rendezvous at {addr}:{port} failed within {timeout:.0f}s (rank {rank} of "
                          f"{world}: {type(e).__name__}); start every rank with torchrun, unset RANK WORLD_SIZE to run "
                          f"one process, or raise RELABEL_DIST_TIMEOUT") from None
    store.set_timeout(timedelta(minutes=30))  # torch's default for everything after the rendezvous
    return store


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "Dist":
        world = _env_int("WORLD_SIZE", 1)
        if world <= 1:
            return cls()
        rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
        if not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={world}); launch with torchrun")
        d = cls(rank, world, local_rank)
        if not tdist.is_initialized():
            use_nccl = torch.cuda.is_available() and device != "cpu"
            if use_nccl:
                torch.cuda.set_device(d.local_rank)
            store = _rendezvous(rank, world)
            tdist.init_process_group("nccl" if use_nccl else "gloo", store=store, rank=rank, world_size=world)
        return d

    @property
    def active(self) -> bool:
        return self.world > 1

    def device_str(self, device: str) -> str:
        if self.active and device in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def sum(self, x: float) -> float:
        if not self.active:
            return x
        t = torch.tensor([float(x)], dtype=torch.float64)
        if tdist.get_backend() == "nccl":
            t = t.cuda()
        tdist.all_reduce(t)
        return float(t.item()) if isinstance(x, float) else int(t.item())

    def close(self) -> None:
        if self.active and tdist.is_initialized():
            tdist.destroy_process_group()
