"""``relabel train``: the CLI face of relabel.train.loop (registered by relabel/commands/cli.py).

Settings a preset can set have no default here (None): ``resolve_config`` fills what the user did not
give from ``--preset``, then from the defaults, so an explicit option always wins over a preset.
``train_argv`` turns a TrainConfig back into the command line that makes it (the demo and the study
print it beside every run).
"""
from __future__ import annotations

import os
import shlex
from typing import List, Optional

import typer

from relabel.commands.options import TRAIN_SECTIONS, with_sections
from relabel.runtime import default_workers


def train_command(
    data: str = typer.Argument(..., help="Training images: ImageFolder tree or webdataset shards."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Label store made by 'relabel generate' from these images (needed unless --mode supervised)."),
    out: str = typer.Option(..., "--out", "-o", help="Run folder: last.pth, best.pth, metrics.jsonl, curves.png."),
    student: str = typer.Option("deit_s", "--student", "--model", help="timm model name or alias (deit_s, r50, ...)."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation images (same classes as the labels)."),
    mode: str = typer.Option("cached", help="cached (stored labels), online (teacher in the loop), supervised (ground truth)."),
    preset: Optional[str] = typer.Option(None, help="usi: USI's train.py settings (loss weights, smoothing 0, EMA, optimizer, schedule, --aug-repeats 3); options given explicitly win."),
    epochs: int = typer.Option(300, help="Epochs; the cosine schedule spans them."),
    stop_epoch: Optional[int] = typer.Option(None, help="End this invocation after this epoch (continue with --resume)."),
    batch_size: int = typer.Option(128, "--batch-size", "-b", help="Batch per process (even when the recipe mixes)."),
    img_size: Optional[int] = typer.Option(None, help="Train and eval size (default: the store's)."),
    teacher: Optional[str] = typer.Option(None, help="Online mode: teacher model (default: the store's)."),
    teacher_checkpoint: List[str] = typer.Option([], help="Online mode: teacher weights (one per member when the "
                                                 "labels came from an ensemble, in order)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    allow_subset: bool = typer.Option(False, "--allow-subset", help="Train on the images that have labels when DATA is not the labelled dataset."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start from timm's pretrained weights."),
    drop: Optional[float] = typer.Option(None, help="Dropout rate (timm's drop_rate)."),
    drop_path: Optional[float] = typer.Option(None, help="Drop-path rate."),
    opt: Optional[str] = typer.Option(None, help="Optimizer (timm name) [default: adamw]."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: 2e-3, USI's at batch 1024]."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay, not on norms and biases [default: 2e-2]."),
    momentum: float = typer.Option(0.9, help="Momentum (SGD-like optimizers)."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warmup epochs [default: 5]."),
    warmup_lr: Optional[float] = typer.Option(None, help="Learning rate at the start of warmup [default: 1e-4]."),
    min_lr: Optional[float] = typer.Option(None, help="Cosine floor [default: 1e-6]."),
    model_ema: Optional[bool] = typer.Option(None, "--model-ema/--no-model-ema", help="Keep an EMA of the weights, evaluated too [default: on]."),
    model_ema_decay: Optional[float] = typer.Option(None, help="EMA decay per step [default: 0.9998; usi: 0.99996 at batch 1024]."),
    model_ema_decay_batch: Optional[int] = typer.Option(None, help="Global batch the EMA decay is for: scaled as decay ** (batch x processes / this) [default: 0, as given; usi: 1024]."),
    model_ema_warmup: Optional[bool] = typer.Option(None, "--model-ema-warmup/--no-model-ema-warmup", help="timm's EMA warmup (a shorter average early on) [default: on; usi: off]."),
    clip_grad: Optional[float] = typer.Option(None, help="Clip gradients at this value."),
    clip_mode: str = typer.Option("norm", help="norm, value or agc."),
    smoothing: Optional[float] = typer.Option(None, help="Label smoothing of the ground-truth CE [default: 0.1; usi: 0]."),
    kd_weight: Optional[float] = typer.Option(None, help="Weight of KL(teacher || student) [default: 1; usi: 5]."),
    ce_weight: Optional[float] = typer.Option(None, help="Weight of the mixed ground-truth CE in cached/online modes [default: 0; usi: 1]."),
    kd_temperature: float = typer.Option(1.0, help="KD temperature: the whole target (top-k + rest, or online the full softmax) and the student divided by T, loss x T^2."),
    kd_renorm: bool = typer.Option(False, "--kd-renorm", help="Renormalize over the top-k only (drop the rest mass)."),
    kd_target: Optional[str] = typer.Option(None, help="Online: full (the teacher's whole softmax, USI; default) or topk (the stored top-k + rest, before rounding)."),
    fresh_views: bool = typer.Option(False, "--fresh-views", help="Online/supervised: new views every epoch (beyond the stored ones, same recipe and seed), as USI draws them."),
    aug_repeats: Optional[int] = typer.Option(None, help="Repeated augmentation: about N/R samples x R different views per epoch [default: 1; usi: 3]."),
    views_limit: Optional[int] = typer.Option(None, help="Replay only the first V stored views."),
    topk_limit: Optional[int] = typer.Option(None, help="Use only the first k of the stored top-k classes (their mass joins the rest)."),
    eval_crop_pct: Optional[float] = typer.Option(None, help="Validation center-crop fraction [default: the student's; usi: 0.95]."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (default: on for CUDA)."),
    amp_dtype: str = typer.Option("bfloat16", help="bfloat16 or float16."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="channels_last memory format."),
    workers: int = typer.Option(default_workers(), "--workers", "-j", help="DataLoader workers."),
    seed: int = typer.Option(42, help="Seed: student init, view schedule, batch order, dropout."),
    recipe: str = typer.Option("usi", help="Without --labels: augmentation recipe of the views (usi, simple, or a file)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the student (and the online teacher)."),
    renderer: str = typer.Option("auto", help="auto (torch on CUDA, Pillow on CPU), pillow (views rendered in the DataLoader workers) or torch (workers decode and cut the crop's region; the views render on the device). Both give the same bytes."),
    allow_pixel_drift: bool = typer.Option(False, "--allow-pixel-drift", help="Train even when this machine renders "
                                           "the store's canonical views differently than stage one did."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Stage two: train a timm student from the stored views and their cached soft labels."""
    params = dict(locals())
    from relabel.train.loop import train

    cfg = config_from_params(params)
    r = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        best = f", best val top-1 {r.best_top1:.2f}" if r.best_top1 is not None else ""
        typer.echo(f"trained {r.epochs_done} epoch(s) of {cfg.student} ({cfg.mode}) on {r.matched} of "
                   f"{r.num_samples} labelled samples{best} -> {cfg.out}", err=True)


with_sections(train_command, TRAIN_SECTIONS)


def config_from_params(params: dict):
    """The TrainConfig that ``relabel train`` with these parsed parameters runs."""
    from relabel.commands.options import config_from_params as make

    from relabel.train.loop import TrainConfig

    # --teacher-checkpoint is repeatable: one path per ensemble member
    return make(TrainConfig, params, one_or_list=("teacher_checkpoint",))


def _click_command():
    import typer.main

    app = typer.Typer()
    app.command()(train_command)
    return typer.main.get_command(app)


def parse_train_argv(argv: list[str]):
    """The TrainConfig a ``relabel train ...`` argument list (without ``relabel train``) runs."""
    cmd = _click_command()
    ctx = cmd.make_context("train", list(argv))
    return config_from_params(ctx.params)


def train_argv(cfg) -> list[str]:
    """``relabel train`` arguments that make ``cfg`` (None and default values left out); display
    settings (progress, log) have no effect on the result and are not written."""
    return argv_for(_click_command(), cfg)


def argv_for(cmd, cfg, always: tuple[str, ...] = ("workers",)) -> list[str]:
    """The arguments of click command ``cmd`` that set every field of ``cfg`` it has an option for.

    Options whose value is None or the option's default are left out, except ``always`` (whose
    default depends on the machine). Arguments come first, in order.
    """
    args: list[str] = []
    opts: list[str] = []
    for p in cmd.params:
        if p.name in ("quiet",) or not hasattr(cfg, p.name):
            continue
        v = getattr(cfg, p.name)
        if p.param_type_name == "argument":
            args.append(str(v))
            continue
        if getattr(p, "multiple", False):  # a repeatable option: one occurrence per value
            vals = list(v) if isinstance(v, (list, tuple)) else ([] if v is None else [v])
            if vals != list(p.default or []):
                for x in vals:
                    opts += [p.opts[0], str(x)]
            continue
        if v is None or (v == p.default and p.name not in always):
            continue
        if p.is_flag and isinstance(v, bool):
            flag = p.opts[0] if v else (p.secondary_opts[0] if p.secondary_opts else None)
            if flag is None:
                raise ValueError(f"no option turns {p.name} off")
            opts.append(flag)
        else:
            opts += [p.opts[0], str(v)]
    return args + opts


def format_command(*args) -> str:
    return "relabel " + " ".join(shlex.quote(str(a)) for a in args)
