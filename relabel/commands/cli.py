"""The ``relabel`` command line: a thin typer face over the library functions."""
from __future__ import annotations

import functools
import logging
import re
import sys

import typer

from relabel.storage.errors import UserError

from relabel import __version__
from .options import with_sections

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run the distillation teacher once over replayable augmentation views; train any "
                       "timm student from the cached soft labels.")


def _version(value: bool):
    if value:
        typer.echo(f"relabel {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _register() -> None:
    """Every command, in --help's order (each module keeps heavy imports in its body)."""
    from .bench import bench_command
    from .demo import demo_command
    from .share import export_command, publish_command, pull_command
    from .look import info, show
    from .stages import generate, verify
    from .study import study_command
    from .train_command import train_command

    for name, fn in (("generate", generate), ("info", info), ("show", show), ("verify", verify), ("train", train_command),
                     ("export", export_command), ("publish", publish_command), ("pull", pull_command),
                     ("bench", bench_command), ("demo", demo_command), ("study", study_command)):
        app.command(name)(with_sections(fn))


_register()


def _click_exceptions():
    """typer >= 0.17 vendors click; fall back to click itself for older typer."""
    try:
        from typer._click import exceptions as ex
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as ex
    return ex


def _one_line(msg: str) -> str:
    """A RelabelError raised in a DataLoader worker arrives wrapped in torch's multi-line report
    ("Caught UserError in DataLoader worker ... Original Traceback ..."): keep the original line."""
    if "Original Traceback" not in msg:
        return msg
    last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
    return re.sub(r"^(relabel\.[\w.]+\.)?(Relabel|Config|Source|Store|User)Error: ", "", last)


@functools.lru_cache(maxsize=None)
def _options(command: str | None) -> dict:
    """Options by parameter (= config field) name: the given command's first, then any command's."""
    import typer.main

    commands = typer.main.get_command(app).commands
    opts: dict = {}
    for name in ([command] if command in commands else []) + list(commands):
        for p in commands[name].params:
            if p.param_type_name == "option":
                opts.setdefault(p.name, p)
    return opts


_SETTING = re.compile(r"`([a-z][a-z0-9_]*)(?:=([^`]*))?`")
_COMMAND: list[str | None] = [None]  # the command this process runs (main sets it)


def _cli_words(msg: str, command: str | None = None) -> str:
    """Library messages name settings as config fields (`views`, `resume=True`, `mode='online'`,
    see relabel.storage.errors); a shell user reads the options instead (--views, --resume, --mode
    online), those of the command being run first. Backticked names that are no option of any
    command are left as they are."""
    opts = _options(command or _COMMAND[0])

    def word(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if name == "progress" and value in ("True", "False"):  # the CLI's switch is --quiet, inverted
            return "no --quiet" if value == "True" else "--quiet"
        p = opts.get(name)
        if p is None:
            return m.group(0)
        flag = p.opts[0] if p.opts[0].startswith("--") else p.opts[-1]
        if value is None:
            return flag
        if value in ("True", "False") and p.is_flag:
            if value == "True":
                return flag
            return p.secondary_opts[0] if p.secondary_opts else f"no {flag}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return f"{flag} {value}"

    return _SETTING.sub(word, msg)


class _CliFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _cli_words(super().format(record))


class _StderrHandler(logging.StreamHandler):
    """Writes to the stderr of the moment (tests and wrappers redirect it after start-up)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def _log_to_stderr() -> None:
    """The library logs (``logging.getLogger("relabel...")``); the CLI shows INFO and above on stderr."""
    log = logging.getLogger("relabel")
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        h = _StderrHandler()
        h.setFormatter(_CliFormatter("%(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    ex = _click_exceptions()
    # zarr reads chunks as concurrent tasks: when one fails (damage, reported as one line), asyncio
    # would log its still-pending siblings at exit, burying that line.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    _log_to_stderr()
    args = sys.argv[1:] if argv is None else list(argv)
    _COMMAND[0] = next((a for a in args if not a.startswith("-")), None)
    try:
        rv = app(args=args, standalone_mode=False)
        if rv == 130:  # typer turns Ctrl-C into Exit(130) before it can reach the handler below
            raise KeyboardInterrupt
        sys.exit(rv if isinstance(rv, int) else 0)
    except UserError as e:
        _say(f"error: {_cli_words(_one_line(str(e)))}")
        sys.exit(2)
    except (typer.Exit, ex.Exit if hasattr(ex, "Exit") else typer.Exit) as e:
        sys.exit(getattr(e, "exit_code", 0))
    except ex.NoArgsIsHelpError as e:
        e.show()
        sys.exit(0)
    except ex.ClickException as e:
        ctx = getattr(e, "ctx", None)
        cmd = f"relabel {ctx.info_name} --help" if ctx is not None and ctx.info_name != "relabel" else "relabel --help"
        _say(f"error: {e.format_message()} (see '{cmd}')")
        sys.exit(2)
    except OSError as e:  # a path that is a file, no permission, disk full: the user's to fix
        where = f"{e.filename}: " if e.filename else ""
        _say(f"error: {where}{e.strerror or e}")
        sys.exit(2)
    except (KeyboardInterrupt, getattr(ex, "Abort", KeyboardInterrupt)):
        _say("interrupted; rerun the same command to resume")
        sys.exit(130)
    except RuntimeError as e:
        if "DataLoader worker" not in str(e):
            raise
        # The OOM killer (or a user) ended a worker; everything finished so far is on disk.
        first = str(e).strip().splitlines()[0].rstrip(".")
        _say(f"error: {first} (killed, perhaps out of memory); rerun the same command to resume, with fewer "
             f"--workers if it happens again")
        sys.exit(2)


if __name__ == "__main__":
    main()
