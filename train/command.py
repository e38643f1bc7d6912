"""``relabel train``: the CLI face of train.loop (registered by relabel/cli.py)."""
from __future__ import annotations

import os
from typing import Optional

import typer


def train_command(
    data: str = typer.Argument(..., help="Training images: ImageFolder tree or webdataset shards."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Label store made by 'relabel generate' from these images (needed unless --mode supervised)."),
    out: str = typer.Option(..., "--out", "-o", help="Run folder: last.pth, best.pth, metrics.jsonl, curves.png."),
    student: str = typer.Option("deit_s", "--student", "--model", help="timm model name or alias (deit_s, r50, ...)."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation images (same classes as the labels)."),
    mode: str = typer.Option("cached", help="cached (stored labels), online (teacher in the loop), supervised (ground truth)."),
    epochs: int = typer.Option(300, help="Epochs; the cosine schedule spans them."),
    stop_epoch: Optional[int] = typer.Option(None, help="End this invocation after this epoch (continue with --resume)."),
    batch_size: int = typer.Option(128, "--batch-size", "-b", help="Batch per process (even when the recipe mixes)."),
    img_size: Optional[int] = typer.Option(None, help="Train and eval size (default: the store's)."),
    teacher: Optional[str] = typer.Option(None, help="Online mode: teacher model (default: the store's)."),
    teacher_checkpoint: Optional[str] = typer.Option(None, help="Online mode: teacher weights."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    allow_subset: bool = typer.Option(False, "--allow-subset", help="Train on the images that have labels when DATA is not the labelled dataset."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start from timm's pretrained weights."),
    drop: Optional[float] = typer.Option(None, help="Dropout rate (timm's drop_rate)."),
    drop_path: Optional[float] = typer.Option(None, help="Drop-path rate."),
    opt: str = typer.Option("adamw", help="Optimizer (timm name)."),
    lr: float = typer.Option(2e-3, help="Peak learning rate (USI: 2e-3 at batch 1024)."),
    weight_decay: float = typer.Option(2e-2, help="Weight decay (not on norms and biases)."),
    momentum: float = typer.Option(0.9, help="Momentum (SGD-like optimizers)."),
    warmup_epochs: float = typer.Option(5, help="Linear warmup epochs."),
    warmup_lr: float = typer.Option(1e-4, help="Learning rate at the start of warmup."),
    min_lr: float = typer.Option(1e-6, help="Cosine floor."),
    model_ema: bool = typer.Option(True, "--model-ema/--no-model-ema", help="Keep an EMA of the weights (evaluated too)."),
    model_ema_decay: float = typer.Option(0.9998, help="EMA decay (with warmup)."),
    clip_grad: Optional[float] = typer.Option(None, help="Clip gradients at this value."),
    clip_mode: str = typer.Option("norm", help="norm, value or agc."),
    smoothing: float = typer.Option(0.1, help="Label smoothing of the ground-truth CE."),
    kd_weight: float = typer.Option(1.0, help="Weight of KL(teacher || student)."),
    ce_weight: float = typer.Option(0.0, help="Weight of the mixed ground-truth CE in cached/online modes (USI: 1 with --kd-weight 5)."),
    kd_temperature: float = typer.Option(1.0, help="KD temperature (T != 1 drops the rest mass)."),
    kd_renorm: bool = typer.Option(False, "--kd-renorm", help="Renormalize over the top-k only (drop the rest mass)."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision (default: on for CUDA)."),
    amp_dtype: str = typer.Option("bfloat16", help="bfloat16 or float16."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last", help="channels_last memory format."),
    workers: int = typer.Option(min(8, os.cpu_count() or 1), "--workers", "-j", help="DataLoader workers."),
    seed: int = typer.Option(42, help="Seed: student init, view schedule, batch order, dropout."),
    recipe: str = typer.Option("usi", help="Without --labels: augmentation recipe of the views (usi, simple, or a file)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Stage two: train a timm student from the stored views and their cached soft labels."""
    from .loop import TrainConfig, train

    cfg = TrainConfig(
        data=data, labels=labels, out=out, student=student, val=val, mode=mode, epochs=epochs, stop_epoch=stop_epoch,
        batch_size=batch_size, img_size=img_size, teacher=teacher, teacher_checkpoint=teacher_checkpoint,
        device=device, resume=resume, allow_subset=allow_subset, pretrained=pretrained, drop=drop,
        drop_path=drop_path, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum,
        warmup_epochs=warmup_epochs, warmup_lr=warmup_lr, min_lr=min_lr, model_ema=model_ema,
        model_ema_decay=model_ema_decay, clip_grad=clip_grad, clip_mode=clip_mode, smoothing=smoothing,
        kd_weight=kd_weight, ce_weight=ce_weight, kd_temperature=kd_temperature, kd_renorm=kd_renorm, amp=amp,
        amp_dtype=amp_dtype, channels_last=channels_last, workers=workers, seed=seed, recipe=recipe,
        progress=not quiet)
    r = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        best = f", best val top-1 {r['best_top1']:.2f}" if r.get("best_top1") is not None else ""
        typer.echo(f"trained {r['epochs_done']} epoch(s) of {cfg.student} ({cfg.mode}) on {r['matched']} of "
                   f"{r['num_samples']} labelled samples{best} -> {cfg.out}", err=True)
