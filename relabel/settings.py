"""Config fields that are also command-line settings: each setting is written once, on its field.

A stage's config dataclass (``GenerateConfig``, ...) declares its fields with ``setting(...)``: the
default, the help text, the ``--help`` section, extra flag names. The command layer builds the typer
command from these fields (``relabel.commands.options.command_from``), so a new setting is one line.
Plain data: this module imports no typer.
"""
from __future__ import annotations

from dataclasses import MISSING, field
from typing import Any

META = "relabel"


def setting(default: Any = MISSING, *, help: str, section: str, flags: tuple[str, ...] = (), cli: bool = True,
            cli_type: Any = None, argument: bool = False, default_factory: Any = MISSING, show_default: Any = True):
    """A config field with its command-line face: ``help`` and ``section`` (the --help panel),
    ``flags`` (option names, e.g. ("--out", "-o"); default: --field-name), ``cli=False`` for a setting
    the CLI does not expose, ``cli_type`` when the field's type is not what typer parses: (the type
    typer parses, the option's default), e.g. (List[str], []) for a repeatable option, ``argument``
    for a positional argument."""
    meta = {META: dict(help=help, section=section, flags=tuple(flags), cli=cli, cli_type=cli_type,
                       argument=argument, show_default=show_default)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def sections_of(config_cls) -> dict[str, tuple[str, ...]]:
    """{section: field names} in field order: the --help panels of a config's command."""
    from dataclasses import fields

    out: dict[str, list[str]] = {}
    for f in fields(config_cls):
        md = f.metadata.get(META)
        if md is not None:
            out.setdefault(md["section"], []).append(f.name)
    return {k: tuple(v) for k, v in out.items()}


__all__ = ["setting", "sections_of", "META"]
