"""``relabel study`` end to end at a tiny size: real digits, a teacher, one store, the grid, the outputs."""
from __future__ import annotations

import json

import pytest


def test_study_tiny_runs_and_outputs_parse(tmp_path, capsys):
    from relabel.commands.cli import main

    out = tmp_path / "study"
    with pytest.raises(SystemExit) as e:
        main(["study", "--out", str(out), "--limit", "60", "--epochs", "1", "--teacher-epochs", "1", "--views-list", "1,2",
              "--topk", "0", "--topk-list", "1", "--topk-views", "2", "--seeds", "1", "--workers", "0", "-b", "16",
              "--train-per-class", "3"])
    assert e.value.code == 0
    train, val = out / "digits" / "train", out / "digits" / "val"
    assert sorted(len(list(d.iterdir())) for d in train.iterdir()) == [3] * 10  # the low-data knob
    assert sum(len(list(d.iterdir())) for d in val.iterdir()) == 17  # the first of every 5 of each class: untouched
    res = json.loads((out / "results.json").read_text())
    runs = {(r["mode"], r["views"], r["topk"]) for r in res["runs"]}
    assert runs == {("cached", 1, 10), ("cached", 2, 10), ("cached", 2, 1), ("online", None, None),
                    ("supervised", None, None)}
    assert all(0 <= r["top1"] <= 100 and r["command"].startswith("relabel train ") for r in res["runs"])
    summ = {(s["mode"], s["views"], s["topk"]): s for s in res["summary"]}
    assert summ.keys() == runs and all(s["n"] == 1 for s in summ.values())
    online = next(r for r in res["runs"] if r["mode"] == "online")["command"]
    assert "--mode online" in online and "--fresh-views" in online  # the baseline: full softmax, fresh views
    assert "--kd-target" not in online  # full is online's default
    md = (out / "results.md").read_text()
    assert md.startswith("| student | V=1 | V=2 | fresh views |") and "| online KD (full softmax) |" in md
    assert "cached, top-10 (all classes)" in md and md == res["table"] + "\n"
    assert (out / "views.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert md.strip() in capsys.readouterr().out
    # the store was generated once, with the most views and classes; the cached runs read prefixes of it
    store = json.loads((out / "labels.zarr" / "zarr.json").read_text())["attributes"]["relabel"]
    assert (store["views"], store["topk"]) == (2, 10)


def test_digits_are_written_afresh_so_a_smaller_set_leaves_no_stale_images(tmp_path):
    from relabel.commands.demo import write_digits

    train, _ = write_digits(tmp_path / "d", 16, limit=60)
    assert sum(len(list(d.iterdir())) for d in train.iterdir()) == 43
    train, val = write_digits(tmp_path / "d", 16, limit=60, train_per_class=2)
    assert sorted(len(list(d.iterdir())) for d in train.iterdir()) == [2] * 10
    assert sum(len(list(d.iterdir())) for d in val.iterdir()) == 17
