"""``relabel bench``'s settings: ``BenchConfig`` (each setting written once, with its limits) and the parts."""
from __future__ import annotations

from dataclasses import dataclass


from relabel.settings import DEVICE_HELP, check_settings, device_name, setting



PARTS = ("step", "loader", "labels", "generate", "size", "scale", "precision", "feed")


@dataclass
class BenchConfig:
    student: str = setting("deit_s", help="Student model.")
    teacher: str = setting("tresnet_l_v2", help="Teacher model (random weights: speed does not depend on them).")
    batch_size: int = setting(16, ge=2, help="Batch size.")
    img_size: int = setting(224, ge=8, le=4096, help="Image size.")
    device: str = setting("auto", check=device_name, help=DEVICE_HELP)
    precision: str = setting("auto", choices=("auto", "fp32", "fp16", "bf16"), help="Teacher precision in generate: auto, fp32, fp16, bf16.")
    repeats: int = setting(5, ge=1, help="Timed repeats per contender (interleaved).")
    workers: int = setting(2, ge=0, help="DataLoader workers.")
    label_views: int = setting(1_000_000, ge=1, help="labels: views in the on-disk store.")
    scale_views: int = setting(10_000_000, ge=1, help="scale: views written.")
    gen_images: int = setting(32, ge=1, help="generate: images.")  # each gets gen_views views
    gen_views: int = setting(4, ge=1, help="generate: views per image.")
    steps: int = setting(3, ge=1, help="step: train steps per timed repeat.")
    teacher_checkpoint: str | None = setting(  # random weights understate the noise
        None, help="precision: trained teacher weights (random ones understate).")
    data: str | None = setting(  # default: synthetic JPEGs
        None, help="precision: an ImageFolder whose views the teacher sees.")
    compile_backend: str = setting("inductor", help="step/generate: torch.compile backend of the compiled "
                                                    "contenders (none: skip them).")
    feed_images: int = setting(  # two mix groups, one per worker
        128, ge=2, help="feed: ImageNet-like JPEGs (~500x375, q90).")
    feed_views: int = setting(10, ge=1, help="feed: stage-one views per image (one shard block).")
    sweep_students: int = setting(5, ge=1, help="sweep: students trained from one label set.")  # S students x E epochs
    sweep_epochs: int = setting(300, ge=1, help="sweep: epochs per student.")
    sweep_views: int = setting(10, ge=1, help="sweep: stored views per image.")
    sweep_images: int = setting(1_281_167, ge=1, help="sweep: training images (default: ImageNet-1k).")
    num_classes: int = setting(1000, cli=False, ge=2, help="Classes of the synthetic labels.")

    __post_init__ = check_settings
