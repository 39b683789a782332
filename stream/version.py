"""The installed package's version, as ``sapiens-stream --version`` and the exports report it."""

from importlib import metadata


def package_version() -> str:
    try:
        return metadata.version("sapiens-stream")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"
