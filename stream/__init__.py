"""sapiens-stream: Sapiens2 on live and recorded video.

``stream.Pipeline``, ``stream.run``, ``stream.FrameResult`` and ``stream.Person`` are the Python API
(``stream.api``); they are loaded on first use, so importing a part of the package stays light.
"""

from __future__ import annotations

__all__ = ["FrameResult", "Person", "Pipeline", "run"]


def __getattr__(name: str):
    if name in __all__:
        from stream import api

        return getattr(api, name)
    raise AttributeError(f"module 'stream' has no attribute {name!r}")
