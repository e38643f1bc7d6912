"""``VerifyConfig``: what ``relabel verify`` checks and how, each setting written once.

Light on purpose (no torch): the CLI builds ``relabel verify`` from these fields at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from relabel.settings import (DEVICE_HELP, MAX_SEED, RENDER_KERNEL_HELP, RENDER_KERNELS, RENDERER_HELP, RENDERERS,
                              check_settings, device_name, setting)


@dataclass
class VerifyConfig:
    store: str = setting(help="Label store.", argument=True)
    data: str = setting(help="The images the labels were made from.", argument=True)
    samples: int = setting(64, ge=0, help="Random stored views to recompute (0: integrity only).")
    teacher_checkpoint: str | list[str] | None = setting(
        None, cli_type=(List[str], []),
        help="Teacher weights the store was made with (one per ensemble member, in order).")
    device: str = setting("auto", check=device_name, help=DEVICE_HELP)
    batch_size: int = setting(64, cli=False, ge=1, help="Views per teacher batch.")
    seed: int = setting(0, ge=0, le=MAX_SEED, help="Seed for picking the views.")
    compile: bool | str = setting(False, flags=("--compile",), cli_type=(bool, False),
                                  help="torch.compile the teacher.")
    renderer: str = setting("auto", choices=RENDERERS, help=RENDERER_HELP)
    render_kernel: str = setting("auto", choices=RENDER_KERNELS, help=RENDER_KERNEL_HELP)

    __post_init__ = check_settings
