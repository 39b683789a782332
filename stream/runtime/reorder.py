"""Reorder buffer: releases one source's messages strictly by ``seq``, whatever order they arrive in."""

from __future__ import annotations

from collections.abc import Iterator

from stream.runtime.messages import Message


class ReorderBuffer:
    """Holds out-of-order messages until every earlier ``seq`` has been released."""

    def __init__(self, first_seq: int = 0) -> None:
        self.next_seq = first_seq
        self.waiting: dict[int, Message] = {}

    def push(self, message: Message) -> Iterator[Message]:
        """Add ``message``; yields every message that is now in order (possibly none)."""
        if message.seq < self.next_seq or message.seq in self.waiting:
            raise ValueError(f"duplicate message seq {message.seq} for source {message.source!r}")
        self.waiting[message.seq] = message
        while self.next_seq in self.waiting:
            yield self.waiting.pop(self.next_seq)
            self.next_seq += 1

    def __len__(self) -> int:
        return len(self.waiting)
