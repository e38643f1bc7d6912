"""Helpers shared by the typer commands: a config record is the single source of its settings.

The commands declare their options beside the config dataclass they fill (a test checks that every
option's default is the field's default); these helpers turn parsed options into the config and sort
the options into the config's topic sections for ``--help``.
"""
from __future__ import annotations

import inspect
from dataclasses import MISSING, fields
from typing import Any, Callable, get_type_hints

from relabel.generate_config import GenerateConfig
from relabel.settings import META, sections_of

# The --help panels of the stages. GenerateConfig's come from its fields' metadata (relabel.settings);
# TrainConfig's are still listed here (a test checks every field is in exactly one section). This
# module stays light so --help imports no torch.
GENERATE_SECTIONS = sections_of(GenerateConfig)


def _quiet():
    import typer

    return inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                             default=typer.Option(False, "--quiet", "-q", help="No progress bar."))


QUIET = _quiet()  # every long-running command's --quiet (sets the config's `progress` to False)

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


def command_from(config_cls, body: Callable[[dict], Any], doc: str, extra: tuple[inspect.Parameter, ...] = ()):
    """A typer command whose options are ``config_cls``'s fields (their ``relabel.settings`` metadata:
    help, flags, section, typer type and default), then ``extra`` (e.g. --quiet). ``body(params)``
    runs it with the parsed values by name."""
    import typer

    hints = get_type_hints(config_cls)
    params = []
    for f in fields(config_cls):
        md = f.metadata.get(META)
        if md is None or not md["cli"]:
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else ...)
        annotation = hints[f.name]
        if md["cli_type"] is not None:
            annotation, default = md["cli_type"]
        info = (typer.Argument(default, help=md["help"]) if md["argument"]
                else typer.Option(default, *md["flags"], help=md["help"]))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))
    params += list(extra)

    def command(**values):
        return body(values)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    return with_sections(command, sections_of(config_cls))
