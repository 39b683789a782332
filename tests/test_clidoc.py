"""docs/cli.md is the parser's reference: it must be what ``python -m stream.front.clidoc`` writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stream.front.cli import build_parser
from stream.front.clidoc import render

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_matches_the_parser() -> None:
    assert REFERENCE.read_text() == render(build_parser()), (
        "docs/cli.md is out of date: run `python -m stream.front.clidoc > docs/cli.md`"
    )


def test_reference_names_every_option_and_a_new_one_changes_it() -> None:
    parser = build_parser()
    text = render(parser)
    for command in ("run", "demo", "export"):
        assert f"## `sapiens-stream {command}`" in text
    options = ("--workers WORKERS", "--progress` / `--no-progress", "--export FORMAT[,FORMAT]", "--version")
    assert all(option in text for option in options)
    run = next(a for a in parser._actions if a.dest == "command").choices["run"]
    run.add_argument("--brand-new", help="an option the reference does not have yet")
    assert render(parser) != REFERENCE.read_text()


def test_module_prints_the_reference() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream.front.clidoc"], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout == REFERENCE.read_text()
