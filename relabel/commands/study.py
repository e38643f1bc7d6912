"""``relabel study``: how many stored views are enough? Cached labels against online KD and supervised.

For one dataset and teacher, the same student is trained
- with cached labels replaying the first V stored views (``--views-limit V``) for V in ``views_list``
  at top-``topk`` (``--topk-limit k``), and at every top-k in ``topk_list`` (0: all classes) for V in
  ``topk_views`` (the ends of the V range by default: the default study takes 11 minutes on 2 CPU cores),
- online: the teacher in every step, its full softmax, fresh views every epoch (USI as published),
- supervised: ground truth only, fresh views every epoch,
over several seeds, with one loss for all KD runs (USI's: CE on the mixed ground truth + 5 x KL).
The store is generated once, with max(V) views at max(k); each cached run reads a prefix of it.

Writes ``results.json`` (every run, its command and the summary), ``results.md`` (mean ± std) and
``views.png`` (accuracy against V, with the online and supervised lines). A finished run is not
repeated when the study is run again with the same settings.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from relabel.settings import DEVICE_HELP, check_settings, device_name, setting
from relabel.storage import ConfigError
from relabel.storage.errors import named
from relabel.train.config import MODES

from .demo import two_workers
from .options import command_from, config_from_params


def _ints(name: str):
    """Parses an option's "1,2,4" into [1, 2, 4]."""
    def parse(text: str) -> list[int]:
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"{named(name)} takes comma-separated integers (got {text!r})") from None
    return parse


def _words(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _csv(values: list) -> str:
    return ",".join(map(str, values))


def _some(values: list) -> list:
    """A list setting that needs at least one item."""
    if not values:
        raise ValueError("a list of at least one item")
    return values


CSV = str, _csv  # typer parses the option as text, shown as "1,2,4"; the field holds the list


@dataclass
class StudyConfig:
    out: str = setting("relabel-study", flags=("--out", "-o"),
                       help="Folder for the data, teacher, labels, runs and results.")
    data: str | None = setting(  # an ImageFolder (or shards); None: the bundled digits
        None, flags=("--data",), help="Training ImageFolder (default: the bundled digits); with --val.")
    val: str | None = setting(None, flags=("--val",), help="Validation ImageFolder for --data.")
    teacher: str = setting("resnet18", help="Teacher model (timm name).")
    teacher_checkpoint: str | None = setting(  # None: train the teacher supervised first (as the demo does)
        None, help="Teacher weights; default: train the teacher supervised first.")
    teacher_epochs: int = setting(20, ge=1, help="Epochs of the teacher when it is trained here.")
    student: str = setting("test_resnet", help="Student model (timm name).")
    img_size: int = setting(32, ge=8, le=4096, help="Image size of teacher and student.")
    epochs: int = setting(8, ge=1, help="Student epochs (>= the largest V, so every stored view is replayed).")
    views_list: list[int] = setting(
        default_factory=lambda: [1, 2, 4, 8], cli_type=CSV, parse=_ints("views_list"), ge=1, check=_some,
        help="Stored views V replayed by the cached runs (for 16: --views-list 1,2,4,8,16 --topk-views 1,16 "
             "--epochs 16).")
    topk: int = setting(5, ge=0, help="Top-k of the cached runs at every V (0: all classes).")
    topk_list: list[int] = setting(  # swept at topk_views
        default_factory=lambda: [1, 0], cli_type=CSV, parse=_ints("topk_list"), ge=0,
        help="More top-k values (0: all classes), run at the V of --topk-views.")
    topk_views: list[int] = setting(default_factory=lambda: [1, 8], cli_type=CSV, parse=_ints("topk_views"), ge=1,
                                    help="The V at which every --topk-list value runs.")
    seeds: int = setting(2, ge=1, help="Seeds per setting (docs/results.md's table: 3).")
    modes: list[str] = setting(default_factory=lambda: ["cached", "online", "supervised"], cli_type=CSV,
                               parse=_words, choices=MODES, check=_some, help="Which students to train.")
    batch_size: int = setting(64, flags=("--batch-size", "-b"), ge=2, help="Batch size.")
    limit: int | None = setting(None, ge=20, help="Digits: use only the first N images (quick runs).")
    train_per_class: int | None = setting(  # val stays whole
        None, ge=1, help="Digits: train teacher and students on the first N training images of each class (a low-data "
                   "regime; val stays whole).")
    recipe: str | None = setting(  # default: the demo's digits recipe for the digits, usi otherwise
        None, help="Augmentation recipe (default: the demo's digits recipe for the digits, usi otherwise).")
    workers: int = setting(default_factory=two_workers, flags=("--workers", "-j"), ge=0,
                           help="DataLoader workers.")
    device: str = setting("auto", check=device_name, help=DEVICE_HELP)
    ce_weight: float = setting(1.0, cli=False, ge=0, help="Weight of the mixed ground-truth CE in every KD run.")
    kd_weight: float = setting(5.0, cli=False, ge=0, help="Weight of KL(teacher || student) in every KD run.")

    __post_init__ = check_settings


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check(cfg: StudyConfig) -> None:
    """What no single setting's limits say (those were checked when ``cfg`` was made)."""
    if (cfg.data is None) != (cfg.val is None):
        raise ConfigError("--data and --val go together (or neither: the bundled digits)")
    if max(cfg.views_list) > cfg.epochs and "cached" in cfg.modes:
        _say(f"note: --epochs {cfg.epochs} replays at most {cfg.epochs} of the {max(cfg.views_list)} stored views")


def run_study(cfg: StudyConfig) -> dict:
    import shutil

    from relabel.storage import LabelStore
    from relabel.train.loop import TrainConfig, train

    from .demo import DEMO_RECIPE, finished, make_labels, train_command_line, train_teacher, write_digits

    _check(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data is None:
        train_dir, val_dir = write_digits(out / "digits", cfg.img_size, cfg.limit, cfg.train_per_class)
        dataset = f"sklearn digits ({cfg.limit or 'all'} images) at {cfg.img_size} px"
        if cfg.train_per_class is not None:
            dataset = f"sklearn digits ({cfg.train_per_class} training images per class) at {cfg.img_size} px"
    else:
        train_dir, val_dir = Path(cfg.data), Path(cfg.val)
        dataset = f"{cfg.data} (val {cfg.val}) at {cfg.img_size} px"
    recipe = cfg.recipe
    if recipe is None:
        if cfg.data is None:
            recipe = str(out / "digits-recipe.yaml")
            Path(recipe).write_text(DEMO_RECIPE)
        else:
            recipe = "usi"
    # Short runs: one warmup epoch, no EMA (a 0.9998 average spans more steps than a run has).
    common = dict(img_size=cfg.img_size, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                  progress=False, log=False, warmup_epochs=1, model_ema=False)
    results: dict = {"config": asdict(cfg), "dataset": dataset, "runs": []}

    _say("[1/3] teacher:")
    if cfg.teacher_checkpoint is None:
        results["teacher"] = train_teacher(train_dir, val_dir, Path(recipe), out / "teacher", cfg.teacher,
                                           cfg.teacher_epochs, common)
        ckpt = out / "teacher" / "best.pth"
        _say(f"      teacher top-1 {results['teacher']['top1']:.2f}%")
    else:
        ckpt = Path(cfg.teacher_checkpoint)
        results["teacher"] = {"top1": None, "checkpoint": str(ckpt)}

    store = out / "labels.zarr"
    from relabel.storage import open_source

    n_classes = len(open_source(str(train_dir)).class_names)
    main_k = cfg.topk if cfg.topk > 0 else n_classes
    ks = sorted({k if k > 0 else n_classes for k in cfg.topk_list} | {main_k})
    if max(ks) > n_classes:
        raise ConfigError(f"--topk-list {max(ks)} is more than the {n_classes} classes")
    V = max(cfg.views_list)
    _say(f"[2/3] labels: {V} views at top-{max(ks)}, generated once:")
    results["generate"] = make_labels(train_dir, store, cfg.teacher, ckpt, V, max(ks), cfg.img_size, Path(recipe),
                                      cfg.workers, cfg.device)
    C = LabelStore.open(store).header.num_classes

    grid: list[tuple[str, int | None, int | None]] = []
    if "cached" in cfg.modes:
        views = sorted(set(cfg.views_list))
        grid += [("cached", v, main_k) for v in views]
        grid += [("cached", v, k) for k in ks if k != main_k for v in views if v in cfg.topk_views]
    grid += [(m, None, None) for m in ("online", "supervised") if m in cfg.modes]
    _say(f"[3/3] {len(grid)} student settings x {cfg.seeds} seed(s):")
    for seed in range(cfg.seeds):
        for mode, v, k in grid:
            name = f"{mode}-V{v}-k{k}-seed{seed}" if mode == "cached" else f"{mode}-seed{seed}"
            run = out / "runs" / name
            tcfg = TrainConfig(data=str(train_dir), labels=str(store), out=str(run), student=cfg.student, mode=mode,
                               val=str(val_dir), epochs=cfg.epochs, seed=seed, ce_weight=cfg.ce_weight,
                               kd_weight=cfg.kd_weight, smoothing=0.0,
                               views_limit=v if mode == "cached" and v < V else None,
                               topk_limit=k if mode == "cached" and k < max(ks) else None,
                               fresh_views=mode != "cached",
                               teacher=cfg.teacher if mode == "online" else None,
                               teacher_checkpoint=str(ckpt) if mode == "online" else None, **common)
            cmd = train_command_line(tcfg)
            _say(f"  {cmd}")
            t0 = time.perf_counter()
            last = finished(run, cfg.epochs)
            if last is None:
                if run.exists():
                    shutil.rmtree(run)
                last = train(tcfg).last
            wall = time.perf_counter() - t0
            results["runs"].append({"mode": mode, "views": v, "topk": k, "seed": seed, "top1": last["val_top1"],
                                    "ema_top1": last.get("ema_top1"), "seconds": wall, "command": cmd})
            _say(f"      {name}: top-1 {last['val_top1']:.2f}%  {wall:.1f}s")
    results["num_classes"] = C
    results["summary"] = summarize(results["runs"])
    results["table"] = table(results, ks, sorted(set(cfg.views_list)), C)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(results["table"] + "\n")
    plot(results, out / "views.png", C)
    return results


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and std of top-1 per (mode, views, topk) over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["mode"], r["views"], r["topk"]), []).append(r)
    out = []
    for (mode, v, k), rs in groups.items():
        m, s = _mean_std([r["top1"] for r in rs])
        out.append({"mode": mode, "views": v, "topk": k, "top1_mean": m, "top1_std": s, "n": len(rs),
                    "seconds_mean": statistics.mean(r["seconds"] for r in rs)})
    return out


def table(results: dict, ks: list[int], views: list[int], C: int) -> str:
    summ = {(s["mode"], s["views"], s["topk"]): s for s in results["summary"]}
    fmt = lambda s: f"{s['top1_mean']:.2f} ± {s['top1_std']:.2f}" if s else "-"  # noqa: E731
    rows = ["| student | " + " | ".join(f"V={v}" for v in views) + " | fresh views |",
            "|---|" + "---|" * (len(views) + 1)]
    for k in ks:
        if any(("cached", v, k) in summ for v in views):
            label = f"cached, top-{k}" + (" (all classes)" if k == C else "")
            rows.append(f"| {label} | " + " | ".join(fmt(summ.get(("cached", v, k))) for v in views) + " | - |")
    for mode, label in (("online", "online KD (full softmax)"), ("supervised", "supervised")):
        if (mode, None, None) in summ:
            rows.append(f"| {label} | " + " | ".join("-" for _ in views) + f" | {fmt(summ[(mode, None, None)])} |")
    t = results.get("teacher") or {}
    n = max((s["n"] for s in results["summary"]), default=0)
    foot = f"\nval top-1 (%), mean ± std over {n} seed(s)"
    if t.get("top1") is not None:
        foot += f"; teacher {results['config']['teacher']}: {t['top1']:.2f}"
    return "\n".join(rows) + foot


def plot(results: dict, path: Path, C: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    summ = results["summary"]
    for i, k in enumerate(sorted({s["topk"] for s in summ if s["mode"] == "cached"})):
        pts = sorted((s["views"], s["top1_mean"], s["top1_std"]) for s in summ if s["mode"] == "cached" and s["topk"] == k)
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, fmt="o-", capsize=3, color=f"C{i}",
                    label=f"cached, top-{k}" + (" (all)" if k == C else ""))
    for mode, color, label in (("online", "C3", "online KD, full softmax, fresh views"),
                               ("supervised", "C7", "supervised, fresh views")):
        s = next((s for s in summ if s["mode"] == mode), None)
        if s:
            ax.axhline(s["top1_mean"], color=color, ls="--", label=label)
            ax.axhspan(s["top1_mean"] - s["top1_std"], s["top1_mean"] + s["top1_std"], color=color, alpha=0.12)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="stored views per image (V)", ylabel="val top-1 (%)", title=f"student on {results['dataset']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _study(params: dict) -> None:
    cfg = config_from_params(StudyConfig, params)
    r = run_study(cfg)
    typer.echo(r["table"])
    typer.echo(f"results: {Path(cfg.out) / 'results.md'}, {Path(cfg.out) / 'results.json'}, plot: "
               f"{Path(cfg.out) / 'views.png'}")


study_command = command_from(StudyConfig, _study, "study_command",
                             "Accuracy against the number of stored views: cached labels vs online KD vs supervised.")
