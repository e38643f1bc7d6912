"""``relabel bench``: the performance numbers, measured side by side.

Each part runs its contenders in one process, interleaved over repeats (so drift in machine load
hits all of them alike), and reports median and spread. Speed does not depend on weights: models
without a checkpoint are randomly initialised.
"""
from __future__ import annotations

import inspect
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import typer

from ..options import command_from
from .config import PARTS, BenchConfig
from .costmodel import _cost_model_markdown
from .feed import bench_feed
from .generate import bench_generate, bench_precision
from .labels import bench_labels, bench_scale, bench_size
from .step import bench_loader, bench_step, trainer_with_batches


# ------------------------------------------------------------------------------------ driver
_RUNNERS = {"step": bench_step, "loader": bench_loader, "labels": bench_labels, "generate": bench_generate,
            "size": bench_size, "scale": None, "precision": bench_precision, "feed": bench_feed}


def _scale_child(cfg: BenchConfig, tmp: str, q) -> None:
    q.put(bench_scale(cfg, tmp))


def run_bench(parts: list[str], cfg: BenchConfig, json_out: str | None = None) -> dict:
    import multiprocessing as mp

    results: dict = {"machine": machine(cfg), "config": asdict(cfg)}
    with tempfile.TemporaryDirectory(prefix="relabel-bench-") as tmp:
        for part in parts:
            t0 = time.perf_counter()
            if part == "scale":  # a fresh process, so peak RSS is the writer's own
                ctx = mp.get_context("spawn")
                q = ctx.Queue()
                p = ctx.Process(target=_scale_child, args=(cfg, tmp, q))
                p.start()
                results[part] = q.get()
                p.join()
            else:
                results[part] = _RUNNERS[part](cfg, tmp)
            results[part]["bench_seconds"] = time.perf_counter() - t0
            print(f"bench {part}: done in {results[part]['bench_seconds']:.1f}s", file=sys.stderr, flush=True)
    if "step" in results and "generate" in results:
        results["sweep"] = sweep(cfg, results)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(results, indent=2))
        Path(json_out).with_suffix(".md").write_text(markdown(results) + "\n")
    return results


def sweep(cfg: BenchConfig, results: dict) -> dict:
    """End-to-end cost of S students x E epochs on N images from measured per-image costs: cached
    runs the teacher V x N times (stage one, whole pipeline) and then the cheap step S x E x N times;
    online pays the teacher inside every one of the S x E x N steps."""
    S, E, V, N = cfg.sweep_students, cfg.sweep_epochs, cfg.sweep_views, cfg.sweep_images
    t_gen = 1 / results["generate"]["views_per_s"]  # s per stored view
    t_cached, t_online = 1 / results["step"]["cached_img_s"], 1 / results["step"]["online_img_s"]
    stage_one, cached_steps, online = V * N * t_gen, S * E * N * t_cached, S * E * N * t_online
    gain = t_online - t_cached  # what one student-epoch-image saves by not running the teacher
    return {"students": S, "epochs": E, "views": V, "images": N, "s_per_view_generate": t_gen,
            "s_per_img_cached_step": t_cached, "s_per_img_online_step": t_online,
            "cached_hours": (stage_one + cached_steps) / 3600, "cached_stage_one_hours": stage_one / 3600,
            "online_hours": online / 3600, "online_vs_cached": online / (stage_one + cached_steps),
            "break_even_student_epochs": V * t_gen / gain if gain > 0 else float("inf")}


def machine(cfg: BenchConfig) -> dict:
    import torch

    dev = "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "device": dev,
            "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None, "torch": torch.__version__,
            "python": platform.python_version()}


_TARGETS = {  # (key, target, direction)
    "step": [("supervised_img_s", None, ""), ("cached_img_s", None, ""), ("online_img_s", None, ""),
             ("cached_vs_supervised", 0.97, ">="), ("cached_vs_online", 1.7, ">=")],
    "loader": [("supervised_img_s", None, ""), ("cached_img_s", None, ""), ("ratio", 0.97, ">="),
               ("view_img_s", None, ""), ("timm_transform_img_s", None, ""), ("view_vs_timm", 1.0, ">=")],
    "labels": [("epoch_views_per_s", 5e6, ">="), ("random_views_per_s", 1e5, ">=")],
    "generate": [("views_per_s", None, ""), ("teacher_only_views_per_s", None, ""), ("ratio", 0.85, ">=")],
    "size": [(f"{m}_k{k}", 24 if (m == "bytes_per_view" and k == 10) else (1e-3 if m == "kl_loss" else None),
              "<=") for k in (5, 10, 20) for m in ("bytes_per_view", "kl_loss", "kl_full")],
    "scale": [("views", None, ""), ("views_per_s", None, ""), ("peak_rss_mib", 1024, "<=")],
    "precision": [(f"{p}_{m}", None, "") for p in ("bf16", "fp16") for m in ("max_err", "mean_err", "vs_q8",
                                                                               "top1_agree")],
    "feed": [("stage1_views_per_s_per_worker", None, ""), ("stage1_scaling", None, ""),
             ("stage2_img_per_s_per_worker", None, ""), ("stage2_scaling", None, ""),
             ("stage1_views_per_s_all_workers", None, ""), ("stage1_torch_views_per_s_all_workers", None, ""),
             ("stage2_img_per_s_all_workers", None, ""), ("stage2_torch_img_per_s_all_workers", None, ""),
             ("torch_finish_ms_per_batch", None, ""), ("torch_finish_ops_per_view", None, ""),
             ("torch_render_kernel_auto", None, ""),  # and each kernel's (views.kernels.KERNELS) on the same batch
             *((f"torch_finish_{m}_{k}", None, "") for k in ("matmul", "taps") for m in ("ms_per_batch", "ops_per_view")),
             ("torch_payload_take_ms_per_batch", None, ""), ("torch_payload_fresh_ms_per_batch", None, ""),
             ("stage2_digest_check_cost", 0.03, "<="), ("stage2_parquet_vs_folder", 0.9, ">="),
             ("stage1_other_rule", None, ""), ("stage1_other_rule_views_emulated", None, ""),
             ("stage1_other_rule_vs_native", None, ""), ("rule_emulation_views_affected", None, ""),
             ("rule_emulation_ms_per_view_native", None, ""), ("rule_emulation_ms_per_view_other", None, ""),
             ("rule_emulation_cost", None, "")],
    "sweep": [("cached_hours", None, ""), ("online_hours", None, ""), ("online_vs_cached", None, ""),
              ("break_even_student_epochs", None, "")],
}
_TARGETS["step"] += [("compiled_cached_img_s", None, ""), ("compiled_vs_eager_cached", None, "")]
_TARGETS["generate"] += [("compiled_teacher_only_views_per_s", None, ""), ("compiled_vs_eager", None, "")]
_TARGETS["size"] += [("bytes_per_view_k10_correlated", 16, "<="), ("kl_loss_k10_correlated", 1e-3, "<="),
                     ("bytes_per_view_k10_correlated_mixed", None, ""), ("bytes_per_view_k10_correlated_best_codec", None, "")]


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cores']} CPU cores ({m['cpu']}), device {m['device']}"
             f"{' (' + m['gpu'] + ')' if m['gpu'] else ''}, torch {m['torch']}.",
             "", "| part | metric | value | target | met |", "|---|---|---|---|---|"]
    for part, rows in _TARGETS.items():
        if part not in results:
            continue
        for key, target, op in rows:
            v = results[part].get(key)
            if v is None:
                continue
            met = "" if target is None else ("yes" if (v >= target if op == ">=" else v <= target) else "**no**")
            val = v if isinstance(v, str) else f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
            lines.append(f"| {part} | {key} | {val} | {'' if target is None else f'{op} {target:g}'} | {met} |")
    model = results.get("feed", {}).get("cost_model")
    if model:
        lines += ["", *_cost_model_markdown(model)]
    return "\n".join(lines)


def _bench(params: dict) -> None:
    from relabel.storage import ConfigError

    part, json_out = params.pop("part"), params.pop("json_out")
    cfg = BenchConfig(**params)
    parts = list(PARTS) if part == "all" else part.split(",")  # step,generate: also the sweep, from both
    if any(p not in PARTS for p in parts):
        raise ConfigError(f"unknown bench part {part!r}; use one of {', '.join(PARTS)} or all")
    if os.path.isdir(json_out):
        raise ConfigError(f"--json {json_out}: is a folder; give a file name such as {os.path.join(json_out, 'bench.json')}")
    r = run_bench(parts, cfg, json_out)
    typer.echo(markdown(r))
    typer.echo(f"wrote {json_out} and {Path(json_out).with_suffix('.md')}")


def _bench_extras() -> tuple[inspect.Parameter, ...]:
    """The part to run and where results go: what to do, not how (no BenchConfig field)."""
    kw = inspect.Parameter.KEYWORD_ONLY
    return (inspect.Parameter("part", kw, annotation=str, default=typer.Argument(
                "all", help=f"One of {', '.join(PARTS)}, several joined by commas, or all (step and generate "
                            f"together add the sweep).")),
            inspect.Parameter("json_out", kw, annotation=str, default=typer.Option(
                "bench.json", "--json", help="Results JSON (a markdown table goes beside it).")))


bench_command = command_from(BenchConfig, _bench, "bench_command", "Measure stage one, stage two and the store side "
                                                                   "by side; write JSON and a markdown table.",
                             extra=_bench_extras())


__all__ = ["BenchConfig", "PARTS", "bench_command", "run_bench", "markdown", "trainer_with_batches"]
