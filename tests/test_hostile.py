"""Unlucky and hostile inputs (issue 13, items 1, 3, 4, 11, 13, 14, 16; issue 15 item 7): the right
result or one line and exit 2, bounded work, nothing written lost. Real files throughout: tars written
here, FIFOs, symlinks to /dev/zero, sparse files for sizes that would be costly to write, a real
rendezvous port with nobody behind it, a real SIGKILL of a DataLoader worker and a real SIGINT.

Most cases call the library or ``relabel.commands.cli.main`` in this process: no interpreter start-up per case.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_imagefolder
from relabel.storage import LabelStore, UserError, open_source

pytestmark = pytest.mark.faults

GEN = ["--teacher", "test_resnet", "--topk", "2", "--img-size", "32", "--samples-per-shard", "64",
       "--batch-size", "32", "--quiet"]
TRAIN = ["--student", "test_resnet", "--epochs", "1", "--batch-size", "8", "--img-size", "32", "--workers", "0",
         "--device", "cpu", "--quiet"]


# ------------------------------------------------------------------------------------------ helpers
def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """relabel.commands.cli.main in this process: exit code, stdout, stderr."""
    from relabel.commands.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, int(e.value.code or 0), out.out, out.err)


def one_line(r: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    err = r.stderr.strip()
    assert r.returncode == code, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, r.stderr
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    return err


def user_error(fn, *needles: str) -> str:
    """``fn()`` raises a one-line UserError holding every needle."""
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def jpeg(seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def within(seconds: float, fn):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it is not done in time."""
    box: dict = {}

    def go():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds}s: a hang or an unbounded read"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """A file of ``size`` bytes that costs no disk: ``head`` then a hole."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory, teacher_ckpt):
    """9 images (JPEG and PNG), a store of 2 views in 2 view blocks, published to a local folder."""
    from relabel.stages.generate import GenerateConfig, generate
    from relabel.stages.publish import publish

    root = tmp_path_factory.mktemp("hostile")
    data = make_imagefolder(root / "data", per_class=3)
    store = root / "store"
    generate(GenerateConfig(data=str(data), out=str(store), teacher="test_resnet", teacher_checkpoint=str(teacher_ckpt),
                            views=2, topk=2, img_size=32, workers=0, samples_per_shard=64, views_per_shard=1,
                            progress=False))
    pub = root / "pub"
    publish(str(store), str(pub))
    return {"root": root, "data": data, "store": store, "pub": pub, "ckpt": teacher_ckpt}


# ------------------------------------------------------------------------------------------ 1. mixed folder
def test_folder_with_tars_and_class_folders_is_refused(tmp_path, tiny, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    write_tar(data / "extra-000000.tar", [("x/1.jpg", jpeg()), ("x/1.cls", b"0")])
    msg = user_error(lambda: open_source(data), "extra-000000.tar", "class folder", "/*.tar")
    assert "ant" in msg
    # through the CLI: one line, nothing created
    r = run_main(capsys, "generate", data, "--out", tmp_path / "out", "--teacher-checkpoint", tiny["ckpt"], *GEN)
    one_line(r, "class folder", ".tar")
    assert not (tmp_path / "out").exists()
    # the explicit choice still works: a glob picks the shards
    assert open_source(f"{data}/*.tar").keys == ["x/1"]
    # a tar folder with a sub-folder that holds no images is still a tar folder
    shards = tmp_path / "shards"
    write_tar(shards / "a-000000.tar", [("k.jpg", jpeg()), ("k.cls", b"0")])
    (shards / "notes").mkdir()
    (shards / "notes" / "readme.txt").write_text("hi")
    assert open_source(shards).keys == ["k"]


# ------------------------------------------------------------------------------------------ 3. duplicate keys
def test_duplicate_keys_in_shards_are_refused(tmp_path):
    two = tmp_path / "two"
    write_tar(two / "d-000000.tar", [("a/x.jpg", jpeg(0)), ("a/x.cls", b"0"), ("a/y.jpg", jpeg(1)), ("a/y.cls", b"1")])
    write_tar(two / "d-000001.tar", [("a/x.jpg", jpeg(2)), ("a/x.cls", b"1")])
    user_error(lambda: open_source(two), "'a/x'", "d-000000.tar", "d-000001.tar")
    one = tmp_path / "one"
    write_tar(one / "d-000000.tar", [("b/z.jpg", jpeg(0)), ("b/z.png", jpeg(1)), ("b/z.cls", b"0")])
    user_error(lambda: open_source(one), "'b/z'", "b/z.jpg", "b/z.png")
    cls2 = tmp_path / "cls2"
    write_tar(cls2 / "d-000000.tar", [("c.jpg", jpeg(0)), ("c.cls", b"0"), ("c.cls", b"1")])
    user_error(lambda: open_source(cls2), "'c'", "c.cls")


# ------------------------------------------------------------------------------------------ 4. output inside input
def test_outputs_inside_their_inputs_are_refused(tmp_path, tiny, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    store = tmp_path / "store"
    shutil.copytree(tiny["store"], store)
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    r = run_main(capsys, "generate", data, "--out", data / "labels", "--teacher-checkpoint", tiny["ckpt"], *GEN)
    one_line(r, "inside", "DATA")
    assert not (data / "labels").exists()
    link = tmp_path / "link"  # the same folder under another name
    link.symlink_to(data)
    one_line(run_main(capsys, "generate", data, "--out", link / "labels", "--teacher-checkpoint", tiny["ckpt"], *GEN),
             "inside")
    r = run_main(capsys, "export", store, "--to", store / "wds")
    one_line(r, "inside", "store")
    r = run_main(capsys, "export", store, "--to", data / "wds", "--images", data)
    one_line(r, "inside")
    assert not (store / "wds").exists() and not (data / "wds").exists()
    r = run_main(capsys, "train", data, "--labels", store, "--out", store / "run", *TRAIN)
    one_line(r, "inside", "label")
    assert not (store / "run").exists()
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before


# ------------------------------------------------------------------------------------------ 11. resumable pull
def test_pull_cut_short_resumes_and_is_not_a_store_meanwhile(tmp_path, tiny, capsys):
    from relabel.stages.publish import pull

    pub = tmp_path / "pub"
    shutil.copytree(tiny["pub"], pub)
    victim = "topk_logp/c/1/0/0"
    aside = tmp_path / "aside"
    (pub / victim).rename(aside)  # the source loses a file mid-way: the pull stops with what it has
    dest = tmp_path / "copy"
    one_line(run_main(capsys, "pull", pub, dest), victim)
    assert dest.is_dir() and any(dest.iterdir())
    # the partial copy is not a store: nothing reads half a pull as complete labels
    from relabel.storage.labels import open_labels

    with pytest.raises(UserError):
        LabelStore.open(dest)
    user_error(lambda: open_labels(str(dest)), "unfinished 'relabel pull'", "rerun")  # what train opens
    one_line(run_main(capsys, "info", dest), "unfinished 'relabel pull'")
    # another source into the same partial copy is refused
    other = tmp_path / "other_pub"
    shutil.copytree(tiny["pub"], other)
    one_line(run_main(capsys, "pull", other, dest), "unfinished pull")
    # the source is whole again: the same command finishes, fetching only what is missing
    aside.rename(pub / victim)
    res = pull(str(pub), str(dest))
    assert set(res.fetched) <= {victim, "zarr.json"} and victim in res.fetched, res.fetched
    assert len(res.reused) >= 10
    st = LabelStore.open(dest)
    assert st.complete and st.header.views == 2
    ref = LabelStore.open(tiny["store"])
    for v in range(2):
        for a, b in zip(st.read_view(v), ref.read_view(v)):
            np.testing.assert_array_equal(a, b)
    assert not [p for p in dest.rglob("*") if p.name.endswith(".partial") or ".pulling" in p.name]
    again = pull(str(pub), str(dest))
    assert again.fetched == [] and LabelStore.open(dest).complete


# ------------------------------------------------------------------------------------------ 13. bounded reads
@pytest.mark.parametrize("cls,needle", [(b"10000000", "10000000"), (b"-1", "-1"), (b"1.5", "1.5"),
                                        (b"\xff\xfe1", "UTF-8"), (b"7" * 5000, "bytes")],
                         ids=["huge", "negative", "float", "not-utf8", "oversized-member"])
def test_hostile_cls_members_give_one_line(tmp_path, cls, needle):
    d = tmp_path / "s"
    write_tar(d / "d-000000.tar", [("ok.jpg", jpeg()), ("ok.cls", b"0"), ("bad.jpg", jpeg(1)), ("bad.cls", cls)])
    within(20, lambda: user_error(lambda: open_source(d), "'bad'", needle))


def test_cls_above_the_class_list_is_refused(tmp_path):
    d = tmp_path / "s"
    write_tar(d / "d-000000.tar", [("a.jpg", jpeg()), ("a.cls", b"0"), ("b.jpg", jpeg(1)), ("b.cls", b"2")])
    (d / "classes.txt").write_text("zero\none\n")
    user_error(lambda: open_source(d), "2 names")
    (d / "classes.txt").write_bytes(b"zero\n\xff\xfe\n")
    user_error(lambda: open_source(d), "classes.txt", "UTF-8")
    (d / "classes.txt").unlink()
    sparse(d / "classes.json", 200 << 20, b"[")  # 200 MB (a hole): refused by size, never read
    within(20, lambda: user_error(lambda: open_source(d), "classes.json", "MiB"))


def test_fifo_devices_and_huge_files_named_jpg_are_bounded(tmp_path):
    data = make_imagefolder(tmp_path / "data", per_class=1, classes=("a",))
    os.mkfifo(data / "a" / "fifo.jpg")
    (data / "a" / "zero.jpg").symlink_to("/dev/zero")
    sparse(data / "a" / "huge.jpg", 300 << 20, b"\xff\xd8\xff")  # 300 MB, above the per-image cap
    src = open_source(data)
    assert src.keys == ["a/a_000", "a/fifo", "a/huge", "a/zero"]
    assert within(20, lambda: src.read(0))[:3] in (b"\x89PN", b"\xff\xd8\xff")
    within(20, lambda: user_error(lambda: src.read(1), "fifo.jpg", "not a regular file"))
    within(20, lambda: user_error(lambda: src.read(2), "huge.jpg", "MiB"))
    within(20, lambda: user_error(lambda: src.read(3), "zero.jpg", "not a regular file"))
    # the same for a member of a tar shard: its size is checked before it is read
    d = tmp_path / "tars"
    d.mkdir()
    with open(d / "d-000000.tar", "wb") as f:
        ti = tarfile.TarInfo("big.jpg")
        ti.size = 300 << 20
        f.write(ti.tobuf(tarfile.GNU_FORMAT))
        f.seek(ti.size, os.SEEK_CUR)  # a hole
        for name, payload in (("big.cls", b"0"),):
            t2 = tarfile.TarInfo(name)
            t2.size = len(payload)
            f.write(t2.tobuf(tarfile.GNU_FORMAT) + payload + b"\0" * (512 - len(payload)))
        f.write(b"\0" * 1024)
    tsrc = open_source(d)
    within(20, lambda: user_error(lambda: tsrc.read(0), "big.jpg", "MiB"))
    # a FIFO named like a shard is refused, not opened (opening it would block)
    f2 = tmp_path / "fifotars"
    f2.mkdir()
    os.mkfifo(f2 / "d-000000.tar")
    within(20, lambda: user_error(lambda: open_source(f2), "d-000000.tar", "not a regular file"))


def test_generate_over_a_fifo_image_does_not_hang(tmp_path, tiny, capsys):
    data = make_imagefolder(tmp_path / "data", per_class=2)
    os.mkfifo(data / "ant" / "fifo.jpg")
    out = tmp_path / "out"
    r = within(120, lambda: run_main(capsys, "generate", data, "--out", out, "--teacher-checkpoint", tiny["ckpt"],
                                     *GEN, "--views", "1", "--workers", "0"))
    if r.returncode == 0:  # recorded unreadable, or refused with one line: never a hang
        assert "unreadable=1" in r.stderr, r.stderr
    else:
        one_line(r, "fifo.jpg", "regular file")


# ------------------------------------------------------------------------------------------ 14. exports from others
@pytest.fixture(scope="module")
def export_dir(tiny):
    from relabel.stages.publish import export

    out = tiny["root"] / "export"
    export(str(tiny["store"]), str(out), images=str(tiny["data"]), shard_size=4)
    return out


def _tamper_json(src: Path, dst: Path, name: str, edit) -> Path:
    """A copy of folder ``src`` at ``dst`` whose JSON file ``name`` went through ``edit``."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / name).read_text())
    edit(doc)
    (dst / name).write_text(json.dumps(doc))
    return dst


@pytest.mark.parametrize("case", ["escape", "absolute", "url", "shards-not-list", "topk-text", "views-huge",
                                  "bad-json", "huge-file"])
def test_malformed_export_index_gives_one_line(tmp_path, export_dir, case):
    from relabel.storage.exported import read_exported
    from relabel.storage.labels import open_labels

    d = tmp_path / "x"
    shutil.copy(export_dir / "train-000000.tar", tmp_path / "secret.tar")  # what an escaping name would read
    edits = {
        "escape": lambda i: i["shards"][0].update(name="../secret.tar"),
        "absolute": lambda i: i["shards"][0].update(name="/etc/passwd"),
        "url": lambda i: i["shards"][0].update(name="s3://bucket/x.tar"),
        "shards-not-list": lambda i: i.update(shards={"a": 1}),
        "topk-text": lambda i: i.update(topk="two"),
        "views-huge": lambda i: i.update(views=10 ** 12),
    }
    if case in edits:
        _tamper_json(export_dir, d, "index.json", edits[case])
    else:
        shutil.copytree(export_dir, d)
        if case == "bad-json":
            (d / "index.json").write_text('{"format": "relabel-webdataset", ')
        else:
            sparse(d / "index.json", 100 << 20, b"{")
    needle = "not a plain .tar file name" if case in ("escape", "absolute", "url") else "index.json"
    within(20, lambda: user_error(lambda: read_exported(str(d)), "index.json", needle))
    within(20, lambda: user_error(lambda: open_labels(str(d)), "index.json"))


def _rewrite_member(shard: Path, suffix: str, new: bytes) -> None:
    """Replace the first member whose name ends with ``suffix``; order and the rest unchanged."""
    with tarfile.open(shard) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    i = next(i for i, (n, _) in enumerate(members) if n.endswith(suffix))
    members[i] = (members[i][0], new)
    write_tar(shard.with_suffix(".tmp"), members).replace(shard)


@pytest.mark.parametrize("case", ["npy-giant-shape", "npy-pickle", "npy-garbage", "cls-text", "member-name-escape"])
def test_malformed_export_shards_give_one_line(tmp_path, export_dir, case):
    from relabel.storage.exported import read_exported

    d = tmp_path / "x"
    shutil.copytree(export_dir, d)
    shard = d / "train-000000.tar"
    if case == "npy-giant-shape":
        hdr = "{'descr': '<u2', 'fortran_order': False, 'shape': (1000000000, 1000000000), }"
        hdr += " " * (127 - 10 - len(hdr)) + "\n"
        _rewrite_member(shard, ".labels.npy", b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode())
    elif case == "npy-pickle":
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        _rewrite_member(shard, ".labels.npy", buf.getvalue())
    elif case == "npy-garbage":
        _rewrite_member(shard, ".labels.npy", b"not an npy file at all")
    elif case == "cls-text":
        _rewrite_member(shard, ".cls", b"seven")
    else:
        with tarfile.open(shard) as tf:
            members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
        write_tar(shard, [("../../evil.labels.npy", members[-1][1])] + members)
    within(20, lambda: user_error(lambda: read_exported(str(d), verify=False), "train-000000.tar"))


@pytest.mark.parametrize("case", ["version-text", "size-negative", "store-not-dict", "no-views-per-shard",
                                  "files-list", "huge-file"])
def test_malformed_manifest_gives_one_line(tmp_path, tiny, capsys, case):
    src = tmp_path / "pub"
    edits = {
        "version-text": lambda m: m.update(version="one"),
        "size-negative": lambda m: next(iter(m["files"].values())).update(size=-5),
        "store-not-dict": lambda m: m.update(store=[1, 2]),
        "no-views-per-shard": lambda m: m["store"].pop("views_per_shard"),
        "files-list": lambda m: m.update(files=["zarr.json"]),
    }
    if case in edits:
        _tamper_json(tiny["pub"], src, "manifest.json", edits[case])
    else:
        shutil.copytree(tiny["pub"], src)
        sparse(src / "manifest.json", 300 << 20, b"{")
    r = within(60, lambda: run_main(capsys, "pull", src, tmp_path / "copy", "--views", "1"))
    one_line(r, "manifest", *(["MiB"] if case == "huge-file" else []))  # refused by size, not parsed
    assert not (tmp_path / "copy").exists() or not any((tmp_path / "copy").iterdir())


def test_pull_reads_no_more_than_the_manifest_lists(tmp_path, tiny, capsys):
    """A source file that never ends (/dev/zero) or is far larger than listed: cut at the listed size."""
    import resource

    rel = Path("topk_index") / "c" / "0" / "0" / "0"
    zero, big = tmp_path / "zero", tmp_path / "big"
    for src in (zero, big):
        shutil.copytree(tiny["pub"], src)
        (src / rel).unlink()
    (zero / rel).symlink_to("/dev/zero")
    sparse(big / rel, 2 << 30)  # 2 GiB (a hole)
    # a write limit (EFBIG, not a kill) keeps a reader that does not stop from filling the disk
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, hard))
    try:
        r = within(60, lambda: run_main(capsys, "pull", zero, tmp_path / "copy"))
        one_line(r, "topk_index/c/0/0/0", "regular file")
        r = within(60, lambda: run_main(capsys, "pull", big, tmp_path / "copy2"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    one_line(r, "topk_index/c/0/0/0", "sha256 mismatch", "more than")


# ------------------------------------------------------------------------------------------ 16. tracebacks
def test_non_utf8_file_names_give_one_line(tmp_path, tiny, capsys):
    data = make_imagefolder(tmp_path / "data", per_class=1, classes=("a",))
    bad = os.fsencode(str(data / "a")) + b"/caf\xe9.jpg"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, jpeg())
    os.close(fd)
    user_error(lambda: open_source(data), "UTF-8", "caf")
    r = run_main(capsys, "generate", data, "--out", tmp_path / "out", "--teacher-checkpoint", tiny["ckpt"], *GEN)
    one_line(r, "UTF-8")
    shards = tmp_path / "tars"
    shards.mkdir()
    with tarfile.open(shards / "d-000000.tar", "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        for name, payload in (("caf\xe9.jpg", jpeg()), ("caf\xe9.cls", b"0")):
            ti = tarfile.TarInfo(name)
            ti.size = len(payload)
            tf.addfile(ti, io.BytesIO(payload))
    user_error(lambda: open_source(shards), "UTF-8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stale_torchrun_environment_gives_one_line(tmp_path, tiny, capsys, monkeypatch):
    args = ["generate", tiny["data"], "--out", tmp_path / "out", "--teacher-checkpoint", tiny["ckpt"], *GEN]
    for k in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "TORCHELASTIC_USE_AGENT_STORE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    one_line(run_main(capsys, *args), "MASTER_ADDR", "torchrun")
    monkeypatch.setenv("WORLD_SIZE", "two")
    one_line(run_main(capsys, *args), "WORLD_SIZE")
    # a rendezvous address with nobody behind it: an error within the timeout, not a hang
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("RELABEL_DIST_TIMEOUT", "1")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        t = time.monotonic()
        r = within(60, lambda: run_main(capsys, *args))
        one_line(r, "rendezvous", "RELABEL_DIST_TIMEOUT")
        assert time.monotonic() - t < 30
    assert not (tmp_path / "out").exists()
    import torch.distributed as tdist

    assert not tdist.is_initialized()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def test_killed_dataloader_worker_gives_one_line(tmp_path, tiny, capsys):
    data = make_imagefolder(tmp_path / "data", per_class=14)
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    before = set(_children(os.getpid()))

    def killer():
        while not stop.is_set():
            new = [c for c in _children(os.getpid()) if c not in before]
            if new:
                os.kill(new[0], signal.SIGKILL)
                killed.append(new[0])
                return
            time.sleep(0.001)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        r = run_main(capsys, "generate", data, "--out", out, "--teacher-checkpoint", tiny["ckpt"], *GEN,
                     "--views", "20", "--views-per-shard", "1", "--workers", "1")
    finally:
        stop.set()
        t.join()
    assert killed, "no worker was started"
    one_line(r, "worker", "rerun")
    assert LabelStore.open(out).check_shards() == []  # what was written is intact; a rerun resumes


def test_ctrl_c_prints_the_resume_line(tmp_path, tiny, capsys):
    data = make_imagefolder(tmp_path / "data", per_class=14)
    out = tmp_path / "out"
    running, sent = threading.Event(), []

    def interrupt():
        while running.is_set():
            if list(out.glob("done/c/*/*")):  # the first shard is written: generate is mid-run
                os.kill(os.getpid(), signal.SIGINT)
                sent.append(1)
                return
            time.sleep(0.001)

    running.set()
    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    try:
        r = run_main(capsys, "generate", data, "--out", out, "--teacher-checkpoint", tiny["ckpt"], *GEN,
                     "--views", "40", "--views-per-shard", "1", "--workers", "0")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped relabel.commands.cli.main")
    finally:
        running.clear()
        t.join()
    assert sent, "generate ended before it could be interrupted"
    one_line(r, "interrupted", "rerun the same command to resume", code=130)


# ------------------------------------------------------------------------------------------ issue 15, item 7
def test_export_of_mixed_jpeg_png_loads_everywhere_with_the_same_bytes(tmp_path, tiny, export_dir, monkeypatch):
    """One member naming scheme whatever the mix: HF datasets and webdataset load it; training from
    the export reads the very bytes of the folder (so the same pixels)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import datasets
    import webdataset as wds

    folder = open_source(tiny["data"])
    kinds = {folder.read(i)[:3] for i in range(len(folder))}
    assert len(kinds) == 2  # the fixture mixes JPEG and PNG
    index = json.loads((export_dir / "index.json").read_text())
    files = [str(export_dir / s["name"]) for s in index["shards"]]
    assert len(files) >= 2
    ds = datasets.load_dataset("webdataset", data_files={"train": files}, split="train",
                               cache_dir=str(tmp_path / "c"))
    assert len(ds) == len(folder)
    by_key = {k: folder.read(i) for i, k in enumerate(folder.keys)}
    fields = {k for k in ds.features if not k.startswith("__")}
    img_field = [k for k in fields if k not in ("cls", "labels.npy")]
    assert len(img_field) == 1, fields
    for row in ds:
        v = row[img_field[0]]
        raw = v if isinstance(v, bytes) else v["bytes"] if isinstance(v, dict) else None
        if raw is None:  # an Image feature: compare decoded pixels
            from relabel.views import decode_image

            assert np.array_equal(np.asarray(v.convert("RGB")), np.asarray(decode_image(by_key[row["__key__"]])))
        else:
            assert raw == by_key[row["__key__"]]
    seen = 0
    for sample in wds.WebDataset(files, shardshuffle=False, empty_check=False):
        assert sample[img_field[0]] == by_key[sample["__key__"]]
        seen += 1
    assert seen == len(folder)
    # relabel train reads images from the export by key: the folder's bytes, so the same pixels
    tars = open_source(str(export_dir))
    assert tars.keys == folder.keys and tars.class_names == folder.class_names
    assert np.array_equal(tars.labels, folder.labels)
    for i, k in enumerate(tars.keys):
        assert tars.read(i) == by_key[k]
