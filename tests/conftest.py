"""Shared fixtures: real image files on disk and tiny real teacher checkpoints."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("ant", "bee", "cat")


def write_image(path: Path, rng: np.random.Generator, cls: int, size=(40, 32), fmt: str | None = None) -> None:
    """A real image whose colour depends on the class, so a model can learn it."""
    w, h = size
    base = np.zeros((h, w, 3), np.float32)
    base[..., cls % 3] = 160
    yy, xx = np.mgrid[0:h, 0:w]
    base[..., (cls + 1) % 3] += 60 * np.sin(xx / (3 + cls)) + 40 * np.cos(yy / 5)
    arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def make_imagefolder(root: Path, per_class: int = 8, classes=CLASSES, seed: int = 0) -> Path:
    """JPEG and PNG files, one folder per class, mixed sizes."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        for i in range(per_class):
            ext = "png" if i % 3 == 0 else "jpg"
            size = (40 + 8 * (i % 3), 32 + 4 * (i % 2))
            write_image(root / c / f"{c}_{i:03d}.{ext}", rng, ci, size)
    return root


def folder_to_shards(folder: Path, out: Path, per_shard: int = 10) -> Path:
    """The same images as webdataset tar shards (+ classes.txt)."""
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for s in range(0, len(files), per_shard):
        with tarfile.open(out / f"data-{s // per_shard:06d}.tar", "w") as tf:
            for f in files[s:s + per_shard]:
                rel = f.relative_to(folder).as_posix()
                key = rel.rpartition(".")[0]
                for name, data in ((rel, f.read_bytes()), (f"{key}.cls", str(classes.index(f.parent.name)).encode())):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    (out / "classes.txt").write_text("\n".join(classes) + "\n")
    return out


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file under a folder, by relative path: for byte-for-byte store comparisons."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def save_teacher(path: Path, num_classes: int = 3, name: str = "test_resnet", seed: int = 0) -> Path:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=num_classes)
    torch.save(model.state_dict(), path)
    return path


def fsize_limit(n: int):
    """A subprocess preexec_fn: files it writes may not grow past ``n`` bytes (a full disk, for real:
    the write fails with EFBIG instead of the process being killed)."""
    def pre():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return pre


def run_cli(*args, check: bool = True, env: dict | None = None, timeout: int = 600,
            subprocess_: bool = False) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: its exit code, stdout and stderr. In this process by default (a
    subprocess pays ~5 s to import torch); in a subprocess when ``env`` is given or asked for."""
    if env is None and not subprocess_:
        r = _run_cli_here([str(a) for a in args])
    else:
        e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        r = subprocess.run([sys.executable, "-m", "relabel", *map(str, args)], capture_output=True, text=True,
                           env=e, timeout=timeout, cwd=ROOT)
    if check and r.returncode != 0:
        raise AssertionError(f"relabel {' '.join(map(str, args))} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def _run_cli_here(args: list[str]) -> subprocess.CompletedProcess:
    import contextlib
    import io

    from relabel.commands.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(["relabel", *args], code, out.getvalue(), err.getvalue())


def cli_inprocess(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI in this process (saves the ~5 s torch import of a subprocess): code, stdout, stderr."""
    from relabel.commands.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, int(e.value.code or 0), out.out, out.err)


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "train")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A folder ``data/train`` (36 images), ``t.pth`` and the store ``labels.zarr`` made from them (3
    views, top-2, 32 px): what the README's loop and the API tests run on. Read it, never change it."""
    from relabel.stages.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("tiny")
    folder = make_imagefolder(root / "data" / "train", per_class=12)
    generate(GenerateConfig(data=str(folder), out=str(root / "labels.zarr"), teacher="test_resnet",
                            teacher_checkpoint=str(save_teacher(root / "t.pth")), views=3, topk=2, img_size=32,
                            samples_per_shard=64, views_per_shard=3, workers=0, progress=False))
    return root


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pth")


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API (moto's server) on 127.0.0.1 with an empty bucket "labels-bucket"."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import urllib.request

    # moto's backends live in the process, across servers: start from an empty S3
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).read()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("labels-bucket")
    try:
        yield env
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
