"""The typed error family: no code raises the deprecated ``UserError`` any more, the aliases hold,
and the public API raises the type a caller catches (ConfigError / SourceError / StoreError).

Fast: real files in tmp_path, no models."""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

import relabel
import relabel.errors
import relabel.storage.errors
from relabel.errors import ConfigError, RelabelError, SourceError, StoreError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("relabel", "train", "storage")


def _untyped_raises(path: Path) -> list[int]:
    """Lines of ``raise UserError(...)`` (a call: a bare ``raise UserError`` re-raise is not one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            f = node.exc.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name == "UserError":
                lines.append(node.lineno)
    return sorted(lines)


def test_no_untyped_raises():
    files = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    assert files, "no sources found"
    found = [f"{p.relative_to(ROOT)}:{n}" for p in files for n in _untyped_raises(p)]
    assert not found, "raise a typed error (ConfigError, SourceError or StoreError), not UserError: " + ", ".join(found)


def test_the_scan_sees_a_raise(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    raise UserError('x')\n\n\ndef g():\n    try:\n        f()\n    except UserError:\n"
                 "        raise\n\n\ndef h():\n    raise errors.UserError(f'y')\n")
    assert _untyped_raises(p) == [2, 13]


def test_aliases_and_hierarchy():
    assert relabel.UserError is relabel.RelabelError
    assert relabel.errors.UserError is RelabelError
    for name in ("RelabelError", "ConfigError", "SourceError", "StoreError", "UserError"):
        assert getattr(relabel.storage.errors, name) is getattr(relabel.errors, name)
        assert getattr(relabel, name) is getattr(relabel.errors, name)
    assert relabel.storage.errors.StoreError is relabel.errors.StoreError
    for cls in (ConfigError, SourceError, StoreError):
        assert issubclass(cls, RelabelError)
    # the three are distinct: catching one does not catch another
    assert len({ConfigError, SourceError, StoreError}) == 3
    assert not issubclass(ConfigError, (SourceError, StoreError))
    assert not issubclass(SourceError, (ConfigError, StoreError))
    assert not issubclass(StoreError, (ConfigError, SourceError))


# --------------------------------------------------------------------------- sources
def test_missing_source_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        relabel.open_source(str(tmp_path / "missing"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_shard_is_a_source_error(tmp_path):
    os.mkfifo(tmp_path / "train-000000.tar")
    with pytest.raises(SourceError, match="not a regular file"):
        relabel.open_source(str(tmp_path))


# --------------------------------------------------------------------------- settings
def test_bad_recipe_file_is_a_config_error(tmp_path):
    p = tmp_path / "wide.yaml"
    p.write_text("scale: [2, 3]\n")
    with pytest.raises(ConfigError, match="scale"):
        relabel.create_recipe(str(p))


def test_unknown_recipe_and_setting_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe"):
        relabel.create_recipe("no-such-recipe")
    p = tmp_path / "bad.yaml"
    p.write_text("scale: [0.5\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        relabel.create_recipe(str(p))
    p = tmp_path / "extra.json"
    p.write_text(json.dumps({"no_such_setting": 1}))
    with pytest.raises(ConfigError, match="unknown setting"):
        relabel.create_recipe(str(p))


def test_bad_store_operation_arguments_are_config_errors():
    from relabel.storage.encoding import ValueEncoding
    from relabel.storage.publish import parse_views

    with pytest.raises(ConfigError, match="give a count"):
        parse_views("a:b:c", 8)
    with pytest.raises(ConfigError, match="only 8 views"):
        parse_views("9", 8)
    with pytest.raises(ConfigError, match="unknown value encoding"):
        ValueEncoding("q4")


# --------------------------------------------------------------------------- stores and exports
def test_empty_folder_is_not_a_store(tmp_path):
    with pytest.raises(StoreError):
        relabel.storage.LabelStore.open(str(tmp_path))


def test_missing_tar_is_a_store_error(tmp_path):
    with pytest.raises(StoreError):
        relabel.open_labels(str(tmp_path / "x.tar"))


def test_garbage_index_is_a_store_error(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(StoreError, match="index.json"):
        relabel.open_labels(str(tmp_path))


def test_malformed_index_field_is_a_store_error(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"format": "relabel-webdataset", "version": 1}))
    with pytest.raises(StoreError, match="not a valid export index"):
        relabel.open_labels(str(tmp_path))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_index_is_a_store_error(tmp_path):
    os.mkfifo(tmp_path / "index.json")
    with pytest.raises(StoreError, match="not a regular file"):
        relabel.open_labels(str(tmp_path))


def test_pull_and_publish_refusals_are_store_errors(tmp_path):
    from relabel.stages.publish import publish, pull
    from relabel.storage.manifest import parse_manifest
    from relabel.storage.remotes import open_remote

    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(StoreError, match="no manifest.json"):
        pull(str(src), str(tmp_path / "dest"))
    with pytest.raises(StoreError, match="local folder"):
        pull(str(src), "memory://dest")
    with pytest.raises(ConfigError, match="expect"):
        pull(str(src), str(tmp_path / "dest"), expect="not-a-digest")
    with pytest.raises(StoreError, match="local store folder"):
        publish("memory://store", str(tmp_path / "pub"))
    with pytest.raises(StoreError, match="not valid JSON"):
        parse_manifest(b"{", str(src))
    with pytest.raises(StoreError, match="hf://datasets"):
        open_remote("hf://models/org/name")


def test_an_error_raised_in_a_dataloader_worker_is_one_line():
    """torch wraps a worker's exception in a multi-line report; the CLI keeps the original line."""
    from relabel.commands.cli import _one_line

    for cls in ("relabel.errors.StoreError", "StoreError", "relabel.errors.SourceError", "RelabelError"):
        msg = (f"Caught {cls.rsplit('.', 1)[-1]} in DataLoader worker process 0.\nOriginal Traceback (most recent "
               f"call last):\n  File \"x.py\", line 1, in f\n{cls}: /data/a.jpg: not a regular file; remove it\n")
        assert _one_line(msg) == "/data/a.jpg: not a regular file; remove it"
