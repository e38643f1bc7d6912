"""docs/cli.md from the live CLI: every command, its arguments and its options, grouped in the panels
`relabel COMMAND --help` shows, with the same help texts and defaults.

    python tests/cli_docs.py          # rewrite docs/cli.md
    python tests/cli_docs.py --check  # exit 1 if docs/cli.md is out of date

tests/test_docs.py fails while docs/cli.md differs from what this renders, so a new option cannot be
left out of the docs. The options are read from click's parameter objects, not from the terminal
rendering, so the file does not depend on the terminal's width; a default that depends on the
machine (the DataLoader workers) is shown as "per machine", so it does not depend on this one either.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
REGENERATE = "python tests/cli_docs.py"

HEAD = f"""# Command reference

Every `relabel` command with its arguments and options, grouped as `relabel COMMAND --help` groups
them. Generated from the CLI itself: do not edit by hand; after changing an option run
`{REGENERATE}` (tests/test_docs.py fails while this file is out of date). The options are the
fields of the commands' config records (`relabel.settings.setting`), so the same names, limits and
defaults hold for the Python API ([README](../README.md#use-it-from-python)).

Defaults are the CLI's; `--workers` defaults to what this machine affords ("per machine" below):
with a GPU, every core of the process's share but two (the workers only decode, the GPU renders);
without, the cores, at most 8.

Every command prints one line and exits with code 2 on bad input (a missing path, an unknown model,
a value outside an option's limits, a mismatched store, a tampered download): no traceback.
"""


def _cell(text: str) -> str:
    """A help text as one markdown table cell: rich's markup escapes undone, pipes escaped."""
    text = re.sub(r"\\\[", "[", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.replace("|", "\\|").replace("<", "&lt;")


def _command(name: str, cmd) -> list[str]:
    ctx = cmd.make_context(name, [], resilient_parsing=True)
    params = [p for p in cmd.get_params(ctx) if not p.hidden and p.name != "help"]
    args = [p for p in params if p.param_type_name == "argument"]
    usage = " ".join(["relabel", name, "[OPTIONS]"] +
                     [p.name.upper() if p.required else f"[{p.name.upper()}]" for p in args])
    out = [f"## relabel {name}", "", _cell(cmd.help or ""), "", "```", usage, "```", ""]
    panels: dict[str, list] = {}
    if args:
        panels["Arguments"] = args
    plain = [p for p in params if p.param_type_name == "option" and not p.rich_help_panel]
    if plain:
        panels["Options"] = plain
    for p in params:  # the named panels in the order their first option appears, as --help shows them
        if p.param_type_name == "option" and p.rich_help_panel:
            panels.setdefault(p.rich_help_panel, []).append(p)
    for title, ps in panels.items():
        out += [f"**{title}**", "", "| | |", "|---|---|"]
        for p in ps:
            words, text = p.get_help_record(ctx)
            if p.param_type_name == "argument":
                words = p.name.upper() + words[len(p.name):]
            out.append(f"| `{words}` | {_cell(text)} |")
        out.append("")
    return out


class _PerMachine(int):
    """A default computed from this machine's cores, shown as such."""

    def __str__(self) -> str:
        return "per machine"

    __repr__ = __str__


def render() -> str:
    """The markdown. Needs a fresh process: the commands' defaults are computed when the CLI module
    is first imported, and the machine-dependent one must be marked before that."""
    if "relabel.commands.cli" in sys.modules:
        raise RuntimeError("render docs/cli.md in a fresh process: python tests/cli_docs.py")
    import typer.main

    import relabel.runtime as runtime

    machine = runtime.default_workers
    runtime.default_workers = lambda: _PerMachine(machine())
    from relabel.commands.cli import app

    group = typer.main.get_command(app)
    names = list(group.commands)
    lines = [HEAD, "Commands: " + ", ".join(f"[{n}](#relabel-{n})" for n in names) + ".", ""]
    for name in names:
        lines += _command(name, group.commands[name])
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not CLI_MD.exists() or CLI_MD.read_text() != text:
            print(f"docs/cli.md is out of date: run {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    CLI_MD.parent.mkdir(exist_ok=True)
    CLI_MD.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
