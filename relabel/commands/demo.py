"""``relabel demo``: the whole pipeline on real images that ship with scikit-learn (no download).

scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) are written out as an
ImageFolder at 32 px with a train/val split. A teacher is trained supervised, ``generate`` labels
the training views with it, and a smaller student is trained three ways on the same views:
cached labels, the teacher in the loop (online: its full softmax, USI's loss), and ground truth only
(supervised). Every step prints the ``relabel`` command that reproduces it exactly (derived from the
very config object the step runs). ``relabel study`` (relabel/commands/study.py) reuses these pieces.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import typer

from relabel.settings import DEVICE_HELP, check_settings, device_name, setting
from relabel.train.config import MODES

from .options import command_from

def two_workers() -> int:
    """The demo's and the study's workers: two, fewer on a one-core machine (small images decode fast)."""
    return min(2, os.cpu_count() or 1)


@dataclass
class DemoConfig:
    out: str = setting("relabel-demo", flags=("--out", "-o"), help="Folder for the images, labels, runs and results.")
    seeds: int = setting(1, ge=1, help="Student runs per mode (3 gives mean ± std).")
    epochs: int = setting(8, ge=1, help="Student epochs (also the number of stored views).")
    teacher_epochs: int = setting(30, ge=1, help="Teacher epochs.")
    teacher: str = setting("resnet18", help="Teacher model (timm name).")
    student: str = setting("test_resnet",
                           help="Student model (timm name; timm's 0.4M-parameter test ResNet by default).")
    limit: int | None = setting(None, ge=100, help="Use only the first N images (quick runs; at least 100: a batch of every split).")  # None: all 1,797
    workers: int = setting(default_factory=two_workers, flags=("--workers", "-j"), ge=0, help="DataLoader workers.")
    device: str = setting("auto", check=device_name, help=DEVICE_HELP)
    img_size: int = setting(32, cli=False, ge=8, le=4096, help="Image size of teacher and student.")
    views: int = setting(8, cli=False, ge=1, help="Stored views per image (the command: --epochs).")
    topk: int = setting(5, cli=False, ge=1, help="Classes kept per view.")
    batch_size: int = setting(64, cli=False, ge=2, help="Batch size of teacher and students.")

    __post_init__ = check_settings


# USI's recipe, adapted to 32 px digits: no flips (a mirrored 3 is no 3), milder crops.
DEMO_RECIPE = "base: usi\nname: digits\nhflip: 0.0\nscale: [0.35, 1.0]\n"


def write_digits(root: Path, size: int, limit: int | None = None,
                 train_per_class: int | None = None) -> tuple[Path, Path]:
    """sklearn's digits as PNG files; every 5th image of each class goes to val (stratified);
    ``train_per_class``: keep only the first N training images of each class (val stays whole)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    train, val = root / "train", root / "val"
    for d in (train, val):  # written afresh: files of a run with other settings must not stay behind
        shutil.rmtree(d, ignore_errors=True)
    n = len(digits.images) if limit is None else min(limit, len(digits.images))
    seen, kept = np.zeros(10, int), np.zeros(10, int)
    for i in range(n):
        c = int(digits.target[i])
        to_val = seen[c] % 5 == 0
        seen[c] += 1
        if not to_val:
            if train_per_class is not None and kept[c] >= train_per_class:
                continue
            kept[c] += 1
        img = Image.fromarray((digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8), "L")
        img = img.resize((size, size), Image.Resampling.BICUBIC)
        d = (val if to_val else train) / str(c)
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"digit_{i:04d}.png")
    return train, val


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_command_line(cfg) -> str:
    """The ``relabel train`` command that runs exactly ``cfg`` (a TrainConfig)."""
    from relabel.commands.train_command import format_command, train_argv

    return format_command("train", *train_argv(cfg))


def generate_command_line(cfg) -> str:
    """The ``relabel generate`` command that runs exactly ``cfg`` (a GenerateConfig)."""
    import typer
    import typer.main

    from relabel.commands.stages import generate
    from relabel.commands.train_command import argv_for, format_command

    one = typer.Typer()
    one.command("generate")(generate)
    cmd = typer.main.get_command(one)  # the generate command alone: no import of the CLI (which imports demo)
    return format_command("generate", *argv_for(cmd, cfg))


def train_teacher(train_dir: Path, val_dir: Path, recipe: Path, run: Path, teacher: str, epochs: int, common: dict) -> dict:
    """The demo's teacher: trained supervised from scratch on fresh views (skipped if already trained)."""
    from relabel.train.loop import TrainConfig, train

    cfg = TrainConfig(data=str(train_dir), labels=None, out=str(run), student=teacher, mode="supervised",
                      val=str(val_dir), epochs=epochs, seed=0, recipe=str(recipe), **common)
    _say(f"  {train_command_line(cfg)}")
    t0 = time.perf_counter()
    last = finished(run, epochs)
    if last is None:  # a teacher cut short resumes (bit-exactly) instead of being taken half-trained
        r = train(replace(cfg, resume=(run / "last.pth").exists()))
        return {"top1": r.val_top1, "seconds": time.perf_counter() - t0}
    return {"top1": last["val_top1"], "seconds": None}


def make_labels(train_dir: Path, store: Path, teacher: str, checkpoint: Path, views: int, topk: int, img_size: int,
                recipe: Path, workers: int, device: str) -> dict:
    """Stage one over the training images with the trained teacher (resumes an existing store)."""
    from relabel.stages.generate import GenerateConfig, generate

    cfg = GenerateConfig(data=str(train_dir), out=str(store), teacher=teacher, teacher_checkpoint=str(checkpoint),
                         views=views, topk=topk, img_size=img_size, workers=workers, device=device, recipe=str(recipe),
                         samples_per_shard=1024, progress=False)
    _say(f"  {generate_command_line(cfg)}")
    s = generate(cfg)
    return {"views": s.num_samples * s.views, "seconds": s.seconds,
            "label_bytes_per_view": s.label_bytes_per_view, "config": asdict(cfg)}


def run_demo(cfg: DemoConfig) -> dict:
    from relabel.train.loop import TrainConfig, train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_dir, val_dir = write_digits(out / "digits", cfg.img_size, cfg.limit)
    recipe = out / "digits-recipe.yaml"
    recipe.write_text(DEMO_RECIPE)
    common = dict(img_size=cfg.img_size, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                  progress=False, log=False, warmup_epochs=1, model_ema=False)
    results: dict = {"config": cfg.__dict__, "runs": []}

    teacher_run = out / "teacher"
    _say("[1/3] teacher, supervised:")
    results["teacher"] = train_teacher(train_dir, val_dir, recipe, teacher_run, cfg.teacher, cfg.teacher_epochs, common)
    _say(f"      teacher top-1 {results['teacher']['top1']:.2f}%")

    store = out / "labels.zarr"
    _say("[2/3] labels, the teacher's only pass:")
    results["generate"] = make_labels(train_dir, store, cfg.teacher, teacher_run / "best.pth", cfg.views, cfg.topk,
                                      cfg.img_size, recipe, cfg.workers, cfg.device)
    _say(f"      {results['generate']['views']:,} views in {results['generate']['seconds']:.1f}s")

    _say("[3/3] student, three ways on the same views:")
    for seed in range(cfg.seeds):
        for mode in MODES:
            run = out / f"student-{mode}-seed{seed}"
            online = mode == "online"
            tcfg = TrainConfig(data=str(train_dir), labels=str(store), out=str(run), student=cfg.student, mode=mode,
                               val=str(val_dir), epochs=cfg.epochs, seed=seed,
                               teacher=cfg.teacher if online else None,
                               teacher_checkpoint=str(teacher_run / "best.pth") if online else None, **common)
            _say(f"  {train_command_line(tcfg)}")
            if (run / "last.pth").exists():
                shutil.rmtree(run)
            t0 = time.perf_counter()
            r = train(tcfg)
            wall = time.perf_counter() - t0
            results["runs"].append({"mode": mode, "seed": seed, "top1": r.val_top1, "seconds": wall,
                                    "train_seconds": sum(m["train_seconds"] for m in _history(run))})
            _say(f"      {mode:<10} seed {seed}: top-1 {r.val_top1:.2f}%  {wall:.1f}s")
    results["table"] = table(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(results["table"] + "\n")
    plot(results, out)
    return results


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def finished(run: Path, epochs: int) -> dict | None:
    """The last epoch's metrics of a run in ``run`` that trained all ``epochs``; None otherwise."""
    history = _history(run) if (run / "metrics.jsonl").exists() else []
    return history[-1] if history and history[-1]["epoch"] == epochs else None


def table(results: dict) -> str:
    rows = ["| mode | top-1 (%) | train time (s) | runs |", "|---|---|---|---|"]
    for mode in MODES:
        runs = [r for r in results["runs"] if r["mode"] == mode]
        if not runs:
            continue
        acc = [r["top1"] for r in runs]
        sec = [r["train_seconds"] for r in runs]
        pm = lambda xs, f: f"{statistics.mean(xs):{f}}" + (f" ± {statistics.stdev(xs):{f}}" if len(xs) > 1 else "")  # noqa: E731
        rows.append(f"| {mode} | {pm(acc, '.2f')} | {pm(sec, '.1f')} | {len(runs)} |")
    t = results.get("teacher", {})
    if t.get("top1") is not None:
        rows.append(f"| teacher ({results['config']['teacher']}) | {t['top1']:.2f} | - | 1 |")
    return "\n".join(rows)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results["runs"]:
        h = _history(out / f"student-{r['mode']}-seed{r['seed']}")
        ax.plot([m["epoch"] for m in h], [m["val_top1"] for m in h], "o-", alpha=0.8,
                color={"cached": "C0", "online": "C1", "supervised": "C2"}[r["mode"]],
                label=r["mode"] if r["seed"] == 0 else None)
    ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="student on sklearn digits")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def _demo(params: dict) -> None:
    cfg = DemoConfig(**params)
    r = run_demo(replace(cfg, views=cfg.epochs))  # one stored view per student epoch
    typer.echo(r["table"])
    typer.echo(f"results: {Path(cfg.out) / 'results.md'}, plot: {Path(cfg.out) / 'curves.png'}")


demo_command = command_from(DemoConfig, _demo, "demo_command", "Run the whole pipeline on real images that ship "
                                                                "with scikit-learn, and compare the three modes.")
