"""Helpers shared by the typer commands: a config record is the single source of its settings.

The commands declare their options beside the config dataclass they fill (a test checks that every
option's default is the field's default); these helpers turn parsed options into the config and sort
the options into the config's topic sections for ``--help``.
"""
from __future__ import annotations

import inspect

# The --help panels of the two stages. A test checks that every field of each config is in exactly one
# section (the configs live with the torch code; this module stays light so --help imports no torch).
# relabel.generate.GenerateConfig's fields by topic
GENERATE_SECTIONS = {
    "Data and store": ("data", "out", "views", "topk", "recipe", "seed", "img_size", "encoding", "samples_per_shard",
                       "views_per_shard", "repair", "class_map"),
    "Teacher": ("teacher", "teacher_checkpoint", "teacher_weight", "teacher_own_size", "precision", "compile"),
    "Runtime": ("batch_size", "workers", "device", "renderer", "read_retries", "retry_wait", "claim_lease", "progress"),
}

# relabel.train.loop.TrainConfig's fields by topic
TRAIN_SECTIONS = {
    "Data and labels": ("data", "labels", "out", "val", "allow_subset", "img_size", "eval_crop_pct", "recipe",
                        "views_limit", "topk_limit", "fresh_views", "aug_repeats", "allow_pixel_drift"),
    "Mode and loss": ("mode", "preset", "teacher", "teacher_checkpoint", "kd_weight", "ce_weight", "smoothing",
                      "kd_temperature", "kd_renorm", "kd_target"),
    "Model": ("student", "pretrained", "drop", "drop_path", "compile", "channels_last"),
    "Optimizer and schedule": ("epochs", "stop_epoch", "batch_size", "opt", "lr", "weight_decay", "momentum",
                               "warmup_epochs", "warmup_lr", "min_lr", "clip_grad", "clip_mode"),
    "Weight EMA": ("model_ema", "model_ema_decay", "model_ema_decay_batch", "model_ema_warmup"),
    "Runtime": ("device", "renderer", "amp", "amp_dtype", "workers", "seed", "resume", "progress", "log"),
}


def with_sections(command, sections: dict[str, tuple[str, ...]] | None = None, other: str = "Output"):
    """Ready typer function ``command``'s options for --help: each in the panel of its config section
    (options that set no config field, like --quiet, go to ``other``), and help texts shown as written
    (rich would take "[default: 2e-3]" for markup and drop it)."""
    try:
        from rich.markup import escape
    except ImportError:  # pragma: no cover - typer without rich prints help as written
        escape = str
    panel = {name: title for title, names in (sections or {}).items() for name in names}
    for name, p in inspect.signature(command).parameters.items():
        info = p.default
        if type(info).__name__ not in ("OptionInfo", "ArgumentInfo"):
            continue
        if info.help and not getattr(info, "_escaped", False):
            info.help, info._escaped = escape(info.help), True
        if sections and type(info).__name__ == "OptionInfo":
            info.rich_help_panel = panel.get(name, panel.get(_PROGRESS.get(name, ""), other))
    return command


_PROGRESS = {"quiet": "progress"}  # CLI switches that set a config field under another name


def config_from_params(config_cls, params: dict, lists: tuple[str, ...] = (), one_or_list: tuple[str, ...] = ()):
    """``config_cls`` from a command's parsed parameters. ``--quiet`` becomes ``progress=False``; a
    repeatable option given no times becomes None, otherwise a list (``lists``) or, given once, its
    single value (``one_or_list``)."""
    params = dict(params)
    if "quiet" in params:
        params["progress"] = not params.pop("quiet")
    for name in (*lists, *one_or_list):
        vals = list(params.get(name) or [])
        params[name] = None if not vals else vals[0] if len(vals) == 1 and name in one_or_list else vals
    return config_cls(**params)
