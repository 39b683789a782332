"""Which system programs the tests that need them can use (see the ``needs_system`` marker in conftest)."""

import shutil


def command_missing(command: str) -> str | None:
    """Why a command-line program cannot be used here, or None when it is on the PATH."""
    return None if shutil.which(command) else f"{command} is not installed"
