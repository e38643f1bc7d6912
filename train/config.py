"""Stage two's settings: ``TrainConfig``, its presets and defaults, and the checks that run before
any data is read.

Settings that a preset can set default to None in ``TrainConfig``; ``resolve_config`` fills them
from the preset (``PRESETS``), then from ``DEFAULTS``: a value given explicitly always wins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from relabel.runtime import default_workers
from relabel.storage.errors import ConfigError, setting
from relabel.storage.paths import is_inside

MODES = ("cached", "online", "supervised")
KD_TARGETS = ("full", "topk")
CLIP_MODES = ("norm", "value", "agc")

# What a setting is when neither the user nor a preset gave it.
DEFAULTS = dict(kd_weight=1.0, ce_weight=0.0, smoothing=0.1, model_ema=True, model_ema_decay=0.9998,
                model_ema_decay_batch=0, model_ema_warmup=True, opt="adamw", lr=2e-3, weight_decay=2e-2,
                warmup_epochs=5.0, warmup_lr=1e-4, min_lr=1e-6, aug_repeats=1, eval_crop_pct=None)

# What USI's train.py (Alibaba-MIIL/Solving_ImageNet, timm 0.5.4) sets; README's table compares each value.
PRESETS = {
    "usi": dict(ce_weight=1.0, kd_weight=5.0, smoothing=0.0, model_ema=True, model_ema_decay=0.99996,
                model_ema_decay_batch=1024, model_ema_warmup=False, opt="adamw", lr=2e-3, weight_decay=2e-2,
                warmup_epochs=5.0, warmup_lr=1e-4, min_lr=1e-6, aug_repeats=3, eval_crop_pct=0.95),
}


@dataclass
class TrainConfig:
    data: str
    labels: str | None  # None: supervised from scratch, views from `recipe` (a teacher, say)
    out: str
    student: str = "deit_s"
    val: str | None = None
    mode: str = "cached"
    preset: str | None = None  # "usi": USI's recipe for every setting below that is None
    epochs: int = 300
    stop_epoch: int | None = None  # end this invocation after this epoch; the schedule still spans `epochs`
    batch_size: int = 128
    img_size: int | None = None  # default: the store's (the teacher's) size
    teacher: str | None = None  # online: default the store's teacher
    teacher_checkpoint: str | list[str] | None = None  # one per member of the store's ensemble
    device: str = "auto"
    resume: bool = False
    allow_subset: bool = False
    pretrained: bool = False
    drop: float | None = None
    drop_path: float | None = None
    opt: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float = 0.9
    warmup_epochs: float | None = None
    warmup_lr: float | None = None
    min_lr: float | None = None
    model_ema: bool | None = None
    model_ema_decay: float | None = None
    model_ema_decay_batch: int | None = None  # the global batch `model_ema_decay` is for (0: as given)
    model_ema_warmup: bool | None = None
    clip_grad: float | None = None
    clip_mode: str = "norm"
    smoothing: float | None = None
    kd_weight: float | None = None
    ce_weight: float | None = None
    kd_temperature: float = 1.0
    kd_renorm: bool = False
    kd_target: str | None = None  # online: "full" (default) or "topk"; cached is always the stored top-k
    fresh_views: bool = False  # online/supervised: new views every epoch instead of the stored ones
    aug_repeats: int | None = None  # R views of about N/R samples per epoch (USI: 3)
    views_limit: int | None = None  # replay only the first V stored views
    topk_limit: int | None = None  # use only the first k of the stored top-k (the rest joins the rest bin)
    eval_crop_pct: float | None = None  # default: the student's pretrained_cfg crop_pct
    amp: bool | None = None  # None: on for CUDA
    amp_dtype: str = "bfloat16"
    channels_last: bool = True
    workers: int = field(default_factory=default_workers)
    seed: int = 42
    recipe: str = "usi"  # without --labels: the views' recipe; one fresh view per epoch
    allow_pixel_drift: bool = False  # train even if views render differently here than in stage one
    compile: bool | str = False  # torch.compile the student (and an online teacher); a string: the backend
    renderer: str = "auto"  # pillow (in workers), torch (on the device), auto: torch on CUDA; same bytes
    progress: bool = True
    log: bool = True


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """A copy with every None setting filled: from the preset first, then from DEFAULTS."""
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise ConfigError(f"unknown {setting('preset')} {cfg.preset!r}; use one of {', '.join(PRESETS)}")
    preset = PRESETS.get(cfg.preset, {})
    fill = {k: preset.get(k, v) for k, v in DEFAULTS.items() if getattr(cfg, k) is None}
    if cfg.kd_target is None:
        fill["kd_target"] = "full" if cfg.mode == "online" else "topk"
    return replace(cfg, **fill)


# Settings a resumed run must share with the checkpoint to continue the same run.
# The schedule (epochs, lr, ...) is restored from the checkpoint, so a new value would be silently ignored.
# The loss and the weight average are part of the run too: a preset or temperature given only on resume
# would change them mid-run.
_RESUME_KEYS = ("student", "mode", "seed", "batch_size", "img_size", "opt", "model_ema", "amp_dtype", "kd_target",
                "aug_repeats", "views_limit", "topk_limit", "fresh_views", "epochs", "lr", "weight_decay",
                "warmup_epochs", "warmup_lr", "min_lr", "preset", "kd_weight", "ce_weight", "smoothing",
                "kd_temperature", "kd_renorm", "model_ema_decay", "model_ema_decay_batch", "model_ema_warmup",
                "eval_crop_pct", "drop", "drop_path", "momentum", "clip_grad", "clip_mode")


def _validate(cfg: TrainConfig) -> None:
    """Refuse bad settings before any data is read (``cfg`` resolved)."""
    if cfg.mode not in MODES:
        raise ConfigError(f"unknown {setting('mode')} {cfg.mode!r}; use one of {', '.join(MODES)}")
    from relabel.views import resolve_renderer

    resolve_renderer(cfg.renderer, None)
    if cfg.labels and is_inside(cfg.out, cfg.labels):  # checkpoints would be published with the labels
        raise ConfigError(f"{cfg.out}: {setting('out')} lies inside the label store {cfg.labels}; put the run elsewhere")
    fin = lambda x: x is not None and math.isfinite(x)  # noqa: E731
    opt_fin = lambda x: x is None or math.isfinite(x)  # noqa: E731
    for name, ok, rule in (
            ("epochs", cfg.epochs >= 1, ">= 1"), ("batch_size", cfg.batch_size >= 1, ">= 1"),
            ("workers", cfg.workers >= 0, ">= 0"),
            ("kd_temperature", fin(cfg.kd_temperature) and cfg.kd_temperature > 0, "finite and > 0"),
            ("lr", fin(cfg.lr) and cfg.lr > 0, "finite and > 0"),
            ("weight_decay", fin(cfg.weight_decay) and cfg.weight_decay >= 0, "finite and >= 0"),
            ("momentum", fin(cfg.momentum) and cfg.momentum >= 0, "finite and >= 0"),
            ("warmup_epochs", fin(cfg.warmup_epochs) and cfg.warmup_epochs >= 0, "finite and >= 0"),
            ("warmup_lr", fin(cfg.warmup_lr) and cfg.warmup_lr >= 0, "finite and >= 0"),
            ("min_lr", fin(cfg.min_lr) and cfg.min_lr >= 0, "finite and >= 0"),
            ("smoothing", fin(cfg.smoothing) and 0 <= cfg.smoothing < 1, "in [0, 1)"),
            ("kd_weight", fin(cfg.kd_weight) and cfg.kd_weight >= 0, "finite and >= 0"),
            ("ce_weight", fin(cfg.ce_weight) and cfg.ce_weight >= 0, "finite and >= 0"),
            ("drop", opt_fin(cfg.drop) and (cfg.drop is None or 0 <= cfg.drop < 1), "in [0, 1)"),
            ("drop_path", opt_fin(cfg.drop_path) and (cfg.drop_path is None or 0 <= cfg.drop_path < 1), "in [0, 1)"),
            ("clip_grad", opt_fin(cfg.clip_grad) and (cfg.clip_grad is None or cfg.clip_grad > 0), "finite and > 0"),
            ("model_ema_decay", fin(cfg.model_ema_decay) and 0 <= cfg.model_ema_decay <= 1, "in [0, 1]"),
            ("model_ema_decay_batch", cfg.model_ema_decay_batch >= 0, ">= 0 (0: the decay as given)"),
            ("eval_crop_pct", opt_fin(cfg.eval_crop_pct) and (cfg.eval_crop_pct is None or 0 < cfg.eval_crop_pct <= 1),
             "in (0, 1]"),
            ("aug_repeats", cfg.aug_repeats >= 1, ">= 1"),
            ("views_limit", cfg.views_limit is None or cfg.views_limit >= 1, ">= 1"),
            ("topk_limit", cfg.topk_limit is None or cfg.topk_limit >= 1, ">= 1"),
            ("stop_epoch", cfg.stop_epoch is None or cfg.stop_epoch >= 1, ">= 1"),
            ("img_size", cfg.img_size is None or 8 <= cfg.img_size <= 4096, "between 8 and 4096")):
        if not ok:
            raise ConfigError(f"{setting(name)} must be {rule} (got {getattr(cfg, name)})")
    if cfg.clip_mode not in CLIP_MODES:
        raise ConfigError(f"{setting('clip_mode')} must be one of {', '.join(CLIP_MODES)} (got {cfg.clip_mode!r})")
    if cfg.kd_target not in KD_TARGETS:
        raise ConfigError(f"{setting('kd_target')} must be one of {', '.join(KD_TARGETS)} (got {cfg.kd_target!r})")
    from relabel.models import resolve_name

    resolve_name(cfg.student)  # an unknown model fails before any data is read
    if cfg.amp_dtype not in ("bfloat16", "float16"):
        raise ConfigError(f"{setting('amp_dtype')} must be bfloat16 or float16 (got {cfg.amp_dtype!r})")
    if cfg.mode != "online" and (cfg.teacher or cfg.teacher_checkpoint):
        raise ConfigError(f"{setting('teacher')}/{setting('teacher_checkpoint')} are for {setting('mode', 'online')} "
                        f"only")
    if cfg.labels is None and cfg.mode != "supervised":
        raise ConfigError(f"{setting('mode', cfg.mode)} needs {setting('labels')}, a label store (only "
                        f"{setting('mode', 'supervised')} trains without labels)")
    if cfg.mode != "supervised" and cfg.kd_weight == 0 and cfg.ce_weight == 0:
        raise ConfigError(f"{setting('kd_weight')} and {setting('ce_weight')} are both 0: nothing to train on")
    if cfg.mode == "cached" and cfg.kd_target == "full":
        raise ConfigError(f"{setting('kd_target', 'full')} needs the teacher in the loop ({setting('mode', 'online')}): "
                        f"cached labels are the "
                        "stored top-k + rest")
    if cfg.mode == "cached" and cfg.fresh_views:
        raise ConfigError(f"{setting('fresh_views', True)} needs {setting('mode', 'online')} or supervised: "
                        f"cached labels exist for stored views only")
    if cfg.topk_limit is not None and cfg.mode == "online" and cfg.kd_target == "full":
        raise ConfigError(f"{setting('topk_limit')} truncates top-k targets; online's default target is the full "
                        f"softmax (add {setting('kd_target', 'topk')})")
