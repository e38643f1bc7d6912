"""The demo pipeline at reduced size: real digits, a trained teacher, labels, three students."""
from __future__ import annotations

import json

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
    # each step's command is printed so it can be rerun on one's own data
    assert "relabel generate" in r.stderr and "relabel train" in r.stderr and "--mode online" in r.stderr
    assert "| cached |" in r.stdout and "| online |" in r.stdout and "| supervised |" in r.stdout
