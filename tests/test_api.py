"""The public Python API: what a user's own training loop uses."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import run_cli


def test_public_names_are_importable_and_lazy():
    code = ("import sys, relabel; assert 'torch' not in sys.modules, 'import relabel pulled in torch'; "
            "[getattr(relabel, n) for n in relabel.__all__]; print(len(relabel.__all__))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 20


def test_replay_loader_gives_the_trainers_batches_and_the_stored_labels(tiny):
    import relabel
    from relabel.storage import LabelStore
    from relabel.train.data import EpochBatchSampler, TrainData

    store = LabelStore.open(tiny / "labels.zarr")
    loader = relabel.ReplayLoader(str(tiny / "data" / "train"), store, batch_size=8, workers=0, seed=7)
    ref = EpochBatchSampler(TrainData(str(tiny / "data" / "train"), str(tiny / "labels.zarr")), 7, 8)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        ref.set_epoch(epoch)
        got = list(loader)
        assert [b["positions"].tolist() for b in got] == [[p for p, _, _ in batch] for batch in ref]
        for b in got:
            idx, lp = store.gather(b["positions"].numpy(), b["view"].numpy())
            assert torch.equal(b["topk_index"], torch.from_numpy(idx)) and torch.equal(b["topk_logp"], torch.from_numpy(lp))
            assert b["pixels"].dtype == torch.uint8 and b["pixels"].shape[1:] == (3, 32, 32)
            partner = b["partner"].tolist()
            assert all(q < 0 or q in b["positions"].tolist() for q in partner)  # pairs share the batch
    # two ranks: disjoint samples, equal batch counts
    r0 = relabel.ReplayLoader(str(tiny / "data" / "train"), store, batch_size=4, workers=0, rank=0, world=2)
    r1 = relabel.ReplayLoader(str(tiny / "data" / "train"), store, batch_size=4, workers=0, rank=1, world=2)
    p0 = {p for b in r0 for p in b["positions"].tolist()}
    p1 = {p for b in r1 for p in b["positions"].tolist()}
    assert len(r0) == len(r1) and p0 and p1 and not p0 & p1


def test_library_errors_are_typed_and_keep_the_cli_contract(tiny, tmp_path):
    import relabel

    with pytest.raises(relabel.StoreError):
        relabel.open_labels(str(tmp_path))
    with pytest.raises(relabel.ConfigError):
        relabel.generate_labels(relabel.GenerateConfig(data=str(tiny / "data" / "train"), out=str(tmp_path / "x"), views=0))
    assert issubclass(relabel.StoreError, relabel.RelabelError) and relabel.UserError is relabel.RelabelError


def test_library_messages_name_settings_and_the_cli_names_options(tiny, tmp_path):
    """A Python caller reads the config field (`views`, `mode='online'`); the CLI the option (--views)."""
    import relabel

    data, store = str(tiny / "data" / "train"), str(tiny / "labels.zarr")
    with pytest.raises(relabel.ConfigError) as e:
        relabel.generate_labels(relabel.GenerateConfig(data=data, out=str(tmp_path / "x"), views=0))
    msg = str(e.value)
    assert "`views` must be a whole number from 1 to 65,535 (got 0)" in msg and "--" not in msg, msg
    r = run_cli("generate", data, "--out", tmp_path / "y", "--views", "0", check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--views must be a whole number from 1 to 65,535 (got 0)" in lines[0], r.stderr
    assert "`" not in lines[0] and not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    # a setting with its value: `mode='online'` in Python, --mode online on the command line
    with pytest.raises(relabel.ConfigError) as e:
        relabel.train_student(relabel.TrainConfig(data=data, labels=store, out=str(tmp_path / "r"),
                                                  student="test_resnet", teacher="test_resnet"))
    msg = str(e.value)
    assert "`teacher`/`teacher_checkpoint` are for `mode='online'` only" in msg and "--" not in msg, msg
    r = run_cli("train", data, "--labels", store, "--out", tmp_path / "r", "--student", "test_resnet",
                "--teacher", "test_resnet", check=False)
    assert r.returncode == 2 and "--teacher/--teacher-checkpoint are for --mode online only" in r.stderr, r.stderr


def test_every_cli_default_is_its_config_default():
    """The config records are the single source of defaults; the CLI options may not drift from them."""
    import dataclasses
    import inspect

    from relabel.commands.bench import BenchConfig, bench_command
    from relabel.commands.stages import generate
    from relabel.commands.demo import DemoConfig, demo_command
    from relabel.stages.generate import GenerateConfig
    from relabel.commands.study import StudyConfig, study_command
    from relabel.commands.train_command import train_command
    from relabel.train.loop import TrainConfig

    cli_only = {"quiet", "part", "json_out"}  # not settings: output switches and the bench part

    def same(cli, cfg) -> bool:
        if isinstance(cli, str) and isinstance(cfg, list):  # "1,2,4" on the command line, a list in Python
            return cli == ",".join(map(str, cfg))
        if cli == [] and cfg is None:  # a repeatable option given no times
            return True
        if isinstance(cli, list) and isinstance(cfg, str):  # a repeatable option, one value by default
            return cli == [cfg]
        return cli == cfg

    for fn, cfg in ((generate, GenerateConfig), (train_command, TrainConfig), (demo_command, DemoConfig),
                    (bench_command, BenchConfig), (study_command, StudyConfig)):
        fields = {f.name: f for f in dataclasses.fields(cfg)}
        for name, p in inspect.signature(fn).parameters.items():
            if name in cli_only:
                continue
            assert name in fields, f"{fn.__name__}: option {name} has no {cfg.__name__} field"
            f = fields[name]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                continue  # required in Python (data, out, labels): the CLI may default or require it
            want = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            got = getattr(p.default, "default", p.default)
            assert same(got, want), f"{fn.__name__} --{name.replace('_', '-')}: CLI default {got!r}, {cfg.__name__} {want!r}"


def test_share_command_defaults_are_the_library_functions():
    """export, publish and pull have no config record: each option's default is its library
    function's keyword default (the one other place it is written)."""
    import inspect

    from relabel.commands.share import export_command, publish_command, pull_command
    from relabel.stages.publish import export, publish, pull

    for command, fn in ((export_command, export), (publish_command, publish), (pull_command, pull)):
        lib = inspect.signature(fn).parameters
        for name, p in inspect.signature(command).parameters.items():
            if name in ("quiet", "format") or name not in lib or lib[name].default is inspect.Parameter.empty:
                continue
            got = getattr(p.default, "default", p.default)
            assert got == lib[name].default, f"{command.__name__} --{name}: CLI {got!r}, {fn.__name__} {lib[name].default!r}"


def test_cli_words_settings_as_the_running_commands_options():
    from relabel.commands.cli import _cli_words

    assert _cli_words("`shards=True`", "pull") == "--shards"  # pull's flag, not publish's --shards PATH
    assert _cli_words("`shards='out/wds'`", "publish") == "--shards out/wds"
    assert _cli_words("set `progress=False`", "train") == "set --quiet"
    assert _cli_words("`model_ema=False`, `views_limit=2`, `not_an_option`", "train") == \
        "--no-model-ema, --views-limit 2, `not_an_option`"
