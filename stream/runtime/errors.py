"""How an error is told in one line: events, ``sapiens-stream: error: ...`` and wrapped exceptions."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class OutputError(OSError):
    """An output could not be written (a full disk, an I/O error): a failure the user can act on, so the
    command exits with status 2, not the status 1 of a failed stage. The message names the file."""
