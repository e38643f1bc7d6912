"""The demo pipeline at reduced size: real digits, a trained teacher, labels, three students."""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict

import torch

from conftest import run_cli


def test_demo_reduced(tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", out, "--limit", "150", "--epochs", "1", "--teacher-epochs", "1", "--workers", "0")
    res = json.loads((out / "results.json").read_text())
    assert sorted(x["mode"] for x in res["runs"]) == ["cached", "online", "supervised"]
    assert all(0 <= x["top1"] <= 100 and x["seconds"] > 0 for x in res["runs"])
    assert (out / "curves.png").stat().st_size > 0 and (out / "labels.zarr" / "zarr.json").exists()
    n_val = len(list((out / "digits" / "val").rglob("*.png")))
    assert n_val + len(list((out / "digits" / "train").rglob("*.png"))) == 150 and 25 <= n_val <= 35
    assert len(list((out / "digits" / "val").iterdir())) == 10  # stratified: every class in val
    assert "| cached |" in r.stdout and "| online |" in r.stdout and "| supervised |" in r.stdout
    # each step's command is printed, and it is exactly the run: parsed by the real CLI, it gives the
    # config the run recorded in its checkpoint (teacher and three students) / the generate config
    check_printed_commands(r.stderr, res["generate"]["config"], expect_train=4)


def check_printed_commands(stderr: str, generate_config: dict, expect_train: int) -> None:
    import typer.main

    from relabel.commands.cli import app
    from relabel.commands.train_command import parse_train_argv
    from relabel.train.loop import resolve_config

    lines = [shlex.split(line.strip()) for line in stderr.splitlines() if line.strip().startswith("relabel ")]
    trains = [a[2:] for a in lines if a[1] == "train"]
    gens = [a[2:] for a in lines if a[1] == "generate"]
    assert len(trains) == expect_train and len(gens) == 1, stderr
    display = {"progress", "log"}
    for argv in trains:
        parsed = asdict(resolve_config(parse_train_argv(argv)))
        used = torch.load(f"{parsed['out']}/last.pth", weights_only=True)["config"]
        diff = {k: (parsed[k], used.get(k)) for k in parsed if k not in display and parsed[k] != used.get(k)}
        assert not diff, (argv, diff)
    assert any("--warmup-epochs" in a and "--seed" in a and "0" in a for a in trains)  # the teacher's, once omitted
    ctx = typer.main.get_command(app).commands["generate"].make_context("generate", gens[0])
    params = {k: v for k, v in ctx.params.items() if k != "quiet"}
    as_list = lambda x: [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]  # noqa: E731
    same = lambda a, b: as_list(a) == as_list(b) if isinstance(a, (list, tuple)) else a == b  # noqa: E731
    diff = {k: (v, generate_config[k]) for k, v in params.items() if not same(v, generate_config[k])}
    assert not diff, diff
