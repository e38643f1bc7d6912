"""As strict from Python as from the shell (issue 28): limits written once, repair that trusts
nothing, labels bound to the image bytes, one stream per iterator, pulls that check the header.

Each fault is made as it happens to a user: shard files copied in from a store of another copy of
the images, an image replaced by another under its name, a manifest edited by hand, a second
iterator taken inside a training loop, a wrong value passed to a library function.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from conftest import cli_inprocess as cli, make_imagefolder, run_cli, save_teacher, tree_bytes
from relabel.stages.generate import GenerateConfig, generate
from relabel.storage import ConfigError, LabelStore, StoreError

pytestmark = pytest.mark.faults

GEN = dict(teacher="test_resnet", views=4, topk=2, img_size=32, samples_per_shard=64, views_per_shard=2,
           batch_size=32, progress=False, workers=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three copies of 90 images under the same names: A; B, equal but for one truncated JPEG; C, every
    image re-encoded (other bytes, other pixels). A store of each, made with the same settings."""
    root = tmp_path_factory.mktemp("strict")
    a = make_imagefolder(root / "a", per_class=30)
    b, c = root / "b", root / "c"
    shutil.copytree(a, b)
    shutil.copytree(a, c)
    victim = sorted(b.rglob("*.jpg"))[5]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated: unreadable in B only
    for p in sorted(c.rglob("*.*")):
        img = Image.open(p).convert("RGB")
        img = Image.fromarray(255 - np.asarray(img))  # other pixels under the same name
        img.save(p, format="PNG" if p.suffix == ".png" else "JPEG", quality=80)
    ckpt = save_teacher(root / "t.pth")
    stores = {}
    for name, data in (("a", a), ("b", b), ("c", c)):
        stores[name] = root / f"{name}.zarr"
        generate(GenerateConfig(data=str(data), out=str(stores[name]), teacher_checkpoint=str(ckpt), **GEN))
    stores["s"] = root / "s.zarr"  # A again, keyed by file name: an image moved to another class keeps its key
    generate(GenerateConfig(data=str(a), out=str(stores["s"]), teacher_checkpoint=str(ckpt), key_rule="stem", **GEN))
    return dict(root=root, a=a, b=b, c=c, ckpt=ckpt, victim=victim.relative_to(b).with_suffix("").as_posix(),
                **{f"{k}_store": v for k, v in stores.items()})


def _copy_store(w, tmp_path, name="a") -> Path:
    out = tmp_path / "s"
    shutil.copytree(w[f"{name}_store"], out)
    return out


def _shard_files(store: Path, vb: int, sb: int) -> list[Path]:
    """Every file of one shard, its seal included (what an rsync of another store's output brings)."""
    return ([store / a / "c" / str(vb) / str(sb) / "0" for a in ("topk_index", "topk_logp", "digests", "seals")]
            + [store / "status" / "c" / str(vb) / str(sb)])


def _graft(src: Path, dst: Path, vb: int, sb: int) -> None:
    for theirs, mine in zip(_shard_files(src, vb, sb), _shard_files(dst, vb, sb)):
        shutil.copyfile(theirs, mine)


def _mtimes(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()
            and p.parts[len(store.parts)] in ("topk_index", "topk_logp", "status", "digests")}


# ------------------------------------------------------------------------- 1. repair trusts nothing it names
def test_repair_of_a_shard_with_a_foreign_unreadable_mark_equals_a_clean_run(world, tmp_path, capsys):
    """B's copy of one image was damaged: B's shard 1/0 calls it unreadable. Copied into A (same
    settings, same names: its seal is valid here), it must be named, recomputed from A's images, and
    leave every other shard alone; the sample decodes here, so it is labelled in every view block."""
    out = _copy_store(world, tmp_path)
    key = world["victim"]
    keys = LabelStore.open(out).keys
    sb = keys.index(key) // 64
    _graft(world["b_store"], out, 1, sb)
    r = cli(capsys, "verify", out, world["a"], "--samples", "0")
    assert r.returncode == 1 and f"shard 1/{sb}" in r.stderr and "decodes here" in r.stderr, r.stdout + r.stderr
    before = _mtimes(out)
    res = generate(GenerateConfig(data=str(world["a"]), out=str(out), teacher_checkpoint=str(world["ckpt"]),
                                  repair=True, **GEN))
    assert res.shards_written == 1 and res.views_written == 2 * (min(64 * (sb + 1), 90) - 64 * sb)
    assert tree_bytes(out) == tree_bytes(world["a_store"])
    after = _mtimes(out)
    touched = {k for k in before if after.get(k) != before[k]}
    assert touched and all(f"/c/1/{sb}" in k for k in touched), touched  # only the named shard was rewritten
    assert LabelStore.open(out).status()[keys.index(key)] == 1


def test_repair_of_an_edited_status_byte_equals_a_clean_run(world, tmp_path):
    out = _copy_store(world, tmp_path)
    g = zarr.open_group(str(out), mode="r+")
    st = g["status"]
    st[0, 3] = 2  # one sample of shard 0/0 marked unreadable by hand
    res = generate(GenerateConfig(data=str(world["a"]), out=str(out), teacher_checkpoint=str(world["ckpt"]),
                                  repair=True, **GEN))
    assert res.shards_written == 1
    assert tree_bytes(out) == tree_bytes(world["a_store"])


# ------------------------------------------------------------------------- 2. labels bound to the image bytes
def test_a_shard_made_from_other_image_bytes_is_named_refused_and_repaired(world, tmp_path, capsys):
    """C's images have A's names and other pixels; C's shard with its seal copied into A is valid as a
    file, but not for A's images: verify (also --samples 0) names it and the changed images, training
    refuses, repair recomputes exactly that shard."""
    out = _copy_store(world, tmp_path)
    _graft(world["c_store"], out, 1, 0)
    r = cli(capsys, "verify", out, world["a"], "--samples", "0")
    assert r.returncode == 1 and "shard 1/0" in r.stderr and "not the bytes it was labelled from" in r.stderr
    assert "changed: 64 image(s)" in r.stderr, r.stderr
    r = cli(capsys, "train", world["a"], "--labels", out, "--out", tmp_path / "run", "--student", "test_resnet",
            "--epochs", "1", "-b", "8", "--img-size", "32", "-j", "0", "--quiet")
    assert r.returncode == 2 and "different image bytes in different view blocks" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    res = generate(GenerateConfig(data=str(world["a"]), out=str(out), teacher_checkpoint=str(world["ckpt"]),
                                  repair=True, **GEN))
    assert res.shards_written == 1 and tree_bytes(out) == tree_bytes(world["a_store"])


def test_stage_two_refuses_an_image_that_is_not_the_one_labelled(world, tmp_path):
    """DATA where one image was swapped for another under its name: the batch that reads it stops
    with one line naming the key, in the worker and in the main process alike."""
    import relabel

    data = tmp_path / "data"
    shutil.copytree(world["a"], data)
    key = LabelStore.open(world["a_store"]).keys[7]
    path = next(p for p in data.rglob("*.*") if p.relative_to(data).with_suffix("").as_posix() == key)
    img = Image.open(path).convert("RGB")
    img.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    for workers in (0, 1):
        loader = relabel.ReplayLoader(str(data), str(world["a_store"]), batch_size=90, workers=workers)
        with pytest.raises(Exception, match=f"image {key!r} is not the image its labels were made from"):
            for _ in loader:
                pass
    r = run_cli("verify", world["a_store"], data, "--samples", "0", check=False)
    assert r.returncode == 1 and f"changed: 1 image(s) are not the bytes their labels were made from ('{key}')" in r.stderr


def test_stores_made_before_digests_still_train_and_say_they_have_none(world, tmp_path, capsys):
    """A schema-3 store (seals, no digests) and a schema-2 store (neither) train, and verify says what
    they cannot tell apart (issue 28 item 5: schema 2 was refused by train)."""
    for schema in (3, 2):
        out = tmp_path / f"s{schema}"
        shutil.copytree(world["a_store"], out)
        _downgrade(out, schema)
        r = cli(capsys, "verify", out, world["a"], "--samples", "0")
        assert r.returncode == 0 and "records no digests" in r.stderr, r.stdout + r.stderr
        r = cli(capsys, "train", world["a"], "--labels", out, "--out", tmp_path / f"run{schema}", "--student",
                "test_resnet", "--epochs", "1", "-b", "8", "--img-size", "32", "-j", "0", "--quiet")
        assert r.returncode == 0, r.stderr


def _downgrade(out: Path, schema: int) -> None:
    """Make a store look as an older relabel wrote it: no digests or classes, header of that schema;
    schema 3 keeps seals (recomputed for its identity), schema 2 has none."""
    for name in ("digests", "sample_class") + (("seals",) if schema < 3 else ()):
        shutil.rmtree(out / name)
    meta = json.loads((out / "zarr.json").read_text())
    h = meta["attributes"]["relabel"]
    for name in ("key_rule", "render_rules"):
        h.pop(name)
    h["schema_version"] = schema
    from relabel.storage.sources import fingerprint

    keys = bytes(zarr.open_group(str(out), mode="r")["keys"][:]).decode().split("\n")
    h["fingerprint"] = fingerprint(keys, h["class_names"])  # v1: keys and class names
    (out / "zarr.json").write_text(json.dumps(meta))
    if schema >= 3:
        st = LabelStore.open(out, mode="r+")
        for sh in st.shards():
            if sh.done:
                st.group["seals"][sh.vb, sh.sb] = np.frombuffer(st.seal(sh), np.uint8)


# ------------------------------------------------------------------------- 3. one stream per iterator
def test_two_iterators_of_one_loader_never_share_a_stream(world):
    import relabel

    loader = relabel.ReplayLoader(str(world["a"]), str(world["a_store"]), batch_size=14, workers=2)
    ref = [b["positions"].tolist() for b in loader]
    assert len(ref) == 6
    a, b = iter(loader), iter(loader)
    got_a, got_b = [], []
    for _ in range(6):  # interleaved
        got_a.append(next(a)["positions"].tolist())
        got_b.append(next(b)["positions"].tolist())
    assert got_a == ref and got_b == ref
    seen = []
    for i, batch in enumerate(loader):  # a peek inside the loop
        seen.append(batch["positions"].tolist())
        if i == 1:
            next(iter(loader))
    assert seen == ref
    assert [b["positions"].tolist() for b in loader] == ref  # and the persistent workers still serve


# ------------------------------------------------------------------------- 4. pull checks what it relies on
@pytest.mark.parametrize("edit, field", [(("views_per_shard", 1), "views_per_shard"), (("views", 40), "views")])
def test_pull_refuses_a_manifest_whose_header_was_edited(world, tmp_path, edit, field):
    pub = tmp_path / "pub"
    r = run_cli("publish", world["a_store"], pub)
    digest = re.search(r"\b[0-9a-f]{64}\b", r.stdout + r.stderr).group(0)
    man = json.loads((pub / "manifest.json").read_text())
    man["store"][edit[0]] = edit[1]
    (pub / "manifest.json").write_text(json.dumps(man))
    r = run_cli("pull", pub, tmp_path / "copy", "--views", "2:3", "--expect", digest, check=False)
    assert r.returncode == 2 and f"says {field} = " in r.stderr and "the manifest was edited" in r.stderr, r.stderr
    with pytest.raises(StoreError):
        LabelStore.open(tmp_path / "copy")  # an unfinished pull, never a store


# ------------------------------------------------------------------------- 6-8. the API checks what the CLI checks
def _bad(fn, needle):
    with pytest.raises(ConfigError) as e:
        fn()
    assert needle in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_replay_loader_checks_sizes_devices_and_numbers(world):
    import relabel

    d, s = str(world["a"]), str(world["a_store"])
    for size in (100000, -5, 0, 33.5):
        _bad(lambda: relabel.ReplayLoader(d, s, batch_size=8, workers=0, img_size=size), "`img_size` must be")
    for dev in ("cuda", "cuda:0"):
        _bad(lambda: relabel.ReplayLoader(d, s, batch_size=8, workers=0, device=dev), "no CUDA GPU is visible")
    for dev in ("mps", "banana"):
        _bad(lambda: relabel.ReplayLoader(d, s, batch_size=8, workers=0, device=dev), "`device` must be")
    _bad(lambda: relabel.ReplayLoader(d, s, batch_size=8, workers=0, views_limit=2.5), "`views_limit` must be")
    _bad(lambda: relabel.ReplayLoader(d, s, batch_size=8, workers=0, seed=1.5), "`seed` must be")
    _bad(lambda: relabel.ReplayLoader(d, s, batch_size=8, workers=0, seed=2**70), "`seed` must be")
    loader = relabel.ReplayLoader(d, s, batch_size=8, workers=0, rank=np.int64(0), world=np.int64(1))
    assert loader.rank == 0 and loader.world == 1


def test_config_records_and_library_functions_refuse_what_the_cli_refuses(world, tmp_path):
    import torch

    import relabel
    from relabel.train.losses import kd_loss
    from relabel.views import create_recipe, view_params

    gen = dict(data=str(world["a"]), out=str(tmp_path / "x"))
    _bad(lambda: relabel.GenerateConfig(**gen, views="3"), "`views` must be a whole number from 1 to 65,535")
    _bad(lambda: relabel.GenerateConfig(**gen, workers=None), "`workers` must be a whole number at least 0")
    _bad(lambda: relabel.GenerateConfig(**gen, device=None), "`device` must be")
    _bad(lambda: relabel.GenerateConfig(**gen, class_map={"a": 1}), "`class_map` must be text")
    _bad(lambda: relabel.GenerateConfig(**gen, seed=None), "`seed` must be a whole number")
    _bad(lambda: relabel.GenerateConfig(**gen, seed=1.5), "`seed` must be a whole number")
    _bad(lambda: relabel.GenerateConfig(**gen, teacher_weight=[float("nan")]), "`teacher_weight` must be")
    _bad(lambda: relabel.GenerateConfig(**gen, teacher_weight=[-1.0]), "`teacher_weight` must be")
    _bad(lambda: relabel.verify_labels(str(world["a_store"]), str(world["a"]), samples="5"), "`samples` must be")
    _bad(lambda: relabel.verify_labels(str(world["a_store"]), str(world["a"]), batch_size=0), "`batch_size` must be")
    _bad(lambda: relabel.TrainConfig(data="d", labels=None, out="o", epochs=1.5), "`epochs` must be a whole number")
    _bad(lambda: relabel.TrainConfig(data="d", labels=None, out="o", batch_size=None), "`batch_size` must be")
    _bad(lambda: view_params(create_recipe("usi"), 0, "k", 0, (0, 0)), "`size` must be a whole number at least 1")
    _bad(lambda: kd_loss(torch.zeros(2, 5), torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3), temperature=0),
         "`temperature` must be a finite number above 0")
    one = relabel.FunctionTeacher(lambda x: torch.zeros(len(x), 3), num_classes=3, name="one")
    _bad(lambda: relabel.EnsembleTeacher([one]), "at least two teachers")
    _bad(lambda: relabel.FunctionTeacher(lambda x: x, num_classes=0, name="f"), "`num_classes` must be")
    _bad(lambda: relabel.FunctionTeacher(lambda x: x, num_classes=3, name=""), "`name` must be a non-empty name")
    _bad(lambda: relabel.FunctionTeacher(lambda x: x, num_classes=3, name="f", input_size=-1), "`input_size` must be")
    from relabel.stages.publish import export, publish, pull

    _bad(lambda: pull(str(tmp_path / "p"), str(tmp_path / "d"), jobs=0), "`jobs` must be a whole number from 1 to 256")
    _bad(lambda: pull(str(tmp_path / "p"), str(tmp_path / "d"), expect="abc"), "`expect` must be the 64-hex-digit")
    _bad(lambda: publish(str(world["a_store"]), str(tmp_path / "q"), jobs=-1), "`jobs` must be")
    _bad(lambda: export(str(world["a_store"]), str(tmp_path / "e"), shard_size=0), "`shard_size` must be")
    _bad(lambda: export(str(world["a_store"]), str(tmp_path / "e"), prefix="../x"), "`prefix` must be letters")


# ------------------------------------------------------------------------- 9. smaller
def test_an_edited_recipe_file_names_the_field_that_changed(world, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: usi\nname: rec\nhflip: 0.5\n")
    args = ["generate", world["a"], "--out", tmp_path / "s", "--teacher", "test_resnet", "--teacher-checkpoint",
            world["ckpt"], "--views", "1", "--topk", "2", "--img-size", "32", "--samples-per-shard", "64",
            "--workers", "0", "--recipe", recipe, "--quiet"]
    assert cli(capsys, *args).returncode == 0
    recipe.write_text("base: usi\nname: rec\nhflip: 0.25\n")
    r = cli(capsys, *args)
    assert r.returncode == 2 and "hflip: 0.5 -> 0.25" in r.stderr, r.stderr


@pytest.mark.parametrize("weight", ["nan", "-1", "0"])
def test_a_bad_teacher_weight_is_refused_even_for_one_teacher(world, tmp_path, capsys, weight):
    r = cli(capsys, "generate", world["a"], "--out", tmp_path / "s", "--teacher", "test_resnet", "--teacher-weight",
            weight, "--quiet")
    assert r.returncode == 2 and "--teacher-weight must be" in r.stderr and not (tmp_path / "s").exists(), r.stderr


@pytest.mark.parametrize("args, needle", [(["demo", "--limit", "3"], "--limit must be a whole number at least 100"),
                                          (["demo", "--limit", "0"], "--limit must be"),
                                          (["demo", "--limit", "-1"], "--limit must be"),
                                          (["bench", "labels", "--label-views", "-5"], "--label-views must be")])
def test_demo_and_bench_refuse_sizes_that_cannot_work(tmp_path, capsys, args, needle):
    r = cli(capsys, *args, "--out" if args[0] == "demo" else "--repeats", tmp_path / "d" if args[0] == "demo" else 1)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ------------------------------------------------------------------------- found in review
def _misfiled_copy(world, tmp_path) -> tuple[Path, str]:
    """A copy of A's images with one image moved into another class's folder (same file name)."""
    data = tmp_path / "misfiled"
    shutil.copytree(world["a"], data)
    src = sorted((data / "ant").glob("*.jpg"))[0]
    shutil.move(src, data / "bee" / src.name)
    return data, f"ant/{src.stem}"


def test_a_refused_repair_changes_nothing(world, tmp_path, capsys):
    """A repair with DATA of other settings (an image filed under another class) is refused before it
    touches the store: not even the metadata it would rebuild."""
    out = _copy_store(world, tmp_path, "s")
    data, _ = _misfiled_copy(world, tmp_path)
    before = tree_bytes(out)
    r = cli(capsys, "generate", data, "--out", out, "--teacher", "test_resnet", "--teacher-checkpoint", world["ckpt"],
            "--views", "4", "--topk", "2", "--img-size", "32", "--samples-per-shard", "64", "--views-per-shard", "2",
            "--batch-size", "32", "--workers", "0", "--key-rule", "stem", "--repair", "--quiet")
    assert r.returncode == 2 and "other settings" in r.stderr, r.stderr
    assert tree_bytes(out) == before


def test_verify_names_an_image_filed_under_another_class(world, tmp_path, capsys):
    data, key = _misfiled_copy(world, tmp_path)
    r = cli(capsys, "verify", world["s_store"], data, "--samples", "0")
    stem = key.split("/")[1]
    assert r.returncode == 1 and f"misfiled: 1 image(s)" in r.stderr and repr(stem) in r.stderr, r.stdout + r.stderr


def test_a_foreign_digests_file_names_the_shard_not_the_images(world, tmp_path, capsys):
    out = _copy_store(world, tmp_path)
    shutil.copyfile(world["c_store"] / "digests" / "c" / "1" / "0" / "0", out / "digests" / "c" / "1" / "0" / "0")
    r = cli(capsys, "verify", out, world["a"], "--samples", "0")
    assert r.returncode == 1 and "shard 1/0" in r.stderr and "changed:" not in r.stderr, r.stderr
    generate(GenerateConfig(data=str(world["a"]), out=str(out), teacher_checkpoint=str(world["ckpt"]), repair=True,
                            **GEN))
    assert tree_bytes(out) == tree_bytes(world["a_store"])


@pytest.mark.parametrize("schema", [3, 2])
def test_a_store_of_an_older_schema_is_repaired_in_its_own_schema(world, tmp_path, schema):
    """Stores made before schema 4 are read, trained on and repaired (the message that sends a user to
    --repair must lead somewhere); they are not extended."""
    ref = tmp_path / "ref"
    shutil.copytree(world["a_store"], ref)
    _downgrade(ref, schema)
    out = tmp_path / "s"
    shutil.copytree(ref, out)
    f = out / "topk_logp" / "c" / "1" / "0" / "0"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))
    res = generate(GenerateConfig(data=str(world["a"]), out=str(out), teacher_checkpoint=str(world["ckpt"]),
                                  repair=True, **GEN))
    assert res.shards_written == 1 and tree_bytes(out) == tree_bytes(ref)
    with pytest.raises(ConfigError, match="not extended"):
        generate(GenerateConfig(data=str(world["a"]), out=str(out), teacher_checkpoint=str(world["ckpt"]),
                                **{**GEN, "views": 6}))


def test_export_with_images_refuses_images_that_are_not_the_labelled_ones(world, tmp_path, capsys):
    data = tmp_path / "changed"
    shutil.copytree(world["a"], data)
    key = LabelStore.open(world["a_store"]).keys[3]
    path = next(p for p in data.rglob("*.*") if p.relative_to(data).with_suffix("").as_posix() == key)
    Image.open(path).convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(
        path, format="PNG" if path.suffix == ".png" else "JPEG")
    r = cli(capsys, "export", world["a_store"], "--to", tmp_path / "e1", "--images", data, "-q")
    assert r.returncode == 2 and f"image {key!r} is not the image its labels were made from" in r.stderr, r.stderr
    assert not (tmp_path / "e1" / "index.json").exists()
    misfiled, _ = _misfiled_copy(world, tmp_path)
    r = cli(capsys, "export", world["s_store"], "--to", tmp_path / "e2", "--images", misfiled, "-q")
    assert r.returncode == 2 and "filed under another class" in r.stderr, r.stderr


def test_the_settings_added_this_round_refuse_wrong_values_from_python(world, tmp_path):
    """key_rule, render_kernel, the share and show records: a string, a float, None, 0, a huge number."""
    import relabel
    from relabel.stages.share_config import ExportConfig, PublishConfig, PullConfig
    from relabel.stages.show_config import ShowConfig, StatsConfig

    gen = dict(data=str(world["a"]), out=str(tmp_path / "x"))
    for value in ("md5", 3, None):
        _bad(lambda: relabel.GenerateConfig(**gen, key_rule=value), "`key_rule` must be one of path, stem, imagenet")
    for value in ("fast", 1.5, None):
        _bad(lambda: relabel.GenerateConfig(**gen, render_kernel=value), "`render_kernel` must be one of auto")
        _bad(lambda: relabel.TrainConfig(data="d", labels=None, out="o", render_kernel=value), "`render_kernel` must be")
        _bad(lambda: relabel.ReplayLoader(str(world["a"]), str(world["a_store"]), batch_size=8, workers=0,
                                          render_kernel=value), "`render_kernel` must be")
    for value in ("8", 2.5, None, 0, 10**9):
        _bad(lambda: PullConfig(src="a", dest="b", jobs=value), "`jobs` must be a whole number from 1 to 256")
        _bad(lambda: PublishConfig(store="a", dest="b", jobs=value), "`jobs` must be")
    for value in ("8", 2.5, 0, -1):
        _bad(lambda: ExportConfig(store="a", to="b", shard_size=value), "`shard_size` must be")
    for value in ("x", 0.5, None, 0):
        _bad(lambda: ShowConfig(store="a", data="b", out="c.png", samples=value), "`samples` must be")
    _bad(lambda: StatsConfig(store="a", stats_samples=0), "`stats_samples` must be")
