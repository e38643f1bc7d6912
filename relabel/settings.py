"""Config fields that are also command-line settings: each setting is written once, on its field.

A config dataclass (``GenerateConfig``, ``TrainConfig``, ...) declares its fields with
``setting(...)``: the default, the help text, the ``--help`` section, the flag names, whether a
resumed run must keep it. The command layer builds the typer command from these fields
(``relabel.commands.options.command_from``), so a new setting is one field. Plain data: this module
imports no typer.
"""
from __future__ import annotations

import math
import numbers
import re
import types
import typing
from dataclasses import MISSING, Field, field, fields
from typing import Any, Callable

META = "relabel"


def setting(default: Any = MISSING, *, help: str, section: str | None = None, flags: tuple[str, ...] = (),
            cli: bool = True, cli_type: Any = None, argument: bool = False, default_factory: Any = MISSING,
            fallback: Any = MISSING, resume: bool = False, parse: Callable[[str], Any] | None = None,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            choices: tuple | None = None, check: Callable[[Any], Any] | None = None):
    """A config field with its command-line face.

    ``help`` and ``section`` (the --help panel; None: the plain "Options" panel), ``flags`` (option
    names, e.g. ("--out", "-o"); default: --field-name), ``cli=False`` for a setting the CLI does not
    expose, ``argument`` for a positional argument. ``cli_type``: when typer parses another type than
    the field's, (that type, the option's default, or a function of the field's default). ``parse``:
    turns that option's text into the field's value (e.g. "1,2,4" -> [1, 2, 4]). ``fallback``: the
    value of a field left None that no preset set (the field's default is then None). ``resume``: a
    resumed run must keep this setting (it is part of the run).

    Limits (``check_settings`` applies them wherever a value comes from: the CLI, a config record,
    a library function's keyword): the field's annotation gives the type (whole numbers for ``int``,
    finite numbers for ``float``; numpy scalars are taken as the Python ones), ``ge``/``gt``/``le``/
    ``lt`` the range (of each item, for a list), ``choices`` the allowed values, and ``check`` any
    other rule: a function of the value that returns it (normalized) or raises ValueError saying
    what is allowed.
    """
    meta = {META: dict(help=help, section=section, flags=tuple(flags), cli=cli, cli_type=cli_type,
                       argument=argument, fallback=fallback, resume=resume, parse=parse,
                       limits=dict(ge=ge, gt=gt, le=le, lt=lt, choices=None if choices is None else tuple(choices),
                                   check=check))}
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


# ------------------------------------------------------------------------------------------ limits
def _number_words(lim: dict) -> str:
    parts = []
    for key, word in (("gt", "above"), ("ge", "at least"), ("lt", "below"), ("le", "at most")):
        if lim.get(key) is not None:
            parts.append(f"{word} {_shown_number(lim[key])}")
    if lim.get("ge") is not None and lim.get("le") is not None:
        return f"from {_shown_number(lim['ge'])} to {_shown_number(lim['le'])}"
    return " and ".join(parts)


def _shown_number(x) -> str:
    return f"{x:,}" if isinstance(x, int) and abs(x) >= 10_000 else repr(x)


def _as_number(kind: type, v):
    """``v`` as a Python ``int`` or finite ``float``, or None when it is not one (numpy scalars are
    numbers; bools and strings are not)."""
    if isinstance(v, bool) or type(v).__name__ == "bool_" or not isinstance(v, numbers.Real):
        return None
    if kind is int:
        return int(v) if isinstance(v, numbers.Integral) else None
    try:
        f = float(v)
    except (OverflowError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _in_range(x, lim: dict) -> bool:
    return not ((lim["ge"] is not None and x < lim["ge"]) or (lim["gt"] is not None and x <= lim["gt"])
                or (lim["le"] is not None and x > lim["le"]) or (lim["lt"] is not None and x >= lim["lt"]))


def _alternatives(annotation) -> tuple[list, bool]:
    """(the concrete types a value may have, whether None is allowed) of an annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        out, none = [], False
        for a in typing.get_args(annotation):
            if a is type(None):
                none = True
            else:
                sub, n = _alternatives(a)
                out += sub
                none |= n
        return out, none
    if annotation is Any:
        return [Any], True
    return [annotation], False


def _convert(annotation, value, lim: dict):
    """``value`` checked against one alternative of an annotation: (ok, normalized value, words
    for what this alternative allows)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True, value, "anything"
    if annotation is bool:
        ok = isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool too
        return ok, bool(value) if ok else value, "true or false"
    if annotation in (int, float):
        x = _as_number(annotation, value)
        rng = _number_words(lim)
        words = ("a whole number" if annotation is int else "a finite number") + (f" {rng}" if rng else "")
        if x is None or not _in_range(x, lim):
            return False, value, words
        return True, x, words
    if annotation is str:
        words = "text" if lim["choices"] is None else f"one of {', '.join(map(str, lim['choices']))}"
        return isinstance(value, str) and (lim["choices"] is None or value in lim["choices"]), value, words
    if origin in (list, tuple) or annotation in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        words = f"a list, each item {_convert(item, object(), lim)[2]}"
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False, value, words
        out = []
        for v in value:
            ok, x, _ = _convert(item, v, lim)
            if not ok:
                return False, value, words
            out.append(x)
        return True, out, words
    return isinstance(value, annotation) if isinstance(annotation, type) else True, value, getattr(
        annotation, "__name__", str(annotation))


def check_value(config_cls, name: str, value: Any, called: str | None = None) -> Any:
    """``value`` for setting ``name`` of ``config_cls``, checked against the field's limits and
    normalized (numpy scalars to Python numbers, tuples to lists); ConfigError naming the setting,
    the value and what is allowed otherwise. Library functions that take a setting as a keyword
    check it here, so they refuse exactly what the CLI and the config records refuse (``called``:
    the keyword's name there, when it differs from the setting's)."""
    from relabel.errors import ConfigError, named

    f = _field(config_cls, name)
    md = meta(f) or {}
    lim = md.get("limits") or dict(ge=None, gt=None, le=None, lt=None, choices=None, check=None)
    alternatives, none_ok = _alternatives(_hints(config_cls)[name])
    if value is None and none_ok:
        return None
    allowed = []
    for alt in alternatives:
        ok, x, words = _convert(alt, value, lim)
        allowed.append(words)
        if ok:
            if lim["check"] is not None:
                try:
                    x = lim["check"](x)
                except ValueError as e:
                    raise ConfigError(f"{named(called or name)} must be {e} (got {value!r})") from None
            return x
    raise ConfigError(f"{named(called or name)} must be {' or '.join(dict.fromkeys(allowed))} (got {value!r})")


def check_number(name: str, value: Any, kind: type = int, **limits) -> Any:
    """``value`` of a keyword that is no config setting (an image size, a rank), checked with the
    same rules (``kind`` int or float, ``ge``/``gt``/``le``/``lt``); ConfigError otherwise."""
    from relabel.errors import ConfigError, named

    lim = dict(ge=None, gt=None, le=None, lt=None, choices=None, check=None) | limits
    ok, x, words = _convert(kind, value, lim)
    if not ok:
        raise ConfigError(f"{named(name)} must be {words} (got {value!r})")
    return x


def check_settings(config) -> None:
    """Check every setting of a config record against its field's limits, normalizing in place; a
    config dataclass calls this from ``__post_init__`` (``__post_init__ = check_settings``)."""
    for f, md in settings_of(type(config)):
        value = getattr(config, f.name)
        if value is MISSING:
            continue
        new = check_value(type(config), f.name, value)
        if new is not value:
            object.__setattr__(config, f.name, new)


def config_of_call(config_cls, first, data, settings: dict, call: str, needs: str):
    """A stage function's config record from either call form: ``fn(Config(...))``, or
    ``fn(first, data, **fields)`` (``first`` and ``data`` its first two fields). ``call``: the function's
    name; ``needs``: what its two positional arguments are, for the message when DATA is missing."""
    if isinstance(first, config_cls):
        if data is not None or settings:
            raise TypeError(f"{call}({config_cls.__name__}) takes no other settings; set them on the "
                            f"{config_cls.__name__}")
        return first
    if data is None:
        raise TypeError(f"{call}() needs {needs}: {call}(store, data, ...)")
    a, b = (f.name for f in fields(config_cls)[:2])
    return config_cls(**{a: first, b: data}, **settings)


def _field(config_cls, name: str) -> Field:
    for f in fields(config_cls):
        if f.name == name:
            return f
    raise KeyError(f"{config_cls.__name__} has no setting {name!r}")


_HINTS: dict[type, dict] = {}


def _hints(config_cls) -> dict:
    h = _HINTS.get(config_cls)
    if h is None:
        h = _HINTS[config_cls] = typing.get_type_hints(config_cls)
    return h


def device_name(value: str) -> str:
    """A device setting: auto, cpu, cuda or cuda:N (whether that device exists is checked where it is used)."""
    if isinstance(value, str) and (value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]{1,3}", value)):
        return value
    raise ValueError("auto, cpu, cuda or cuda:N")


# Seeds name streams of the counter-based RNG and torch generators: 0 to 2**63 - 1 (what torch.Generator takes).
MAX_SEED = 2**63 - 1

# Settings several stages share, worded once.
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
RENDERERS = ("auto", "pillow", "torch")
MAX_IMG_SIZE = 4096
RENDERER_HELP = ("auto (torch on CUDA, Pillow on CPU), pillow (views rendered in the DataLoader workers) or torch "
                 "(workers decode and cut the crop's region; the views render on the device). Both give the same "
                 "bytes.")
RENDER_KERNELS = ("auto", "matmul", "taps")
RENDER_KERNEL_HELP = ("The torch renderer's resize kernel: auto (each timed on the device's first batches, the fastest "
                      "kept), matmul (dense float64) or taps (Pillow's int32 taps). All give the same bytes.")
DEVICE_HELP = "auto, cpu or cuda."

__all__ = ["MAX_SEED", "MAX_IMG_SIZE", "PRECISIONS", "RENDERERS", "setting", "check_settings", "check_value", "check_number", "config_of_call", "device_name", "meta", "settings_of", "sections_of", "fallbacks_of", "resume_keys_of", "default_of", "META", "RENDERER_HELP", "RENDER_KERNELS", "RENDER_KERNEL_HELP", "DEVICE_HELP"]
