"""The README and docs/ say only what is true of this tree: links resolve, named files exist, the
option reference is the live CLI's, every `relabel` command shown parses, the README's test command
is the one CI runs, and the README's Python loop runs as written."""
from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path


from conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
FENCE = re.compile(r"^(\s*)(```|~~~)\s*([\w-]*)\s*$")


def _parse(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(the page's prose lines, its fenced code blocks as (language, text)); list-indented fences too."""
    prose, blocks, block = [], [], None
    for line in path.read_text().splitlines():
        m = FENCE.match(line)
        if block is None and m:
            block = (m.group(2), m.group(3), len(m.group(1)), [])
        elif block is not None and m and m.group(2) == block[0] and not m.group(3):
            blocks.append((block[1], "\n".join(block[3])))
            block = None
        elif block is not None:
            n = block[2]  # a fence indented under a list item: its lines lose that indent
            block[3].append(line[n:] if not line[:n].strip() else line)
        else:
            prose.append(line)
    assert block is None, f"{path.name}: a code block is not closed"
    return prose, blocks


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in _parse(path)[0]:
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = _slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def _prose(path: Path) -> str:
    """The prose with inline code removed (a `[x](y)` inside backticks is not a link)."""
    return re.sub(r"`+[^`]*`+", "", "\n".join(_parse(path)[0]))


def _commands(text: str) -> list[str]:
    """Shell commands of a bash block: continuation lines joined, comments dropped, split at &&."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        out += [c.strip() for c in line.split("&&") if c.strip()]
    return out


def test_readme_is_a_newcomers_page_in_the_issues_order():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    heads = [ln[3:] for ln in lines if ln.startswith("## ")]
    order = ["Why it is built this way", "Your own data in five lines", "Use it from Python",
             "Publishing and pulling", "More"]
    assert heads == order, heads


def test_every_relative_link_resolves():
    bad = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {dest.name})")
    assert not bad, "\n".join(bad)


def test_every_repository_path_named_exists():
    """`storage/keys.py`, `tests/test_show.py`, `relabel/views/`: a path in backticks is a promise."""
    bad = []
    for page in PAGES:
        text = "\n".join(_parse(page)[0])
        for code in re.findall(r"`([^`\s]+)`", text):
            if re.fullmatch(r"(relabel|storage|train|tests|docs)/[\w./-]*", code) and not (ROOT / code).exists():
                bad.append(f"{page.relative_to(ROOT)}: {code}")
    assert not bad, "\n".join(bad)


def test_cli_reference_is_the_live_cli():
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_docs.py"), "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_readme_install_and_test_commands_are_first_and_are_what_ci_runs():
    _, blocks = _parse(README)
    lang, first = blocks[0]
    assert lang == "bash" and README.read_text().index("```bash") < 40, "the two commands lead the README"
    lines = first.splitlines()
    assert _commands(lines[0]) == ["pip install -e .", "relabel demo"]
    test_command = re.sub(r"\s+#.*$", "", lines[1]).strip()
    assert test_command == 'pip install -e ".[dev]" && python -m pytest -q tests'
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in [ln.strip() for ln in ci], ".ci/run must run the README's test command, byte for byte"


def _cli_group():
    import typer.main

    from relabel.commands.cli import app

    return typer.main.get_command(app)


def test_every_relabel_command_shown_parses():
    """Each `relabel ...` line in a bash block of the README or docs/ names a command and options that
    exist, with values of the right type and every required argument: what the CLI would accept."""
    group = _cli_group()
    bad, seen = [], 0
    for page in PAGES:
        for lang, text in _parse(page)[1]:
            if lang not in ("bash", "sh", "shell"):
                continue
            for cmd in _commands(text):
                words = shlex.split(cmd)
                if words[:3] == ["python", "-m", "pytest"]:  # test files named must exist
                    bad += [f"{page.name}: {cmd}" for w in words[3:] if w.startswith("tests") and
                            not (ROOT / w).exists()]
                    continue
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
                    words = words[1:]
                if not words or words[0] != "relabel":
                    continue
                seen += 1
                name, args = words[1], words[2:]
                if name not in group.commands:
                    bad.append(f"{page.name}: {cmd} (no command {name!r})")
                    continue
                try:
                    group.commands[name].make_context(name, args)
                except Exception as e:  # click's usage errors
                    bad.append(f"{page.name}: {cmd} ({type(e).__name__}: {e})")
    assert seen >= 20 and not bad, "\n".join(bad)


def test_recipe_files_shown_are_valid_recipes(tmp_path):
    from relabel.views import create_recipe

    blocks = [text for page in PAGES for lang, text in _parse(page)[1] if lang in ("yaml", "yml")]
    assert blocks
    for i, text in enumerate(blocks):
        path = tmp_path / f"recipe{i}.yaml"
        path.write_text(text)
        create_recipe(str(path))


def test_python_shown_in_docs_uses_real_names():
    """docs/ shows Python the suite cannot run as written (a ResNet-50 on ImageNet): it must at least
    compile, use public names, pass config records only their fields and read only results' fields."""
    import dataclasses

    import relabel

    results = {"generate_labels": relabel.GenerateResult, "train_student": relabel.TrainResult}
    bad, blocks = [], [(p, t) for p in DOCS for lang, t in _parse(p)[1] if lang == "python"]
    assert blocks
    for page, text in blocks:
        tree = ast.parse(text)
        kinds: dict[str, type] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "relabel":
                if node.attr not in relabel.__all__:
                    bad.append(f"{page.name}: relabel.{node.attr} is not public")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.endswith("Config"):
                names = {f.name for f in dataclasses.fields(getattr(relabel, node.func.attr))}
                bad += [f"{page.name}: {node.func.attr} has no field {k.arg!r}" for k in node.keywords if k.arg not in names]
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and
                    isinstance(node.value.func, ast.Attribute) and node.value.func.attr in results):
                kinds[node.targets[0].id] = results[node.value.func.attr]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in kinds:
                cls = kinds[node.value.id]
                if node.attr not in {f.name for f in dataclasses.fields(cls)} and not hasattr(cls, node.attr):
                    bad.append(f"{page.name}: {cls.__name__} has no {node.attr!r}")
    assert not bad, "\n".join(bad)


def test_readme_python_is_the_loop_the_suite_runs(tiny):
    """The README's only Python block, run as written (timm's tiny test model for resnet18) on a store
    made here from data/train: the README cannot show a loop that does not work."""
    blocks = [t for lang, t in _parse(README)[1] if lang == "python"]
    assert len(blocks) == 1, "the README shows one Python block, the loop; more Python goes to docs/"
    code = blocks[0]
    assert '"resnet18"' in code and 'DATA, LABELS = "data/train", "labels.zarr"' in code
    code = code.replace('"resnet18"', '"test_resnet"')
    r = subprocess.run([sys.executable, "-c", code], cwd=tiny, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"epoch \d: loss ([0-9.]+)", r.stdout)]
    assert len(losses) == 2, r.stdout
