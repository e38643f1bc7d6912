"""Stage two's settings: ``TrainConfig``, its presets and defaults, and the checks that run before
any data is read.

Settings that a preset can set default to None in ``TrainConfig``; ``resolve_config`` fills them
from the preset (a function in ``PRESETS``), then from their fallback (``DEFAULTS``): a value given
explicitly always wins.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, List, Optional

from relabel.runtime import default_workers
from relabel.settings import (DEVICE_HELP, MAX_IMG_SIZE, MAX_SEED, RENDER_KERNEL_HELP, RENDER_KERNELS, RENDERER_HELP,
                              RENDERERS, check_settings, device_name, fallbacks_of,
                              resume_keys_of, setting)
from relabel.storage.errors import ConfigError, named
from relabel.storage.paths import is_inside

MODES = ("cached", "online", "supervised")
KD_TARGETS = ("full", "topk")
CLIP_MODES = ("norm", "value", "agc")
AMP_DTYPES = ("bfloat16", "float16")

DATA, MODE, MODEL, OPTIM, EMA, RUNTIME = ("Data and labels", "Mode and loss", "Model", "Optimizer and schedule",
                                          "Weight EMA", "Runtime")


@dataclass
class TrainConfig:
    """Stage two's settings, each written once: its default, its ``relabel train`` option and help,
    and ``resume=True`` when a resumed run must keep it. A setting with a ``fallback`` defaults to
    None: ``--preset`` fills it, else the fallback (``{default}``/``{usi}`` in its help show both)."""
    data: str = setting(help="Training images: ImageFolder tree, webdataset shards or Hugging Face parquet.", section=DATA,
                        argument=True)
    labels: str | None = setting(  # None: supervised from scratch, views from `recipe` (a teacher, say)
        section=DATA, flags=("--labels",), cli_type=(Optional[str], None),
        help="Label store made by 'relabel generate' from these images (needed unless --mode supervised).")
    out: str = setting(help="Run folder: last.pth, best.pth, metrics.jsonl, curves.png.", section=DATA,
                       flags=("--out", "-o"))
    student: str = setting("deit_s", section=MODEL, flags=("--student", "--model"), resume=True,
                           help="timm model name or alias (deit_s, r50, ...).")
    val: str | None = setting(None, section=DATA, flags=("--val",),
                              help="Validation images (same classes as the labels).")
    mode: str = setting("cached", section=MODE, resume=True, choices=MODES,
                        help="cached (stored labels), online (teacher in the loop), supervised (ground truth).")
    preset: str | None = setting(
        None, section=MODE, resume=True,
        help="usi: USI's train.py settings (loss weights, smoothing 0, EMA, optimizer, schedule, --aug-repeats 3); "
             "options given explicitly win.")
    epochs: int = setting(300, section=OPTIM, resume=True, ge=1, help="Epochs; the cosine schedule spans them.")
    stop_epoch: int | None = setting(  # the schedule still spans `epochs`
        None, section=OPTIM, ge=1, help="End this invocation after this epoch (continue with --resume).")
    batch_size: int = setting(128, section=OPTIM, flags=("--batch-size", "-b"), resume=True, ge=1,
                              help="Batch per process (even when the recipe mixes).")
    img_size: int | None = setting(None, section=DATA, resume=True, ge=8, le=MAX_IMG_SIZE,
                                   help="Train and eval size (default: the store's).")
    teacher: str | None = setting(None, section=MODE, help="Online mode: teacher model (default: the store's).")
    teacher_checkpoint: str | list[str] | None = setting(  # one per member of the store's ensemble
        None, section=MODE, cli_type=(List[str], []),
        help="Online mode: teacher weights (one per member when the labels came from an ensemble, in order).")
    device: str = setting("auto", section=RUNTIME, check=device_name, help=DEVICE_HELP)
    resume: bool = setting(False, section=RUNTIME, flags=("--resume",),
                           help="Continue the run in --out exactly where it stopped.")
    allow_subset: bool = setting(
        False, section=DATA, flags=("--allow-subset",),
        help="Train on the images that have labels when DATA is not the labelled dataset.")
    pretrained: bool = setting(False, section=MODEL, flags=("--pretrained",),
                               help="Start from timm's pretrained weights.")
    drop: float | None = setting(None, section=MODEL, resume=True, ge=0, lt=1, help="Dropout rate (timm's drop_rate).")
    drop_path: float | None = setting(None, section=MODEL, resume=True, ge=0, lt=1, help="Drop-path rate.")
    opt: str | None = setting(None, section=OPTIM, fallback="adamw", resume=True,
                              help="Optimizer (timm name) [default: {default}].")
    lr: float | None = setting(None, section=OPTIM, fallback=2e-3, resume=True, gt=0,
                               help="Peak learning rate [default: {default}, USI's at batch 1024].")
    weight_decay: float | None = setting(None, section=OPTIM, fallback=2e-2, resume=True, ge=0,
                                         help="Weight decay, not on norms and biases [default: {default}].")
    momentum: float = setting(0.9, section=OPTIM, resume=True, ge=0, help="Momentum (SGD-like optimizers).")
    warmup_epochs: float | None = setting(None, section=OPTIM, fallback=5.0, resume=True, ge=0,
                                          help="Linear warmup epochs [default: {default}].")
    warmup_lr: float | None = setting(None, section=OPTIM, fallback=1e-4, resume=True, ge=0,
                                      help="Learning rate at the start of warmup [default: {default}].")
    min_lr: float | None = setting(None, section=OPTIM, fallback=1e-6, resume=True, ge=0,
                                   help="Cosine floor [default: {default}].")
    model_ema: bool | None = setting(None, section=EMA, flags=("--model-ema/--no-model-ema",), fallback=True,
                                     resume=True, help="Keep an EMA of the weights, evaluated too [default: {default}].")
    model_ema_decay: float | None = setting(None, section=EMA, fallback=0.9998, resume=True, ge=0, le=1,
                                            help="EMA decay per step [default: {default}; usi: {usi} at batch 1024].")
    model_ema_decay_batch: int | None = setting(  # the global batch `model_ema_decay` is for (0: as given)
        None, section=EMA, fallback=0, resume=True, ge=0,
        help="Global batch the EMA decay is for: scaled as decay ** (batch x processes / this) [default: {default}, "
             "as given; usi: {usi}].")
    model_ema_warmup: bool | None = setting(
        None, section=EMA, flags=("--model-ema-warmup/--no-model-ema-warmup",), fallback=True, resume=True,
        help="timm's EMA warmup (a shorter average early on) [default: {default}; usi: {usi}].")
    clip_grad: float | None = setting(None, section=OPTIM, resume=True, gt=0, help="Clip gradients at this value.")
    clip_mode: str = setting("norm", section=OPTIM, resume=True, choices=CLIP_MODES, help="norm, value or agc.")
    smoothing: float | None = setting(None, section=MODE, fallback=0.1, resume=True, ge=0, lt=1,
                                      help="Label smoothing of the ground-truth CE [default: {default}; usi: {usi}].")
    kd_weight: float | None = setting(None, section=MODE, fallback=1.0, resume=True, ge=0,
                                      help="Weight of KL(teacher || student) [default: {default}; usi: {usi}].")
    ce_weight: float | None = setting(
        None, section=MODE, fallback=0.0, resume=True, ge=0,
        help="Weight of the mixed ground-truth CE in cached/online modes [default: {default}; usi: {usi}].")
    kd_temperature: float = setting(
        1.0, section=MODE, resume=True, gt=0,
        help="KD temperature: the whole target (top-k + rest, or online the full softmax) and the student divided "
             "by T, loss x T^2.")
    kd_renorm: bool = setting(False, section=MODE, flags=("--kd-renorm",), resume=True,
                              help="Renormalize over the top-k only (drop the rest mass).")
    kd_target: str | None = setting(  # cached is always the stored top-k
        None, section=MODE, resume=True, choices=KD_TARGETS,
        help="Online: full (the teacher's whole softmax, USI; default) or topk (the stored top-k + rest, before "
             "rounding).")
    fresh_views: bool = setting(  # instead of the stored ones
        False, section=DATA, flags=("--fresh-views",), resume=True,
        help="Online/supervised: new views every epoch (beyond the stored ones, same recipe and seed), as USI draws "
             "them.")
    aug_repeats: int | None = setting(
        None, section=DATA, fallback=1, resume=True, ge=1,
        help="Repeated augmentation: about N/R samples x R different views per epoch [default: {default}; usi: {usi}].")
    views_limit: int | None = setting(None, section=DATA, resume=True, ge=1, help="Replay only the first V stored views.")
    topk_limit: int | None = setting(  # the rest joins the rest bin
        None, section=DATA, resume=True, ge=1,
        help="Use only the first k of the stored top-k classes (their mass joins the rest).")
    eval_crop_pct: float | None = setting(  # no fallback value: the student's pretrained_cfg crop_pct
        None, section=DATA, fallback=None, resume=True, gt=0, le=1,
        help="Validation center-crop fraction [default: the student's; usi: {usi}].")
    amp: bool | None = setting(None, section=RUNTIME, flags=("--amp/--no-amp",),
                               help="Mixed precision (default: on for CUDA).")
    amp_dtype: str = setting("bfloat16", section=RUNTIME, resume=True, choices=AMP_DTYPES, help="bfloat16 or float16.")
    channels_last: bool = setting(True, section=MODEL, flags=("--channels-last/--no-channels-last",),
                                  help="channels_last memory format.")
    workers: int = setting(section=RUNTIME, default_factory=default_workers, flags=("--workers", "-j"), ge=0,
                           help="DataLoader workers.")
    seed: int = setting(42, section=RUNTIME, resume=True, ge=0, le=MAX_SEED, help="Seed: student init, view schedule, batch order, dropout.")
    recipe: str = setting(  # one fresh view per epoch
        "usi", section=DATA, help="Without --labels: augmentation recipe of the views (usi, simple, or a file).")
    allow_pixel_drift: bool = setting(
        False, section=DATA, flags=("--allow-pixel-drift",),
        help="Train even when this machine renders the store's canonical views differently than stage one did.")
    compile: bool | str = setting(  # a string: the torch.compile backend
        False, section=MODEL, flags=("--compile",), cli_type=(bool, False),
        help="torch.compile the student (and the online teacher).")
    renderer: str = setting("auto", section=RUNTIME, choices=RENDERERS, help=RENDERER_HELP)
    render_kernel: str = setting("auto", section=RUNTIME, choices=RENDER_KERNELS, help=RENDER_KERNEL_HELP)
    progress: bool = setting(True, section=RUNTIME, cli=False, help="A progress bar (the CLI's --quiet turns it off).")
    log: bool = setting(True, section=RUNTIME, cli=False, help="Log each epoch's line.")

    __post_init__ = check_settings


# What a setting with a fallback is when neither the user nor a preset gave it.
DEFAULTS = fallbacks_of(TrainConfig)

# Settings a resumed run must share with the checkpoint to continue the same run.
# The schedule (epochs, lr, ...) is restored from the checkpoint, so a new value would be silently ignored.
# The loss and the weight average are part of the run too: a preset or temperature given only on resume
# would change them mid-run.
_RESUME_KEYS = resume_keys_of(TrainConfig)


def _unset(cfg: TrainConfig, **values) -> TrainConfig:
    """``cfg`` with ``values`` in the settings it left None (what the user gave wins)."""
    return replace(cfg, **{k: v for k, v in values.items() if getattr(cfg, k) is None})


def usi(cfg: TrainConfig) -> TrainConfig:
    """What USI's train.py sets (Alibaba-MIIL/Solving_ImageNet, timm 0.5.4); docs/guide.md's table compares
    each value."""
    return _unset(cfg, ce_weight=1.0, kd_weight=5.0, smoothing=0.0, model_ema=True, model_ema_decay=0.99996,
                  model_ema_decay_batch=1024, model_ema_warmup=False, opt="adamw", lr=2e-3, weight_decay=2e-2,
                  warmup_epochs=5.0, warmup_lr=1e-4, min_lr=1e-6, aug_repeats=3, eval_crop_pct=0.95)


# Presets by name: functions that fill the settings a config left None and return the config.
PRESETS: dict[str, Callable[[TrainConfig], TrainConfig]] = {"usi": usi}


def register_preset(name: str, preset: Callable[[TrainConfig], TrainConfig]) -> None:
    """Make ``--preset NAME`` (``TrainConfig(preset=NAME)``) apply ``preset``: a function that fills
    settings the config left None (what the user gave wins even if it does not) and returns it."""
    if not name or name == "default" or not callable(preset):
        raise ConfigError(f"a preset needs a name other than 'default' and a function (got {name!r}, {preset!r})")
    PRESETS[name] = preset


def preset_values(name: str) -> dict:
    """The settings preset ``name`` fills, with their values (what it sets on an empty config)."""
    blank = TrainConfig(data="", labels=None, out="")
    filled = PRESETS[name](blank)
    return {k: getattr(filled, k) for k in DEFAULTS if getattr(filled, k) is not None}


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """A copy with every None setting filled: from the preset first, then from DEFAULTS."""
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise ConfigError(f"unknown {named('preset')} {cfg.preset!r}; use one of {', '.join(PRESETS)}")
    if cfg.preset is not None:  # the preset fills; what the user gave stays as given
        given = {f.name: getattr(cfg, f.name) for f in fields(cfg) if getattr(cfg, f.name) is not None}
        cfg = replace(PRESETS[cfg.preset](cfg), **given)
    fill = {k: v for k, v in DEFAULTS.items() if getattr(cfg, k) is None}
    if cfg.kd_target is None:
        fill["kd_target"] = "full" if cfg.mode == "online" else "topk"
    return replace(cfg, **fill)


def _validate(cfg: TrainConfig) -> None:
    """Refuse settings that no single setting's limits rule out (those were checked when ``cfg`` was
    made) before any data is read (``cfg`` resolved)."""
    if cfg.labels and is_inside(cfg.out, cfg.labels):  # checkpoints would be published with the labels
        raise ConfigError(f"{cfg.out}: {named('out')} lies inside the label store {cfg.labels}; put the run elsewhere")
    from relabel.models import resolve_name

    resolve_name(cfg.student)  # an unknown model fails before any data is read
    if cfg.mode != "online" and (cfg.teacher or cfg.teacher_checkpoint):
        raise ConfigError(f"{named('teacher')}/{named('teacher_checkpoint')} are for {named('mode', 'online')} "
                        f"only")
    if cfg.labels is None and cfg.mode != "supervised":
        raise ConfigError(f"{named('mode', cfg.mode)} needs {named('labels')}, a label store (only "
                        f"{named('mode', 'supervised')} trains without labels)")
    if cfg.mode != "supervised" and cfg.kd_weight == 0 and cfg.ce_weight == 0:
        raise ConfigError(f"{named('kd_weight')} and {named('ce_weight')} are both 0: nothing to train on")
    if cfg.mode == "cached" and cfg.kd_target == "full":
        raise ConfigError(f"{named('kd_target', 'full')} needs the teacher in the loop ({named('mode', 'online')}): "
                        f"cached labels are the "
                        "stored top-k + rest")
    if cfg.mode == "cached" and cfg.fresh_views:
        raise ConfigError(f"{named('fresh_views', True)} needs {named('mode', 'online')} or supervised: "
                        f"cached labels exist for stored views only")
    if cfg.topk_limit is not None and cfg.mode == "online" and cfg.kd_target == "full":
        raise ConfigError(f"{named('topk_limit')} truncates top-k targets; online's default target is the full "
                        f"softmax (add {named('kd_target', 'topk')})")
