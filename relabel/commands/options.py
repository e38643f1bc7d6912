"""Typer commands generated from config records: each setting is written once, on its field.

``command_from`` builds a command's options from a config dataclass's ``relabel.settings`` fields
(help, flags, --help section, default); ``config_from_params`` turns the parsed values back into
the config. This module stays light so ``--help`` imports no torch.
"""
from __future__ import annotations

import inspect
from dataclasses import MISSING
from typing import Any, Callable, get_type_hints

from relabel.settings import sections_of, settings_of

def quiet() -> inspect.Parameter:
    """A long-running command's --quiet (sets the config's `progress` to False); one per command, as
    each command places it in its own --help panel."""
    import typer

    return inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                             default=typer.Option(False, "--quiet", "-q", help="No progress bar."))

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
    for f, md in settings_of(config_cls):
        if md["parse"] is not None and isinstance(params.get(f.name), str):
            params[f.name] = md["parse"](params[f.name])
    return config_cls(**params)


def command_from(config_cls, body: Callable[[dict], Any], name: str, doc: str,
                 extra: tuple[inspect.Parameter, ...] = (), help_format: Callable[[str, str], str] | None = None):
    """A typer command whose options are ``config_cls``'s fields (their ``relabel.settings`` records:
    help, flags, section, typer type and default), then ``extra`` (e.g. --quiet). ``body(params)``
    runs it with the parsed values by name; ``help_format(field, help)`` may fill a help text in.
    ``name``: the function's name (typer's default command name)."""
    import typer

    hints = get_type_hints(config_cls)
    params = []
    for f, md in settings_of(config_cls):
        if not md["cli"]:
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else ...)
        annotation = hints[f.name]
        if md["cli_type"] is not None:
            annotation, shown = md["cli_type"]
            default = shown(default) if callable(shown) else shown
        text = help_format(f.name, md["help"]) if help_format else md["help"]
        info = (typer.Argument(default, help=text) if md["argument"]
                else typer.Option(default, *md["flags"], help=text))
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))
    params += list(extra)

    def command(**values):
        return body(values)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = doc
    command.__name__ = command.__qualname__ = name
    return with_sections(command, sections_of(config_cls))
