"""Labels bound to their store and their place; runs that always finish (issue 21).

Every fault is made the way it happens: shard files copied in from another store (an rsync of two
machines' outputs into one folder), two shards swapped, the keys array edited with plain zarr, a
writer killed with SIGKILL whose claims then look alive, a pull of a range of views.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import ROOT, cli_inprocess as cli, make_imagefolder, run_cli, save_teacher, tree_bytes
from relabel.stages.generate import GenerateConfig, generate
from relabel.storage import ConfigError, LabelStore, StoreError

pytestmark = pytest.mark.faults

GEN = dict(teacher="test_resnet", views=4, topk=2, img_size=32, samples_per_shard=64, views_per_shard=2,
           batch_size=32, progress=False, workers=0)
GEN_CLI = ["--teacher", "test_resnet", "--views", "4", "--topk", "2", "--img-size", "32", "--samples-per-shard", "64",
           "--views-per-shard", "2", "--batch-size", "32", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two stores of the same images and settings, made by two different teachers."""
    root = tmp_path_factory.mktemp("bound")
    folder = make_imagefolder(root / "train", per_class=30)  # 90 samples: two sample blocks, 2 x 2 shards
    ckpt, other_ckpt = save_teacher(root / "t.pth"), save_teacher(root / "other.pth", seed=7)
    ref, other = root / "ref", root / "other"
    generate(GenerateConfig(data=str(folder), out=str(ref), teacher_checkpoint=str(ckpt), **GEN))
    generate(GenerateConfig(data=str(folder), out=str(other), teacher_checkpoint=str(other_ckpt), **GEN))
    return root, folder, ckpt, ref, other


def _copy(world, tmp_path) -> Path:
    out = tmp_path / "s"
    shutil.copytree(world[3], out)
    return out


def _cfg(world, out, **kw) -> GenerateConfig:
    return GenerateConfig(data=str(world[1]), out=str(out), teacher_checkpoint=str(world[2]), **{**GEN, **kw})


def _shard_files(store: Path, vb: int, sb: int) -> list[Path]:
    return [store / a / "c" / str(vb) / str(sb) / "0" for a in ("topk_index", "topk_logp")]


def _replay_all_epochs(world, store, epochs=40):
    """Touch every stored view the way a training loop does (``ReplayLoader.set_epoch``)."""
    import relabel

    loader = relabel.ReplayLoader(str(world[1]), str(store), batch_size=8, workers=0)
    for e in range(epochs):
        loader.set_epoch(e)
    return loader


def _probe_teacher(world, name: str, hook):
    """The world's teacher as a FunctionTeacher that calls ``hook(pixels)`` before each batch: a probe
    into what generate does at that moment (its claims, say), or a fault it injects."""
    import timm
    import torch

    from relabel.teacher import FunctionTeacher

    model = timm.create_model("test_resnet", num_classes=3)
    model.load_state_dict(torch.load(world[2], weights_only=True))
    model.eval()

    def fn(pixels):
        hook(pixels)
        return model((pixels.float() / 255 - 0.5) / 0.5)

    return FunctionTeacher(fn, num_classes=3, name=name, input_size=32)


# ------------------------------------------------------------------------- 1. shards bound to store and place
def test_a_shard_from_another_store_is_named_refused_and_repaired(world, tmp_path, capsys):
    out = _copy(world, tmp_path)
    for mine, theirs in zip(_shard_files(out, 1, 0), _shard_files(world[4], 1, 0)):
        shutil.copyfile(theirs, mine)  # intact files, valid checksums: only their origin is wrong
    r = cli(capsys, "verify", out, world[1], "--samples", "0")
    assert r.returncode == 1 and "verify FAILED" in r.stderr and "damaged shards 1" in r.stdout, r.stdout + r.stderr
    assert "shard 1/0" in r.stdout + r.stderr and "not the ones this store wrote" in r.stdout + r.stderr
    with pytest.raises(StoreError, match=r"shard 1/0 .*not the ones this store wrote.*`repair=True`"):
        _replay_all_epochs(world, out, epochs=1)  # refused before the first batch, whatever view comes first
    r = cli(capsys, "export", out, "--to", tmp_path / "wds")  # an export vouches for its labels: refused too
    assert r.returncode == 2 and "shard 1/0" in r.stderr and not (tmp_path / "wds" / "index.json").exists()
    r = cli(capsys, "train", world[1], "--labels", out, "--out", tmp_path / "run", "--student", "test_resnet",
            "--epochs", "30", "-b", "8", "--img-size", "32", "-j", "0", "--quiet")
    assert r.returncode == 2 and "shard 1/0" in r.stderr and "--repair" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    res = generate(_cfg(world, out, repair=True))
    assert res.shards_written == 1  # exactly the named shard
    assert tree_bytes(out) == tree_bytes(world[3])


def test_two_swapped_shards_of_one_store_are_both_named_and_repaired(world, tmp_path, capsys):
    out = _copy(world, tmp_path)
    (a_idx, a_lp), (b_idx, b_lp) = _shard_files(out, 0, 0), _shard_files(out, 1, 0)  # same shape: 2 views x 64
    for x, y in ((a_idx, b_idx), (a_lp, b_lp)):
        tmp = x.read_bytes()
        x.write_bytes(y.read_bytes())
        y.write_bytes(tmp)
    r = cli(capsys, "verify", out, world[1], "--samples", "0")
    assert r.returncode == 1 and "damaged shards 2" in r.stdout
    assert "shard 0/0" in r.stdout + r.stderr and "shard 1/0" in r.stdout + r.stderr
    assert generate(_cfg(world, out, repair=True)).shards_written == 2
    assert tree_bytes(out) == tree_bytes(world[3])


def test_a_reordered_keys_array_is_refused_and_repaired(world, tmp_path, capsys):
    out = _copy(world, tmp_path)
    g = zarr.open_group(str(out), mode="r+")
    keys = bytes(np.asarray(g["keys"][:])).decode().split("\n")
    keys[3], keys[40] = keys[40], keys[3]  # a valid chunk: only the order is wrong
    g["keys"][:] = np.frombuffer("\n".join(keys).encode(), np.uint8)
    r = cli(capsys, "verify", out, world[1], "--samples", "0")
    assert r.returncode == 2 and "not in the store's order" in r.stderr and "position 3" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(StoreError, match="not in the store's order"):
        _replay_all_epochs(world, out, epochs=1)
    generate(_cfg(world, out, repair=True))
    assert tree_bytes(out) == tree_bytes(world[3])


def test_publish_prints_a_digest_and_pull_refuses_foreign_shards_and_other_sets(world, tmp_path, capsys):
    pub, pub_other = tmp_path / "pub", tmp_path / "pub-other"
    r = run_cli("publish", world[3], pub)
    digest = r.stdout.split("label-set digest ")[1].split()[0]
    assert len(digest) == 64 and digest == LabelStore.open(world[3]).label_set_digest()
    run_cli("publish", world[4], pub_other)
    assert LabelStore.open(world[4]).label_set_digest() != digest
    # the right set, pinned: OK, and the copy says the same digest
    r = run_cli("pull", pub, tmp_path / "good", "--expect", digest)
    assert "(as expected)" in r.stdout and LabelStore.open(tmp_path / "good").label_set_digest() == digest
    # another set under the pin: refused, and DEST is no store
    r = run_cli("pull", pub_other, tmp_path / "pinned", "--expect", digest, check=False)
    assert r.returncode == 2 and "is not the expected" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(StoreError, match="unfinished .relabel pull"):
        LabelStore.open(tmp_path / "pinned")
    # a shard and its manifest line swapped in together: every sha256 matches, the seal does not
    man = json.loads((pub / "manifest.json").read_text())
    man_other = json.loads((pub_other / "manifest.json").read_text())
    for rel in ("topk_index/c/1/0/0", "topk_logp/c/1/0/0"):
        shutil.copyfile(pub_other / rel, pub / rel)
        man["files"][rel] = man_other["files"][rel]
    (pub / "manifest.json").write_text(json.dumps(man))
    r = run_cli("pull", pub, tmp_path / "mixed", check=False)
    assert r.returncode == 2 and "shard 1/0" in r.stderr and "do not belong together" in r.stderr
    with pytest.raises(StoreError, match="unfinished .relabel pull"):
        LabelStore.open(tmp_path / "mixed")
    r = run_cli("pull", pub, tmp_path / "x", "--expect", "abc", check=False)
    assert r.returncode == 2 and "--expect" in r.stderr


# ------------------------------------------------------------------------- 3. claims are leases
def _rewrite_claims_as_another_host(out: Path, age: float) -> int:
    claims = list((out / ".claims").glob("*")) if (out / ".claims").exists() else []
    for c in claims:
        c.write_text("node-that-was-preempted 4242")
        t = time.time() - age
        os.utime(c, (t, t))
    return len(claims)


def test_kill9_then_claims_of_another_host_with_an_old_heartbeat_are_taken_over(world, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "relabel", "generate", str(world[1]), "--out", str(out), "--teacher-checkpoint",
            str(world[2]), *GEN_CLI]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and p.poll() is None and not list((out / "done" / "c").glob("*/*")):
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not LabelStore.open(out).complete, "the run finished before it could be killed"
    # the rerun is in another container: the claims name a host that is not this one
    (out / ".claims").mkdir(exist_ok=True)
    (out / ".claims" / "1.1").write_text("x")  # (and one the killed run had not reached yet)
    assert _rewrite_claims_as_another_host(out, age=3600) >= 1
    res = generate(_cfg(world, out))
    assert res.complete
    assert tree_bytes(out) == tree_bytes(world[3])


def test_a_live_claim_is_left_alone_and_repair_takes_it_over(world, tmp_path, caplog):
    out = tmp_path / "s"
    st = LabelStore.create(out, LabelStore.open(world[3]).header, LabelStore.open(world[3]).keys,
                       LabelStore.open(world[3]).sample_classes())
    (out / ".claims").mkdir()
    (out / ".claims" / "0.1").write_text("another-node 99")  # fresh: its holder is working on it
    res = generate(_cfg(world, out))
    assert not res.complete and [(s.vb, s.sb) for s in st.pending_shards()] == [(0, 1)]
    assert "being computed by another process" in caplog.text
    res = generate(_cfg(world, out, repair=True))  # a user who knows better takes it over at once
    assert res.complete and res.shards_written == 1
    assert tree_bytes(out) == tree_bytes(world[3])


def test_writers_claim_a_few_shards_at_a_time(world, tmp_path):
    """A second writer finds work: the first holds one round's claims, not every pending shard."""
    out, held = tmp_path / "s", []
    probe = _probe_teacher(world, "claims-probe", lambda px: held.append(len(list((out / ".claims").glob("*")))))
    res = generate(_cfg(world, out, views=8), teacher=probe)  # 4 view blocks x 2 sample blocks = 8 shards
    assert res.complete and res.shards_written == 8 and held and max(held) == 2  # workers=0: two mix groups a round


def test_claim_lease_is_checked(world, tmp_path, capsys):
    r = cli(capsys, "generate", world[1], "--out", tmp_path / "s", "--teacher-checkpoint", world[2], *GEN_CLI,
            "--claim-lease", "0")
    assert r.returncode == 2 and "--claim-lease must be a finite number at least 1" in r.stderr


# ------------------------------------------------------------------------- 4. a pulled range of views
def test_a_pulled_range_of_views_trains_and_verifies_on_exactly_those_views(world, tmp_path, capsys):
    pub = tmp_path / "pub"
    run_cli("publish", world[3], pub)
    r = run_cli("pull", pub, tmp_path / "late", "--views", "3:4")
    assert "views 2-3 only" in r.stdout  # whole view block 1: views 2 and 3 are both there
    r = run_cli("pull", pub, tmp_path / "mid", "--views", "1:2")
    assert "views 0-1 only" in r.stdout
    late = tmp_path / "late"
    assert LabelStore.open(late).held_views == (2, 4)
    r = cli(capsys, "verify", late, world[1], "--samples", "16", "--teacher-checkpoint", world[2])
    assert r.returncode == 0 and "pending shards 0" in r.stdout and "checked 16 views" in r.stdout, r.stdout + r.stderr
    r = cli(capsys, "info", late)
    assert "2-3 of 4 (a pulled range)" in r.stdout and "complete: True" in r.stdout
    loader = _replay_all_epochs(world, late, epochs=12)
    seen = set()
    for e in range(12):
        loader.set_epoch(e)
        seen |= set(loader.epoch_views)
    assert seen == {2, 3}
    r = cli(capsys, "train", world[1], "--labels", late, "--out", tmp_path / "run", "--student", "test_resnet",
            "--epochs", "1", "-b", "8", "--img-size", "32", "-j", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    with pytest.raises(ConfigError, match="holds 2 view"):
        import relabel

        relabel.ReplayLoader(str(world[1]), str(late), batch_size=8, workers=0, views_limit=3)


# ------------------------------------------------------------------------- 5. ReplayLoader's batch size
@pytest.mark.parametrize("batch_size, needle", [(0, "whole number at least 1"), (-1, "whole number at least 1"),
                                                (2.5, "whole number at least 1"), (True, "whole number at least 1"),
                                                (1000, "more than the 90 usable samples")])
def test_replay_loader_refuses_batch_sizes_that_cannot_work(world, batch_size, needle):
    import relabel

    with pytest.raises(ConfigError, match=needle) as e:
        relabel.ReplayLoader(str(world[1]), str(world[3]), batch_size=batch_size, workers=0)
    assert "`batch_size" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------- 6. messages that say what differs
def test_resuming_an_own_size_ensemble_without_the_flag_names_the_flag(world, tmp_path, capsys):
    out = tmp_path / "ens"
    common = ["--teacher", "test_resnet", "--teacher", "test_resnet", "--teacher-checkpoint", world[2],
              "--teacher-checkpoint", world[2], "--views", "1", "--topk", "2", "--img-size", "32", "--workers", "0",
              "--quiet", "--samples-per-shard", "64", "--views-per-shard", "1"]
    assert cli(capsys, "generate", world[1], "--out", out, "--teacher-own-size", *common).returncode == 0
    assert "each at its own input size (--teacher-own-size)" in cli(capsys, "info", out).stdout
    r = cli(capsys, "generate", world[1], "--out", out, *common, "--views", "2")
    assert r.returncode == 2 and "--teacher-own-size (store: True, now: False)" in r.stderr
    assert "teacher (store:" not in r.stderr


def test_a_class_map_in_another_unicode_form_matches_its_folder(tmp_path, capsys):
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    folder = make_imagefolder(tmp_path / "train", per_class=4, classes=(nfd, "dog"))
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({nfc: 2, "dog": 0}), encoding="utf-8")
    ckpt = save_teacher(tmp_path / "t.pth", num_classes=3)
    r = cli(capsys, "generate", folder, "--out", tmp_path / "s", "--teacher-checkpoint", ckpt, "--class-map", cmap,
            *GEN_CLI)
    assert r.returncode == 0, r.stderr
    assert LabelStore.open(tmp_path / "s").header.class_map == [2, 0]
    # two folders that differ only in their normal form are ambiguous: one line naming both
    make_imagefolder(tmp_path / "two", per_class=2, classes=(nfd, nfc, "dog"))
    r = cli(capsys, "generate", tmp_path / "two", "--out", tmp_path / "s2", "--teacher-checkpoint", ckpt,
            "--class-map", cmap, *GEN_CLI)
    assert r.returncode == 2 and "differ only in Unicode normalization" in r.stderr


@pytest.mark.parametrize("extra, needle", [(["--preset", "usi"], "preset (run: None, now: usi)"),
                                           (["--kd-temperature", "2"], "kd_temperature (run: 1.0, now: 2.0)")])
def test_resume_refuses_a_preset_or_temperature_given_only_now(world, tmp_path, capsys, extra, needle):
    run = tmp_path / "run"
    base = ["train", world[1], "--labels", world[3], "--out", run, "--student", "test_resnet", "--epochs", "2",
            "-b", "8", "--img-size", "32", "-j", "0", "--quiet"]
    assert cli(capsys, *base, "--stop-epoch", "1").returncode == 0
    r = cli(capsys, *base, "--resume", *extra)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_growing_views_over_a_foreign_partial_shard_recomputes_it(world, tmp_path):
    three = tmp_path / "three"  # 3 views: view block 1 holds one view of two, so growing to 4 merges into it
    generate(_cfg(world, three, views=3))
    for mine, theirs in zip(_shard_files(three, 1, 0), _shard_files(world[4], 1, 0)):
        shutil.copyfile(theirs, mine)  # another store's (4-view) shard files in a 3-view store's place
    generate(_cfg(world, three, views=4))  # no repair: the grown shard is checked before it is merged into
    assert tree_bytes(three) == tree_bytes(world[3])


def test_a_pull_ending_inside_a_view_block_holds_the_whole_block(world, tmp_path, capsys):
    pub = tmp_path / "pub"
    run_cli("publish", world[3], pub)
    r = run_cli("pull", pub, tmp_path / "p03", "--views", "0:3")
    assert r.returncode == 0 and "all sha256 OK" in r.stdout and "views 0-2" not in r.stdout  # 0:3 -> the whole store
    assert LabelStore.open(tmp_path / "p03").label_set_digest() == LabelStore.open(world[3]).label_set_digest()
    r = run_cli("pull", pub, tmp_path / "p01", "--views", "1")
    assert "views 0-1 only" in r.stdout
    r = cli(capsys, "verify", tmp_path / "p01", world[1], "--samples", "0")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_stalled_writer_whose_claim_was_taken_over_does_not_write(world, tmp_path, caplog):
    """Writer A stalls past its lease; B takes the shard over. A, resuming, must not write it."""
    out, taken = tmp_path / "s", []

    def take_over(pixels):
        if not taken:  # while A computes its first shards, B takes their claims over
            for c in (out / ".claims").glob("*.*"):
                c.write_text("writer-b 77")
                taken.append(c.name)

    res = generate(_cfg(world, out), teacher=_probe_teacher(world, "takeover-probe", take_over))
    assert taken and "taken over by another writer" in caplog.text
    assert not res.complete and res.shards_written == 4 - len(taken)  # the taken shards were left to B
    kept = sum((sh.v1 - sh.v0) * (sh.s1 - sh.s0) for sh in LabelStore.open(out).shards() if sh.done)
    assert res.views_written == kept  # what it stored, not what it computed (issue 28 item 9)
    assert all((out / ".claims" / c).read_text() == "writer-b 77" for c in taken)  # and B's claims were kept


def test_an_empty_claim_is_held_until_its_lease_runs_out(world, tmp_path):
    out = tmp_path / "s"
    LabelStore.create(out, LabelStore.open(world[3]).header, LabelStore.open(world[3]).keys,
                       LabelStore.open(world[3]).sample_classes())
    (out / ".claims").mkdir()
    (out / ".claims" / "1.0").write_text("")  # created, not yet written: its writer is alive
    assert not generate(_cfg(world, out)).complete
    t = time.time() - 3600
    os.utime(out / ".claims" / "1.0", (t, t))
    assert generate(_cfg(world, out)).complete
    assert tree_bytes(out) == tree_bytes(world[3])


def test_publish_refuses_an_edited_keys_array_and_the_digest_covers_the_keys(world, tmp_path, capsys):
    out = _copy(world, tmp_path)
    g = zarr.open_group(str(out), mode="r+")
    keys = bytes(np.asarray(g["keys"][:])).decode().split("\n")
    keys[3], keys[40] = keys[40], keys[3]
    g["keys"][:] = np.frombuffer("\n".join(keys).encode(), np.uint8)
    r = run_cli("publish", out, tmp_path / "pub", check=False)
    assert r.returncode == 2 and "not in the store's order" in r.stderr


# ------------------------------------------------------------------------- a batch that does not fit (issue 23)
def test_a_teacher_batch_out_of_memory_is_one_line_and_keeps_the_written_shards(world, tmp_path):
    import torch

    from relabel.storage import RelabelError

    calls = []

    def oom(pixels):
        calls.append(len(pixels))
        if len(calls) == 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    out = tmp_path / "s"
    with pytest.raises(RelabelError) as e:
        generate(_cfg(world, out), teacher=_probe_teacher(world, "oom-probe", oom))
    msg = str(e.value)
    assert "ran out of CPU memory at `batch_size=32`" in msg and "shard(s) written so far are kept" in msg
    assert "\n" not in msg and 0 < sum(LabelStore.open(out).done_views().ravel() > 0) < 4


def test_a_student_batch_out_of_memory_is_one_line_and_keeps_the_last_checkpoint(world, tmp_path):
    import torch
    from timm.models import register_model

    from relabel.storage import RelabelError
    from relabel.train.loop import TrainConfig, train

    class Tiny(torch.nn.Module):
        def __init__(self, num_classes=3, **kw):
            super().__init__()
            self.fc, self.calls, self.num_classes = torch.nn.Linear(3, num_classes), 0, num_classes
            self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 1.0,
                                   "input_size": (3, 32, 32)}

        def forward(self, x):
            self.calls += 1
            if self.calls == 14:  # in the second epoch (11 steps an epoch)
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
            return self.fc(x.mean((2, 3)))

    @register_model
    def relabel_oom_probe(pretrained=False, **kw):
        return Tiny(**{k: v for k, v in kw.items() if k == "num_classes"})

    run = tmp_path / "run"
    kw = dict(data=str(world[1]), labels=str(world[3]), out=str(run), student="relabel_oom_probe", epochs=3,
              batch_size=8, img_size=32, workers=0, progress=False, log=False, model_ema=False)
    with pytest.raises(RelabelError) as e:
        train(TrainConfig(**kw))
    msg = str(e.value)
    assert "ran out of CPU memory at `batch_size=8`" in msg and "epoch 1 in" in msg and "last.pth is kept" in msg
    assert "\n" not in msg and torch.load(run / "last.pth", weights_only=True)["epoch"] == 1


def test_an_iterator_started_before_set_epoch_keeps_its_epochs_labels(world):
    """A loop that calls set_epoch while an older iterator is still being read must not pair the old
    epoch's samples with the new epoch's label rows."""
    import relabel

    ld = relabel.ReplayLoader(str(world[1]), str(world[3]), batch_size=8, workers=0)
    want = [(b["positions"].clone(), b["topk_logp"].clone()) for b in ld]  # epoch 0, read whole
    old, other = ld.epoch_views, 1
    while ld.set_epoch(other) or ld.epoch_views == old:  # an epoch that shows another view
        other += 1
    ld.set_epoch(0)
    it = iter(ld)
    first = next(it)
    ld.set_epoch(other)  # the new epoch's labels are loaded while `it` still reads the old one
    got = [(first["positions"], first["topk_logp"])] + [(b["positions"], b["topk_logp"]) for b in it]
    assert len(got) == len(want)
    for (p1, l1), (p2, l2) in zip(got, want):
        assert torch_equal(p1, p2) and torch_equal(l1, l2)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
