"""The ``relabel`` command line: a thin typer face over the library functions."""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from typing import List, Optional

import typer

from relabel.storage.errors import UserError

from . import __version__
from .options import GENERATE_SECTIONS, config_from_params, with_sections
from .runtime import default_workers

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


@app.command()
def generate(
    data: str = typer.Argument(..., help="ImageFolder tree or webdataset shards (folder, glob, brace pattern)."),
    out: str = typer.Option(..., "--out", "-o", help="Label store folder (created, or resumed)."),
    teacher: List[str] = typer.Option(["tresnet_l_v2"], help="timm model name or alias (tresnet_l_v2 = USI's "
                                      "teacher); repeat it for an ensemble (the average of the members' probabilities)."),
    teacher_checkpoint: List[str] = typer.Option([], help="Teacher weights, one per --teacher; default: timm's "
                                                 "pretrained download."),
    teacher_weight: List[float] = typer.Option([], help="Ensemble: one weight per --teacher (default: equal)."),
    teacher_own_size: bool = typer.Option(False, "--teacher-own-size", help="Ensemble: each member sees the view "
                                          "resized to its own input size."),
    views: int = typer.Option(10, help="Views per sample; a larger value on an existing store adds views."),
    topk: int = typer.Option(10, help="Classes kept per view."),
    recipe: str = typer.Option("usi", help="Augmentation recipe: usi, simple, or a .yaml/.json file."),
    seed: int = typer.Option(0, help="Seed of every view."),
    img_size: Optional[int] = typer.Option(None, help="Teacher input size (default: the teacher's own)."),
    batch_size: int = typer.Option(128, help="Teacher batch size."),
    workers: int = typer.Option(default_workers(), help="DataLoader workers (decode + views)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    precision: str = typer.Option("auto", help="auto (fp16 autocast on CUDA, as USI ran its teacher; fp32 on CPU), fp32, fp16 or bf16."),
    encoding: str = typer.Option("q8", help="Stored values: q8 (1 byte, ~2e-4 nats KL), f16 or f32."),
    samples_per_shard: int = typer.Option(16384, help="Samples per shard (a multiple of the recipe's mix group); larger reads faster."),
    views_per_shard: int = typer.Option(10, help="Views per shard: each image is decoded once per shard."),
    repair: bool = typer.Option(False, "--repair", help="Recompute shards that verify finds damaged."),
    class_map: Optional[str] = typer.Option(None, help="When the teacher's classes are not the dataset's: a JSON "
                                            "file {folder name: teacher class index}, 'name index' lines, or "
                                            "'imagenet1k' (folders named by ImageNet synset)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the teacher (faster on GPUs; the labels "
                                 "are the same within fp32 noise, and verify accepts them against eager)."),
    renderer: str = typer.Option("auto", help="auto (torch on CUDA, Pillow on CPU), pillow (views rendered in the DataLoader workers) or torch (workers decode and cut the crop's region; the views render on the device). Both give the same bytes."),
    claim_lease: float = typer.Option(60.0, help="Seconds a shard claim stays valid without its writer refreshing "
                                      "it; then another run takes the shard over (a killed or preempted writer's)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Stage one: run the teacher over stored views and write top-k labels."""
    params = dict(locals())
    from .generate import GenerateConfig, generate as run

    s = run(config_from_params(GenerateConfig, params, lists=("teacher_checkpoint", "teacher_weight")))
    if int(os.environ.get("RANK", "0")) == 0:
        _say(f"wrote {s.views_written:,} views in {s.shards_written} shard(s) in {s.seconds:.1f}s "
             f"({s.views_per_s:,.1f} views/s); store: {s.num_samples:,} samples x {s.views} views, "
             f"complete={s.complete}, unreadable={s.corrupt_samples}, "
             f"{s.label_bytes_per_view:.1f} label bytes/view -> {out}")


with_sections(generate, GENERATE_SECTIONS)


@app.command()
def info(store: str = typer.Argument(..., help="Label store."),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Summarize a label store."""
    from relabel.storage import LabelStore
    s = LabelStore.open(store).summary()
    if s["missing_files"]:
        _say(f"damaged: {len(s['missing_files'])} file(s) of finished shards are missing or empty (first: "
             f"{s['missing_files'][0]}); run 'relabel generate --repair' with the same DATA and settings")
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    t = s["teacher"]
    if t.get("members"):
        own = ", each at its own input size (--teacher-own-size)" if t["members"][0].get("own_size") else ""
        t = {"model": " + ".join(f"{m['model']} x{m['weight']:.3g}" for m in t["members"]) + own,
             "checkpoint_sha256": "ensemble"}
    held = s["held_views"]
    views = f"{s['views']}" if held == [0, s["views"]] else f"{held[0]}-{held[1] - 1} of {s['views']} (a pulled range)"
    typer.echo(f"{s['path']}\n  samples      {s['num_samples']:,} ({s['corrupt_samples']} unreadable)\n"
               f"  views        {views} (complete: {s['complete']})\n  top-k        {s['topk']} of {s['num_classes']} classes\n"
               f"  teacher      {t.get('model')} ({t.get('checkpoint_sha256') or 'pretrained'}) at {s['img_size']}px\n"
               f"  recipe       {s['recipe']} seed {s['seed']}\n  encoding     {s['encoding']['name']}\n"
               f"  size         {s['bytes_on_disk']:,} bytes ({s['bytes_per_view']:.1f} B/view, labels {s['label_bytes_per_view']:.1f} B/view)\n"
               f"  fingerprint  {s['fingerprint'][:16]}" + (f"\n  label set    {s['label_set_digest']}" if s.get("label_set_digest") else ""))


@app.command()
def verify(store: str = typer.Argument(..., help="Label store."),
           data: str = typer.Argument(..., help="The images the labels were made from."),
           samples: int = typer.Option(64, help="Random stored views to recompute (0: integrity only)."),
           teacher_checkpoint: List[str] = typer.Option([], help="Teacher weights the store was made with (one per "
                                                        "ensemble member, in order)."),
           device: str = typer.Option("auto", help="auto, cpu or cuda."),
           seed: int = typer.Option(0, help="Seed for picking the views."),
           compile: bool = typer.Option(False, "--compile", help="torch.compile the teacher."),
           renderer: str = typer.Option("auto", help="auto (torch on CUDA, Pillow on CPU), pillow (views rendered in the DataLoader workers) or torch (workers decode and cut the crop's region; the views render on the device). Both give the same bytes.")):
    """Recompute random stored views with the teacher; check completeness and shard integrity."""
    from .verify import verify as run

    r = run(store, data, samples=samples, teacher_checkpoint=teacher_checkpoint or None, device=device, seed=seed,
            compile=compile, renderer=renderer)
    for line in r.damaged:
        _say(f"damaged: {line}")
    for line in r.notes:
        _say(f"note: {line}")
    if r.drift:
        _say(f"drift: {r.drift}")
    typer.echo(f"checked {r.checked} views: top-1 agreement {r.top1_agreement:.4f}, max log-prob error "
               f"{r.max_logp_error:.4g} (allowed {r.allowed_error:.4g}), mean KL {r.mean_kl:.3g}; "
               f"pending shards {r.pending_shards}, damaged shards {len(r.damaged)}")
    if not r.ok:
        _say("verify FAILED")
        raise typer.Exit(1)
    typer.echo("verify OK")


with_sections(info)
with_sections(verify)


def _register() -> None:
    """Commands that live beside the code they drive (each module keeps heavy imports in its body)."""
    from relabel.train.command import train_command

    from .bench import bench_command
    from .demo import demo_command
    from .publish import export_command, publish_command, pull_command

    from .study import study_command

    for name, fn in (("train", train_command), ("export", export_command), ("publish", publish_command),
                     ("pull", pull_command), ("bench", bench_command), ("demo", demo_command),
                     ("study", study_command)):
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
    """A UserError raised in a DataLoader worker arrives wrapped in torch's multi-line report
    ("Caught UserError in DataLoader worker ... Original Traceback ..."): keep the original line."""
    if "Original Traceback" not in msg:
        return msg
    last = [ln for ln in msg.strip().splitlines() if ln.strip()][-1]
    return last.split("UserError: ", 1)[-1]


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
