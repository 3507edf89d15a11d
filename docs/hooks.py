"""MkDocs hooks: the command-line reference, generated from cspt's own parser (itself built from the config
dataclasses), so that every flag and its help live in one place and the reference cannot lag."""

from __future__ import annotations

import argparse

from mkdocs.structure.files import File, Files

REFERENCE = "reference/cli.md"


def commands(parser: argparse.ArgumentParser, prefix: str = "cspt",
             summary: str = "") -> list[tuple[str, argparse.ArgumentParser, str]]:
    """Every command and sub-command of ``parser`` with its one-line help, depth first (``cspt finetune
    classify``, ...)."""
    found = [(prefix, parser, summary or parser.description or "")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found += commands(sub, f"{prefix} {name}", helps.get(name) or "")
    return found


def flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    """A Markdown table row per option or argument of one command."""
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
        if action.choices:
            value = " | ".join(map(str, action.choices))
        elif action.nargs == 0:
            value = ""
        else:
            value = action.metavar or action.dest.upper()
            value = f"{value} ..." if action.nargs in ("+", "*") else value
        text = (action.help or "").replace("%%", "%").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {name} | {value} | {text} |")
    return rows


def cli_markdown() -> str:
    """The whole command-line reference as Markdown."""
    from cspt.cli import build_parser

    lines = ["# Command-line reference", "",
             "Generated from `cspt`'s own argument parser when the site is built. Every training flag is also a "
             "YAML key of the same name with underscores (`--batch-size` is `batch_size:` in `--config FILE`).", ""]
    for name, parser, summary in commands(build_parser()):
        rows = flag_rows(parser)
        if not rows:
            continue
        lines += [f"## `{name}`", "", f"{summary[:1].upper()}{summary[1:]}." if summary else "", "",
                  "| option | value | what it does |", "|---|---|---|", *rows, ""]
    return "\n".join(lines)


def on_files(files: Files, config: dict) -> Files:
    files.append(File.generated(config, REFERENCE, content=cli_markdown()))
    return files
