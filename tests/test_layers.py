"""The layers hold: every import in the package (module level or inside a function) goes down or
sideways, never up (issue 24). The README's layout paragraph says the same.

    errors <- storage <- core <- stages <- commands

``relabel`` itself (the package's ``__init__``: lazy public names, ``__version__``) may be imported
from anywhere: it imports nothing of the package when it is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"relabel": ROOT / "relabel", "relabel.train": ROOT / "train", "relabel.storage": ROOT / "storage"}

LAYERS = [
    ("errors", ("relabel.errors",)),
    ("storage", ("relabel.storage",)),
    ("core", ("relabel.rng", "relabel.views", "relabel.models", "relabel.teacher", "relabel.classmap", "relabel.dist",
              "relabel.runtime", "relabel.progress", "relabel.settings")),
    ("stages", ("relabel.stages", "relabel.train")),
    ("commands", ("relabel.commands", "relabel.__main__")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("").parts
            if pkg == "relabel" and rel[0] in ("train", "storage"):
                continue
            parts = rel[:-1] if rel[-1] == "__init__" else rel
            out[".".join((pkg, *parts))] = path
    return out


def _layer(module: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def _imports(name: str, path: Path, known: set[str]) -> set[tuple[str, tuple[str, ...]]]:
    """(module, names imported from it) for every relabel import in the file, function bodies too."""
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {(a.name, ()) for a in node.names if a.name.split(".")[0] == "relabel"}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                b = base
                for _ in range(node.level - 1):
                    b = b.rpartition(".")[0]
                mod = f"{b}.{mod}" if mod else b
            if mod.split(".")[0] != "relabel":
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                target = f"{mod}.{a.name}"
                out.add((target, ()) if target in known else (mod, (a.name,)))
    return out


def test_every_module_has_a_layer_and_imports_only_down():
    mods = _modules()
    unplaced = sorted(m for m in mods if m != "relabel" and _layer(m) is None)
    assert not unplaced, f"modules with no layer (add them to LAYERS and the README): {unplaced}"
    upward = []
    for name, path in sorted(mods.items()):
        if name == "relabel":
            continue
        mine = _layer(name)
        for target, _ in _imports(name, path, set(mods)):
            theirs = _layer(target)
            if target != "relabel" and theirs is not None and theirs > mine:
                upward.append(f"{name} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_package_root_imports_nothing_of_its_own_when_imported():
    tree = ast.parse((ROOT / "relabel" / "__init__.py").read_text())
    eager = [n for n in tree.body if (isinstance(n, ast.Import) and any(a.name.startswith("relabel") for a in n.names))
             or (isinstance(n, ast.ImportFrom) and ((n.module or "").startswith("relabel") or n.level))]
    assert not eager, "relabel/__init__.py must stay lazy: its names load on first use"


def test_commands_use_public_names_only_and_storage_knows_no_models():
    mods = _modules()
    private, heavy = [], []
    for name, path in mods.items():
        for target, names in _imports(name, path, set(mods)):
            if name.startswith("relabel.commands") and not target.startswith("relabel.commands"):
                private += [f"{name}: {target}.{n}" for n in names if n.startswith("_") and not n.endswith("__")]
        if name.startswith("relabel.storage"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                mod = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                heavy += [f"{name}: {m}" for m in mod if m.split(".")[0] in ("torch", "timm", "torchvision")]
    assert not private, f"commands reaching into private names: {private}"
    assert not heavy, f"storage importing model code: {heavy}"


def test_a_violation_is_caught(tmp_path):
    """The check itself can fail: a storage module importing a stage is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from relabel.stages.generate import generate\n")
    found = _imports("relabel.storage.bad", bad, set(_modules()))
    assert ("relabel.stages.generate", ("generate",)) in found
    assert _layer("relabel.stages.generate") > _layer("relabel.storage.bad")


def test_moved_modules_still_import_as_the_same_module():
    """Code written against the old paths (before stage one moved to relabel.stages and the view
    helpers to relabel.views) keeps working: each old path is the module at its new one."""
    import importlib

    import relabel

    for old, new in relabel._MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    from relabel.generate import GenerateConfig, generate  # noqa: F401  (the README's older examples)
    from relabel.stages.generate import GenerateConfig as moved

    assert GenerateConfig is moved
