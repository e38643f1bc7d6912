"""``GenerateConfig``: stage one's settings, each written once (default, help, --help section, flags).

Light on purpose (no torch): the CLI builds ``relabel generate`` from these fields at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from relabel.runtime import default_workers
from relabel.settings import (DEVICE_HELP, MAX_IMG_SIZE, MAX_SEED, PRECISIONS, RENDER_KERNEL_HELP,
                              RENDER_KERNELS, RENDERER_HELP, RENDERERS,
                              check_settings, device_name, setting)
from relabel.storage.claims import CLAIM_LEASE
from relabel.storage.encoding import ENCODINGS
from relabel.storage.keys import DEFAULT_KEY_RULE, KEY_RULES

DATA, TEACHER, RUNTIME = "Data and store", "Teacher", "Runtime"

# Bounds that keep every allocation sane: done counts are uint16, a shard is held in memory.
MAX_VIEWS, MAX_SHARD_SAMPLES = 65535, 1 << 20


def _one_or_more(names):
    """A teacher setting: a name, or a non-empty list of names."""
    if isinstance(names, list) and not names:
        raise ValueError("a name or a non-empty list of names")
    return names


@dataclass
class GenerateConfig:
    data: str = setting(help="ImageFolder tree, webdataset shards (folder, glob, brace pattern) or Hugging Face parquet "
                             "(file, glob, folder, hf://datasets/ORG/NAME).", section=DATA,
                        argument=True)
    out: str = setting(help="Label store folder (created, or resumed).", section=DATA, flags=("--out", "-o"))
    teacher: str | list[str] = setting(  # several: an ensemble averaging their probabilities
        "tresnet_l_v2", section=TEACHER, cli_type=(List[str], ["tresnet_l_v2"]), check=_one_or_more,
        help="timm model name or alias (tresnet_l_v2 = USI's teacher); repeat it for an ensemble (the average of "
             "the members' probabilities).")
    teacher_checkpoint: str | list[str] | None = setting(  # one per teacher
        None, section=TEACHER, cli_type=(List[str], []),
        help="Teacher weights, one per --teacher; default: timm's pretrained download.", check=_one_or_more)
    teacher_weight: list[float] | None = setting(None, section=TEACHER, cli_type=(List[float], []),
                                                 gt=0, help="Ensemble: one weight per --teacher (default: equal).")
    teacher_own_size: bool = setting(False, section=TEACHER, flags=("--teacher-own-size",),
                                     help="Ensemble: each member sees the view resized to its own input size.")
    key_rule: str = setting(
        DEFAULT_KEY_RULE, section=DATA, choices=KEY_RULES,
        help="How image names become the keys labels are stored by: path (as DATA names them), stem (the file name "
             "alone) or imagenet (every ImageNet naming: folders, webdataset, Hugging Face; classes as synsets). "
             "stem and imagenet make a label set that replays on other copies of the images.")
    views: int = setting(10, section=DATA, ge=1, le=MAX_VIEWS, help="Views per sample; a larger value on an existing store adds views.")
    topk: int = setting(10, section=DATA, ge=1, help="Classes kept per view.")
    recipe: str = setting("usi", section=DATA, help="Augmentation recipe: usi, simple, or a .yaml/.json file.")
    seed: int = setting(0, section=DATA, ge=0, le=MAX_SEED, help="Seed of every view.")
    img_size: Optional[int] = setting(None, section=DATA, ge=8, le=MAX_IMG_SIZE, help="Teacher input size (default: the teacher's own).")
    batch_size: int = setting(128, section=RUNTIME, ge=1, help="Teacher batch size.")
    workers: int = setting(section=RUNTIME, default_factory=default_workers, ge=0,
                           help="DataLoader workers (decode + views).")
    device: str = setting("auto", section=RUNTIME, check=device_name, help=DEVICE_HELP)
    precision: str = setting("auto", section=TEACHER, choices=PRECISIONS,
                             help="auto (fp16 autocast on CUDA, as USI ran its teacher; fp32 on CPU), fp32, fp16 or bf16.")
    encoding: str = setting("q8", section=DATA, choices=ENCODINGS, help="Stored values: q8 (1 byte, ~2e-4 nats KL), f16 or f32.")
    samples_per_shard: int = setting(16384, section=DATA, ge=1, le=MAX_SHARD_SAMPLES,
                                     help="Samples per shard (a multiple of the recipe's mix group); larger reads faster.")
    views_per_shard: int = setting(10, section=DATA, ge=1, le=MAX_VIEWS, help="Views per shard: each image is decoded once per shard.")
    repair: bool = setting(False, section=DATA, flags=("--repair",),
                           help="Recompute shards that verify finds damaged.")
    class_map: Optional[str] = setting(  # file or "imagenet1k": dataset class -> teacher class
        None, section=DATA,
        help="When the teacher's classes are not the dataset's: a JSON file {folder name: teacher class index}, "
             "'name index' lines, or 'imagenet1k' (folders named by ImageNet synset).")
    read_retries: int = setting(4, section=RUNTIME, cli=False, ge=1, le=100,  # tries of a failing read before its shard waits
                                help="Tries of a failing read (I/O) before its shard is given up for this run.")
    retry_wait: float = setting(0.5, section=RUNTIME, cli=False, ge=0, le=3600,
                                help="Seconds before the first retry of a read; doubles each time.")
    progress: bool = setting(True, section=RUNTIME, cli=False, help="A progress bar (the CLI's --quiet turns it off).")
    compile: bool | str = setting(  # a string: the torch.compile backend; labels are the same
        False, section=TEACHER, flags=("--compile",), cli_type=(bool, False),
        help="torch.compile the teacher (faster on GPUs; the labels are the same within fp32 noise, and verify "
             "accepts them against eager).")
    renderer: str = setting("auto", section=RUNTIME, choices=RENDERERS, help=RENDERER_HELP)
    render_kernel: str = setting("auto", section=RUNTIME, choices=RENDER_KERNELS, help=RENDER_KERNEL_HELP)
    claim_lease: float = setting(CLAIM_LEASE, section=RUNTIME, ge=1,
                                 help="Seconds a shard claim stays valid without its writer refreshing it; then "
                                      "another run takes the shard over (a killed or preempted writer's).")

    __post_init__ = check_settings
