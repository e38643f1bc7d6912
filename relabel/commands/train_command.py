"""``relabel train``: the CLI face of relabel.train.loop (registered by relabel/commands/cli.py).

Settings a preset can set have no default here (None): ``resolve_config`` fills what the user did not
give from ``--preset``, then from the defaults, so an explicit option always wins over a preset.
``train_argv`` turns a TrainConfig back into the command line that makes it (the demo and the study
print it beside every run).
"""
from __future__ import annotations

import os
import shlex

import typer

from relabel.train.config import DEFAULTS, PRESETS, TrainConfig, preset_values

from .options import command_from, quiet


def shown(value) -> str:
    """A setting's value as --help writes it: on/off, 5 for 5.0, 2e-3 for 0.002 (the shorter form)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        plain, sci = repr(value), f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
        return sci if float(sci) == value and len(sci) <= len(plain) else plain
    return str(value)


def _help(name: str, text: str) -> str:
    """Fill ``{default}`` (the fallback) and ``{<preset>}`` (each preset's value) into the help of a
    setting a preset can set: the values are written once, on the field and in the preset."""
    if name not in DEFAULTS:
        return text
    by_preset = {p: shown(preset_values(p).get(name)) for p in PRESETS}
    return text.format(default=shown(DEFAULTS[name]), **by_preset)


def _train(params: dict) -> None:
    from relabel.train.loop import train

    cfg = config_from_params(params)
    r = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        best = f", best val top-1 {r.best_top1:.2f}" if r.best_top1 is not None else ""
        typer.echo(f"trained {r.epochs_done} epoch(s) of {cfg.student} ({cfg.mode}) on {r.matched} of "
                   f"{r.num_samples} labelled samples{best} -> {cfg.out}", err=True)


# Built from TrainConfig's fields (relabel/train/config.py): each setting is written once, there.
train_command = command_from(TrainConfig, _train, "train_command",
                             "Stage two: train a timm student from the stored views and their cached soft labels.",
                             extra=(quiet(),), help_format=_help)


def config_from_params(params: dict):
    """The TrainConfig that ``relabel train`` with these parsed parameters runs."""
    from relabel.commands.options import config_from_params as make

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
