"""The command-line reference, ``docs/cli.md``, written from the argument parser itself.

    python -m stream.front.clidoc > docs/cli.md

``tests/test_clidoc.py`` fails when the file and the parser disagree, so a new option is documented
by running the line above. Defaults of ``run`` come from ``PipelineConfig`` (on the command line they
are None, so that only options actually given override a ``--config`` file).
"""

from __future__ import annotations

import argparse
import dataclasses

from stream.config import PipelineConfig

HEADER = """\
# `sapiens-stream` command line

Generated from the argument parser by `python -m stream.front.clidoc > docs/cli.md`; do not edit by
hand. Every `run` option can also be set in the YAML file given with `--config` (keys are the option
names with `_` or `-`); options on the command line win. Bad input stops with one
`sapiens-stream: error: ...` line and exit status 2.
"""


def render(parser: argparse.ArgumentParser) -> str:
    """The reference as Markdown: the program's own options, then each command's arguments."""
    parts = [HEADER, f"{parser.description}\n", _usage(parser.prog, parser), _table(parser, {})]
    config_defaults = _config_defaults()
    for name, command in _commands(parser).items():
        defaults = config_defaults if name == "run" else {}
        parts += [f"## `{command.prog}`\n", f"{_help_of(parser, name)}.\n", _usage(command.prog, command)]
        parts.append(_table(command, defaults))
    return "\n".join(parts)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help_of(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return choice.help[:1].upper() + choice.help[1:]
    return ""


def _usage(prog: str, parser: argparse.ArgumentParser) -> str:
    words = [prog]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            words.append("COMMAND")
        elif not action.option_strings:
            metavar = action.metavar or action.dest
            words.append(f"{metavar} [{metavar} ...]" if action.nargs == "+" else metavar)
        elif action.required:
            words.append(f"{action.option_strings[0]} {_metavar(action)}")
    if any(a.option_strings and not a.required for a in parser._actions):
        words.append("[options]")
    return "```\n" + " ".join(words) + "\n```\n"


def _metavar(action: argparse.Action) -> str:
    return action.metavar or action.dest.upper()


def _table(parser: argparse.ArgumentParser, defaults: dict[str, str]) -> str:
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        rows.append(f"| {_names(action)} | {_default(action, defaults)} | {_escape(action.help or '')} |")
    return "\n".join(rows) + "\n"


def _names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{_metavar(action)}`"
    if isinstance(action, argparse.BooleanOptionalAction):
        return " / ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return ", ".join(f"`{o}`" for o in action.option_strings)
    return ", ".join(f"`{o} {_metavar(action)}`" for o in action.option_strings)


def _default(action: argparse.Action, defaults: dict[str, str]) -> str:
    if action.dest in defaults:
        return defaults[action.dest]
    if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 or action.required:
        return ""
    return f"`{action.default}`"


def _config_defaults() -> dict[str, str]:
    values = {}
    for field in dataclasses.fields(PipelineConfig):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:  # pragma: no cover - every field has a default
            continue
        values[field.name] = _config_value(field.name, value)
    return values


def _config_value(name: str, value) -> str:
    if value is None or value == []:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        separator = "x" if name == "input_size" else ","
        value = separator.join(str(v) for v in value)
    return f"`{value}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def main() -> None:
    from stream.front.cli import build_parser

    print(render(build_parser()), end="")


if __name__ == "__main__":
    main()
