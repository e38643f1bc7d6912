"""The stage functions' typed results, the CLI's option sections and the timm task, through the public API."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from conftest import make_imagefolder, save_teacher


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    folder = make_imagefolder(root / "data" / "train", per_class=12)
    return root, folder, save_teacher(root / "t.pth")


def _gen_cfg(world, out, **kw):
    import relabel

    root, folder, ckpt = world
    return relabel.GenerateConfig(data=str(folder), out=str(out), teacher="test_resnet", teacher_checkpoint=str(ckpt),
                                  views=kw.pop("views", 2), topk=2, img_size=32, samples_per_shard=64,
                                  views_per_shard=2, workers=0, progress=False, **kw)


def test_stage_functions_return_typed_results(world, tmp_path):
    import relabel

    store = tmp_path / "labels.zarr"
    first = relabel.generate_labels(_gen_cfg(world, store))
    assert isinstance(first, relabel.GenerateResult)
    n = first.num_samples
    assert n == 36 and first.views == 2 and first.views_written == 2 * n and first.complete
    assert first.corrupt_samples == 0 and first.store["num_samples"] == n and first.label_bytes_per_view > 0
    again = relabel.generate_labels(_gen_cfg(world, store))  # nothing pending: nothing written
    assert again.views_written == 0 and again.shards_written == 0 and again.complete
    grown = relabel.generate_labels(_gen_cfg(world, store, views=3))
    assert grown.views_written == n and grown.views == 3

    val = make_imagefolder(tmp_path / "val", per_class=3, seed=4)
    run = relabel.train_student(relabel.TrainConfig(data=str(world[1]), labels=str(store), out=str(tmp_path / "run"),
                                                    student="test_resnet", epochs=3, batch_size=8, workers=0,
                                                    val=str(val), progress=False, log=False))
    assert isinstance(run, relabel.TrainResult)
    assert run.epochs_done == 3 and run.matched == n and run.num_samples == n
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert run.last["epoch"] == history[-1]["epoch"] == 3 and run.last["losses"] == history[-1]["losses"]
    assert run.val_top1 == history[-1]["val_top1"] and run.ema_top1 == history[-1]["ema_top1"] is not None
    assert run.best_top1 == max(m["val_top1"] for m in history)


def test_every_config_field_has_one_help_section_and_every_option_shows_in_one():
    import typer.main

    from relabel.commands.cli import app
    from relabel.stages.generate import GenerateConfig
    from relabel.settings import sections_of
    from relabel.train.loop import TrainConfig

    for cfg, command in ((GenerateConfig, "generate"), (TrainConfig, "train")):
        sections = sections_of(cfg)
        listed = [name for names in sections.values() for name in names]
        assert len(listed) == len(set(listed)), f"{command}: a field is in two sections"
        assert set(listed) == {f.name for f in dataclasses.fields(cfg)}, command
        cmd = typer.main.get_command(app).commands[command]
        for p in cmd.params:
            if p.param_type_name == "option" and p.name != "help":
                assert getattr(p, "rich_help_panel", None), f"{command} --{p.name} has no section"


def test_help_shows_bracketed_defaults_as_written(capsys, monkeypatch):
    from conftest import cli_inprocess

    monkeypatch.setenv("COLUMNS", "250")  # one help text per line
    r = cli_inprocess(capsys, "train", "--help")
    assert r.returncode == 0 and "[default: 2e-3, USI's at batch 1024]" in r.stdout
    assert "\\[" not in r.stdout  # escaped for rich, shown without the escape


def test_cached_distillation_task_is_a_timm_task_with_the_trainers_loss(world, tmp_path):
    import relabel
    from timm.task import TrainingTask

    from relabel.commands.bench import trainer_with_batches

    store = tmp_path / "labels.zarr"
    relabel.generate_labels(_gen_cfg(world, store))
    cfg = relabel.TrainConfig(data=str(world[1]), labels=str(store), out=str(tmp_path / "run"), student="test_resnet",
                              epochs=1, batch_size=8, workers=0, progress=False, log=False, model_ema=False,
                              ce_weight=1.0, kd_weight=5.0, smoothing=0.1, seed=3)
    tr, (batch,) = trainer_with_batches(cfg, batches=1)
    model = copy.deepcopy(tr.module)  # the student before the trainer's first update
    expected = float(tr.train_step(batch))

    task = relabel.CachedDistillationTask(model, distill_loss_weight=5.0, task_loss_weight=1.0, smoothing=0.1)
    assert isinstance(task, TrainingTask) and task.get_eval_model() is model
    loader = relabel.ReplayLoader(str(world[1]), relabel.open_labels(str(store)), batch_size=8, workers=0, seed=3,
                                  normalize_for=model)
    loader.set_epoch(0)
    b = next(iter(loader))
    assert torch.equal(b["positions"], batch["positions"])
    out = task(b["input"], b)
    assert set(out) >= {"loss", "output", "task_loss", "kd_loss"}
    assert abs(float(out["loss"]) - expected) < 1e-4 * max(1.0, abs(expected))
    assert abs(float(out["loss"]) - float(out["task_loss"] + 5.0 * out["kd_loss"])) < 1e-5
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    task.setup_ema(decay=0.5)
    task.update_ema(step=1)  # timm's EMA plumbing works on the task
    assert task.has_ema()


def test_offline_pretrained_weights_name_the_fix_of_the_model_asked_for(world, tmp_path):
    """No hub: the teacher's error points at its checkpoint option, the student's at --pretrained."""
    from conftest import run_cli

    root, folder, _ = world
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache, no network
    r = run_cli("generate", folder, "--out", tmp_path / "s", "--teacher", "resnet18", "--views", "1",
                "--workers", "0", check=False, env=offline)
    assert r.returncode == 2 and "--teacher-checkpoint" in r.stderr, r.stderr
    store = tmp_path / "labels.zarr"
    import relabel
    relabel.generate_labels(_gen_cfg(world, store))
    r = run_cli("train", folder, "--labels", store, "--out", tmp_path / "run", "--student", "resnet18",
                "--pretrained", "--epochs", "1", "--workers", "0", check=False, env=offline)
    line = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(line) == 1 and "drop --pretrained" in line[0], r.stderr
    assert "--teacher-checkpoint" not in r.stderr
