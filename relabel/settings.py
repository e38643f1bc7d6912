"""Config fields that are also command-line settings: each setting is written once, on its field.

A config dataclass (``GenerateConfig``, ``TrainConfig``, ...) declares its fields with
``setting(...)``: the default, the help text, the ``--help`` section, the flag names, whether a
resumed run must keep it. The command layer builds the typer command from these fields
(``relabel.commands.options.command_from``), so a new setting is one field. Plain data: this module
imports no typer.
"""
from __future__ import annotations

from dataclasses import MISSING, Field, field, fields
from typing import Any, Callable

META = "relabel"


def setting(default: Any = MISSING, *, help: str, section: str | None = None, flags: tuple[str, ...] = (),
            cli: bool = True, cli_type: Any = None, argument: bool = False, default_factory: Any = MISSING,
            fallback: Any = MISSING, resume: bool = False, parse: Callable[[str], Any] | None = None):
    """A config field with its command-line face.

    ``help`` and ``section`` (the --help panel; None: the plain "Options" panel), ``flags`` (option
    names, e.g. ("--out", "-o"); default: --field-name), ``cli=False`` for a setting the CLI does not
    expose, ``argument`` for a positional argument. ``cli_type``: when typer parses another type than
    the field's, (that type, the option's default, or a function of the field's default). ``parse``:
    turns that option's text into the field's value (e.g. "1,2,4" -> [1, 2, 4]). ``fallback``: the
    value of a field left None that no preset set (the field's default is then None). ``resume``: a
    resumed run must keep this setting (it is part of the run).
    """
    meta = {META: dict(help=help, section=section, flags=tuple(flags), cli=cli, cli_type=cli_type,
                       argument=argument, fallback=fallback, resume=resume, parse=parse)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def meta(f: Field) -> dict | None:
    """A field's ``setting`` record (None for a plain field)."""
    return f.metadata.get(META)


def settings_of(config_cls) -> list[tuple[Field, dict]]:
    """(field, setting record) of every field declared with ``setting``, in field order."""
    return [(f, meta(f)) for f in fields(config_cls) if meta(f) is not None]


def sections_of(config_cls) -> dict[str, tuple[str, ...]]:
    """{section: field names} in field order: the --help panels of a config's command (fields
    without a section are left out)."""
    out: dict[str, list[str]] = {}
    for f, md in settings_of(config_cls):
        if md["section"] is not None:
            out.setdefault(md["section"], []).append(f.name)
    return {k: tuple(v) for k, v in out.items()}


def fallbacks_of(config_cls) -> dict[str, Any]:
    """{field: value} for the fields whose None means "the preset's value, else this one"."""
    return {f.name: md["fallback"] for f, md in settings_of(config_cls) if md["fallback"] is not MISSING}


def resume_keys_of(config_cls) -> tuple[str, ...]:
    """The fields a resumed run must share with its checkpoint, in field order."""
    return tuple(f.name for f, md in settings_of(config_cls) if md["resume"])


def default_of(config_cls, name: str) -> Any:
    """Field ``name``'s default (its factory called): a library function that takes the same
    setting as a keyword uses this instead of a copy of the value."""
    f = next(f for f in fields(config_cls) if f.name == name)
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise KeyError(f"{config_cls.__name__}.{name} has no default")


# Settings several stages share, worded once.
RENDERER_HELP = ("auto (torch on CUDA, Pillow on CPU), pillow (views rendered in the DataLoader workers) or torch "
                 "(workers decode and cut the crop's region; the views render on the device). Both give the same "
                 "bytes.")
DEVICE_HELP = "auto, cpu or cuda."

__all__ = ["setting", "meta", "settings_of", "sections_of", "fallbacks_of", "resume_keys_of", "default_of", "META", "RENDERER_HELP", "DEVICE_HELP"]
