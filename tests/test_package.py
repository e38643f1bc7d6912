"""The installed package: one import namespace that a user's own train.py or storage/ cannot shadow."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, make_imagefolder, save_teacher


@pytest.fixture(scope="module")
def clash(tmp_path_factory) -> Path:
    """A typical ML project folder: its own train.py, storage/ and relabel-looking neighbours."""
    d = tmp_path_factory.mktemp("project")
    (d / "train.py").write_text("raise SystemExit('the user train.py was imported')\n")
    (d / "storage").mkdir()
    (d / "storage" / "__init__.py").write_text("raise SystemExit('the user storage package was imported')\n")
    return d


def _run(args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_import_and_help_beside_user_modules(clash):
    code = ("import relabel, relabel.storage, relabel.train.loop, relabel.commands.cli; "
            "print(relabel.storage.__file__); print(relabel.train.__file__)")
    r = _run([sys.executable, "-c", code], clash)
    assert r.returncode == 0, r.stderr
    storage_file, train_file = r.stdout.split()
    assert Path(storage_file).parent == ROOT / "storage" and Path(train_file).parent == ROOT / "train"
    r = _run([sys.executable, "-m", "relabel", "--help"], clash)
    assert r.returncode == 0 and "generate" in r.stdout, r.stderr


def test_torchrun_generate_beside_user_modules(clash, tmp_path):
    folder = make_imagefolder(tmp_path / "data", per_class=4)
    ckpt = save_teacher(tmp_path / "t.pth")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "relabel",
           "generate", str(folder), "--out", str(tmp_path / "store"), "--teacher", "test_resnet",
           "--teacher-checkpoint", str(ckpt), "--views", "2", "--topk", "2", "--img-size", "32",
           "--samples-per-shard", "64", "--views-per-shard", "1", "--workers", "0", "--device", "cpu", "--quiet"]
    r = _run(cmd, clash)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "complete=True" in r.stderr


def test_wheel_has_one_top_level_package(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("relabel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"relabel"}
    assert {"relabel/storage/store.py", "relabel/train/loop.py", "relabel/storage/FORMAT.md"} <= set(names)


def test_progress_without_a_terminal_is_plain_lines(tmp_path, monkeypatch, capsys):
    """A cluster job's log gets a line per interval with rate and ETA, not a silent minute."""
    import io
    import logging

    from relabel.commands.cli import _log_to_stderr
    from relabel.progress import progress_bar

    _log_to_stderr()
    monkeypatch.setenv("RELABEL_PROGRESS_SECONDS", "0")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    import sys

    with progress_bar(True, "generate", 4, unit="views") as bar:
        for _ in range(4):
            bar.advance(1)
    lines = sys.stderr.getvalue().splitlines()
    assert lines[0].startswith("generate: 1/4 views (25.0%)") and "views/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("generate: 4/4 views (100.0%)")
    assert logging.getLogger("relabel").handlers


def test_format_doc_header_example_matches_a_fresh_store(tmp_path):
    """storage/FORMAT.md shows a machine-produced header; it must have the keys a store really has."""
    import json
    import re

    from relabel.stages.generate import GenerateConfig, generate

    text = (ROOT / "storage" / "FORMAT.md").read_text()
    example = json.loads(re.search(r"## Header example.*?```json\n(.*?)```", text, re.S).group(1))
    folder = make_imagefolder(tmp_path / "train", per_class=2)
    generate(GenerateConfig(data=str(folder), out=str(tmp_path / "s"), teacher="test_resnet",
                            teacher_checkpoint=str(save_teacher(tmp_path / "t.pth")), views=2, topk=2, img_size=32,
                            samples_per_shard=64, views_per_shard=2, workers=0, progress=False))
    real = json.loads((tmp_path / "s" / "zarr.json").read_text())["attributes"]["relabel"]

    def shape(d):
        return {k: shape(v) for k, v in d.items()} if isinstance(d, dict) and "samples" not in d else type(d).__name__

    assert set(example) == set(real)
    for key in ("teacher", "recipe", "encoding"):
        assert shape(example[key]) == shape(real[key]), key
    assert set(example["replay_check"]) == set(real["replay_check"]) and example["schema_version"] == real["schema_version"]
