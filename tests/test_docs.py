"""The README and the documentation say what cspt does: every command they show parses with cspt's own
parser, every Python example imports what it names, the quick ones run, and the generated reference lists
every flag of every command."""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path

import pytest

from cspt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md",
         *sorted((ROOT / "configs").rglob("README.md"))]
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def blocks(language: str) -> list[tuple[Path, str]]:
    return [(page, body) for page in PAGES for lang, body in FENCE.findall(page.read_text()) if lang == language]


def commands() -> list[tuple[Path, list[str]]]:
    """Every ``cspt ...`` line of the pages' shell blocks (continuations joined, comments dropped)."""
    found = []
    for page, body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            module = [i for i in range(len(words) - 1) if words[i:i + 2] == ["-m", "cspt"]]
            if module:  # python -m cspt ..., torchrun ... -m cspt ...
                found.append((page, words[module[0] + 2:]))
            elif words and (words[0] == "cspt" or words[0].endswith("/cspt")):
                found.append((page, words[1:]))
    return found


def test_every_documented_command_parses():
    parser = build_parser()
    documented = commands()
    assert len(documented) > 30
    for page, args in documented:
        args = [a if "..." not in a else "x" for a in args if a != "..."]
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{page.relative_to(ROOT)}: cspt {' '.join(args)} does not parse")


def test_every_python_example_imports_what_it_names():
    for page, body in blocks("python"):
        imports = "\n".join(line for line in body.splitlines() if line.startswith(("from cspt", "import cspt")))
        exec(compile(imports, str(page), "exec"), {})


def test_the_quick_commands_run(tmp_path, capsys):
    from cspt.cli import main
    from tests.conftest import write_rgb

    assert main(["info", "cspt:mae-tiny-tinyimagenet"]) == 0
    shown = capsys.readouterr().out
    assert "terms: trained on Tiny-ImageNet" in shown and "pixels: bands all" in shown
    write_rgb(tmp_path / "a.png")
    assert main(["stats", str(tmp_path)]) == 0
    assert "mean: [" in capsys.readouterr().out


def test_the_generated_reference_lists_every_flag_of_every_command():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from hooks import cli_markdown, flag_rows
        from hooks import commands as walk
    finally:
        sys.path.pop(0)
    reference = cli_markdown()
    flags = 0
    for name, parser, _ in walk(build_parser()):
        assert f"## `{name}`" in reference or not flag_rows(parser), name
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in reference, (name, option)
                    flags += 1
    assert flags > 200


def test_every_reference_target_exists():
    """Each ``::: module.name`` of the API reference names something importable, so the strict docs
    build (in CI) cannot fail on a moved function."""
    targets = re.findall(r"^::: ([\w.]+)$", (ROOT / "docs" / "reference" / "api.md").read_text(), re.M)
    assert len(targets) > 20
    for target in targets:
        module, name = target.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), name), target
