"""Each setting is written once, on its config field (issue 24): the commands are generated from the
config records, presets are functions, and the library's defaults are the CLI's."""
from __future__ import annotations

import dataclasses
import inspect

import pytest

COMMANDS = {  # command -> (config record, options that set no field)
    "generate": ("relabel.stages.generate_config:GenerateConfig", {"quiet"}),
    "verify": ("relabel.stages.verify_config:VerifyConfig", set()),
    "train": ("relabel.train.config:TrainConfig", {"quiet"}),
    "bench": ("relabel.commands.bench:BenchConfig", {"part", "json_out"}),
    "study": ("relabel.commands.study:StudyConfig", set()),
    "demo": ("relabel.commands.demo:DemoConfig", set()),
    "export": ("relabel.stages.share_config:ExportConfig", {"quiet"}),
    "publish": ("relabel.stages.share_config:PublishConfig", set()),
    "pull": ("relabel.stages.share_config:PullConfig", set()),
}


def _load(spec: str):
    import importlib

    mod, _, name = spec.partition(":")
    return getattr(importlib.import_module(mod), name)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_is_a_config_field_and_every_field_an_option(command):
    """The command's options are exactly the record's CLI fields, with the field's help (a preset's
    values filled in for train), so a setting added to the record is an option with nothing else to write."""
    import typer.main

    from relabel.commands.cli import app
    from relabel.commands.train_command import _help
    from relabel.settings import meta

    cfg_cls, extra = COMMANDS[command]
    cfg_cls = _load(cfg_cls)
    cmd = typer.main.get_command(app).commands[command]
    opts = {p.name: p for p in cmd.params if p.name != "help"}
    cli_fields = {f.name: meta(f) for f in dataclasses.fields(cfg_cls) if meta(f) and meta(f)["cli"]}
    assert set(opts) == set(cli_fields) | extra
    for name, md in cli_fields.items():
        want = _help(name, md["help"]) if command == "train" else md["help"]
        assert opts[name].help.replace("\\[", "[") == want, f"{command} {name}"
        if md["flags"]:
            assert opts[name].opts[0] == md["flags"][0].split("/")[0], f"{command} {name}"


def test_a_new_setting_is_one_field(tmp_path):
    """command_from on a record it has never seen: options, defaults, flags, parsing and sections."""
    import typer
    import typer.main
    from typer.testing import CliRunner

    from relabel.commands.options import command_from, config_from_params
    from relabel.settings import setting

    @dataclasses.dataclass
    class Toy:
        path: str = setting(help="Where.", argument=True, section="Data")
        sizes: list[int] = setting(default_factory=lambda: [1, 2], cli_type=(str, lambda v: ",".join(map(str, v))),
                                   parse=lambda t: [int(x) for x in t.split(",")], help="Sizes.", section="Data")
        rate: float = setting(0.5, flags=("--rate", "-r"), help="A rate.", section="Knobs")
        hidden: int = setting(7, cli=False, help="Not on the command line.", section="Knobs")

    got = []
    app = typer.Typer()
    app.command("toy")(command_from(Toy, lambda params: got.append(config_from_params(Toy, params)), "toy", "A toy."))
    r = CliRunner().invoke(app, ["p", "--sizes", "3,4", "-r", "2"])
    assert r.exit_code == 0, r.output
    assert got == [Toy(path="p", sizes=[3, 4], rate=2.0)] and got[0].hidden == 7
    r = CliRunner().invoke(app, ["q"])
    assert got[-1] == Toy(path="q")
    cmd = typer.main.get_command(app)
    panels = {p.name: getattr(p, "rich_help_panel", None) for p in cmd.params}
    assert panels["rate"] == "Knobs" and [p.default for p in cmd.params if p.name == "sizes"] == ["1,2"]


def test_presets_are_functions_and_a_registered_one_is_a_cli_preset(tmp_path):
    from relabel.commands.train_command import parse_train_argv
    from relabel.storage import ConfigError
    from relabel.train.config import DEFAULTS, PRESETS, TrainConfig, register_preset, resolve_config, usi

    base = ["data", "--labels", "labels", "--out", str(tmp_path / "run")]
    blank = TrainConfig(data="d", labels=None, out="o")
    assert usi(blank).kd_weight == 5.0 and usi(TrainConfig(data="d", labels=None, out="o", kd_weight=2.0)).kd_weight == 2.0

    def quick(cfg: TrainConfig) -> TrainConfig:  # careless: overwrites lr and kd_weight even when given
        return dataclasses.replace(cfg, lr=0.5, kd_weight=2.0)

    register_preset("quick-test", quick)
    try:
        cfg = resolve_config(parse_train_argv(base + ["--preset", "quick-test"]))
        assert (cfg.lr, cfg.kd_weight, cfg.ce_weight) == (0.5, 2.0, DEFAULTS["ce_weight"])  # the rest: fallbacks
        mine = resolve_config(parse_train_argv(base + ["--preset", "quick-test", "--lr", "0.1", "--kd-weight", "1"]))
        assert (mine.lr, mine.kd_weight) == (0.1, 1.0)  # given explicitly: wins over the preset
    finally:
        del PRESETS["quick-test"]
    with pytest.raises(ConfigError, match="other than 'default'"):
        register_preset("default", quick)
    with pytest.raises(ConfigError, match="unknown `preset` 'quick-test'; use one of usi"):
        resolve_config(parse_train_argv(base + ["--preset", "quick-test"]))


def test_help_shows_fallbacks_and_preset_values_from_the_records(capsys, monkeypatch):
    from conftest import cli_inprocess
    from relabel.commands.train_command import shown

    assert [shown(v) for v in (2e-3, 2e-2, 1e-4, 1e-6, 0.1, 0.9998, 0.99996, 0.9999996, 5.0, 0.0, 0.95, True, False,
                               1024, "adamw")] == \
        ["2e-3", "2e-2", "1e-4", "1e-6", "0.1", "0.9998", "0.99996", "0.9999996", "5", "0", "0.95", "on", "off",
         "1024", "adamw"]  # never rounded
    monkeypatch.setenv("COLUMNS", "250")  # one help text per line
    out = cli_inprocess(capsys, "train", "--help").stdout
    for text in ("[default: 1; usi: 5]", "[default: 0.1; usi: 0]", "[default: 0.9998; usi: 0.99996 at batch 1024]",
                 "[default: on; usi: off]", "[default: the student's; usi: 0.95]", "[default: 0, as given; usi: 1024]"):
        assert text in out, text
    monkeypatch.setitem(__import__("relabel.train.config", fromlist=["DEFAULTS"]).DEFAULTS, "kd_weight", 3.0)
    from relabel.commands.train_command import _help
    from relabel.settings import meta
    from relabel.train.config import TrainConfig

    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == "kd_weight")
    assert "[default: 3; usi: 5]" in _help("kd_weight", meta(f)["help"])  # the help follows the value


def test_resume_keys_are_the_fields_marked_resume():
    """What --resume checks is declared on the fields; none of the checked settings got lost."""
    from relabel.train.config import _RESUME_KEYS

    before = {"student", "mode", "seed", "batch_size", "img_size", "opt", "model_ema", "amp_dtype", "kd_target",
              "aug_repeats", "views_limit", "topk_limit", "fresh_views", "epochs", "lr", "weight_decay",
              "warmup_epochs", "warmup_lr", "min_lr", "preset", "kd_weight", "ce_weight", "smoothing",
              "kd_temperature", "kd_renorm", "model_ema_decay", "model_ema_decay_batch", "model_ema_warmup",
              "eval_crop_pct", "drop", "drop_path", "momentum", "clip_grad", "clip_mode"}
    assert set(_RESUME_KEYS) == before and len(_RESUME_KEYS) == len(before)


def test_replay_loader_defaults_are_relabel_trains():
    from relabel import ReplayLoader
    from relabel.runtime import default_workers
    from relabel.settings import default_of
    from relabel.train.config import DEFAULTS, TrainConfig

    p = inspect.signature(ReplayLoader).parameters
    assert p["seed"].default == default_of(TrainConfig, "seed") == 42
    assert p["aug_repeats"].default == DEFAULTS["aug_repeats"] and p["renderer"].default == "auto"
    assert p["workers"].default is None and default_of(TrainConfig, "workers") == default_workers()


def test_verify_takes_its_record_or_its_fields(tmp_path):
    from relabel.stages.verify import verify
    from relabel.stages.verify_config import VerifyConfig
    from relabel.storage import StoreError

    with pytest.raises(TypeError, match="samplez"):
        verify(str(tmp_path / "none"), str(tmp_path), samplez=3)
    with pytest.raises(TypeError, match="no other settings"):  # not silently ignored
        verify(VerifyConfig(store="s", data="d"), samples=5)
    with pytest.raises(TypeError, match="needs the store and the images"):
        verify(str(tmp_path / "none"))
    for call in (lambda: verify(VerifyConfig(store=str(tmp_path / "none"), data=str(tmp_path))),
                 lambda: verify(str(tmp_path / "none"), str(tmp_path), samples=3)):
        with pytest.raises(StoreError):
            call()
