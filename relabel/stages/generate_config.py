"""``GenerateConfig``: stage one's settings, each written once (default, help, --help section, flags).

Light on purpose (no torch): the CLI builds ``relabel generate`` from these fields at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from relabel.runtime import default_workers
from relabel.settings import DEVICE_HELP, RENDERER_HELP, setting
from relabel.storage.claims import CLAIM_LEASE

DATA, TEACHER, RUNTIME = "Data and store", "Teacher", "Runtime"


@dataclass
class GenerateConfig:
    data: str = setting(help="ImageFolder tree or webdataset shards (folder, glob, brace pattern).", section=DATA,
                        argument=True)
    out: str = setting(help="Label store folder (created, or resumed).", section=DATA, flags=("--out", "-o"))
    teacher: str | list[str] = setting(  # several: an ensemble averaging their probabilities
        "tresnet_l_v2", section=TEACHER, cli_type=(List[str], ["tresnet_l_v2"]),
        help="timm model name or alias (tresnet_l_v2 = USI's teacher); repeat it for an ensemble (the average of "
             "the members' probabilities).")
    teacher_checkpoint: str | list[str] | None = setting(  # one per teacher
        None, section=TEACHER, cli_type=(List[str], []),
        help="Teacher weights, one per --teacher; default: timm's pretrained download.")
    teacher_weight: list[float] | None = setting(None, section=TEACHER, cli_type=(List[float], []),
                                                 help="Ensemble: one weight per --teacher (default: equal).")
    teacher_own_size: bool = setting(False, section=TEACHER, flags=("--teacher-own-size",),
                                     help="Ensemble: each member sees the view resized to its own input size.")
    views: int = setting(10, section=DATA, help="Views per sample; a larger value on an existing store adds views.")
    topk: int = setting(10, section=DATA, help="Classes kept per view.")
    recipe: str = setting("usi", section=DATA, help="Augmentation recipe: usi, simple, or a .yaml/.json file.")
    seed: int = setting(0, section=DATA, help="Seed of every view.")
    img_size: Optional[int] = setting(None, section=DATA, help="Teacher input size (default: the teacher's own).")
    batch_size: int = setting(128, section=RUNTIME, help="Teacher batch size.")
    workers: int = setting(section=RUNTIME, default_factory=default_workers,
                           help="DataLoader workers (decode + views).")
    device: str = setting("auto", section=RUNTIME, help=DEVICE_HELP)
    precision: str = setting("auto", section=TEACHER,
                             help="auto (fp16 autocast on CUDA, as USI ran its teacher; fp32 on CPU), fp32, fp16 or bf16.")
    encoding: str = setting("q8", section=DATA, help="Stored values: q8 (1 byte, ~2e-4 nats KL), f16 or f32.")
    samples_per_shard: int = setting(16384, section=DATA,
                                     help="Samples per shard (a multiple of the recipe's mix group); larger reads faster.")
    views_per_shard: int = setting(10, section=DATA, help="Views per shard: each image is decoded once per shard.")
    repair: bool = setting(False, section=DATA, flags=("--repair",),
                           help="Recompute shards that verify finds damaged.")
    class_map: Optional[str] = setting(  # file or "imagenet1k": dataset class -> teacher class
        None, section=DATA,
        help="When the teacher's classes are not the dataset's: a JSON file {folder name: teacher class index}, "
             "'name index' lines, or 'imagenet1k' (folders named by ImageNet synset).")
    read_retries: int = setting(4, section=RUNTIME, cli=False,  # tries of a failing read before its shard waits
                                help="Tries of a failing read (I/O) before its shard is given up for this run.")
    retry_wait: float = setting(0.5, section=RUNTIME, cli=False,
                                help="Seconds before the first retry of a read; doubles each time.")
    progress: bool = setting(True, section=RUNTIME, cli=False, help="A progress bar (the CLI's --quiet turns it off).")
    compile: bool | str = setting(  # a string: the torch.compile backend; labels are the same
        False, section=TEACHER, flags=("--compile",), cli_type=(bool, False),
        help="torch.compile the teacher (faster on GPUs; the labels are the same within fp32 noise, and verify "
             "accepts them against eager).")
    renderer: str = setting("auto", section=RUNTIME, help=RENDERER_HELP)
    claim_lease: float = setting(CLAIM_LEASE, section=RUNTIME,
                                 help="Seconds a shard claim stays valid without its writer refreshing it; then "
                                      "another run takes the shard over (a killed or preempted writer's).")
