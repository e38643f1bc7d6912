"""torchrun awareness: rank, world size, barriers. One process without torchrun is rank 0 of 1."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        d = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        if not tdist.is_initialized():
            use_nccl = torch.cuda.is_available() and device != "cpu"
            if use_nccl:
                torch.cuda.set_device(d.local_rank)
            tdist.init_process_group("nccl" if use_nccl else "gloo")
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
