"""One source's timeline: when its timestamps jump, the source starts a new segment.

Cameras reset their clocks, HLS playlists have discontinuities and recordings get joined: a source's
timestamps then go backwards, or forwards by far more than a frame. Trackers and smoothers need time
to run forwards in steps of about one frame, so such a jump ends the source's segment and starts a new
one, exactly as a reconnect does. It concerns that source only: each source has its own timeline.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# A forward step longer than this many frame intervals (and than MIN_JUMP_S) is a jump, not lost frames.
JUMP_FRAMES = 10
MIN_JUMP_S = 1.0
# Without a nominal frame rate the interval is the smallest positive step seen so far.
DEFAULT_INTERVAL_S = 1 / 25


class Timeline:
    """Watches one source's presentation times (seconds) and says when a frame starts a new segment."""

    def __init__(self, name: str, frame_interval: float | None = None) -> None:
        self.name = name
        self.interval = frame_interval if frame_interval and frame_interval > 0 else None
        self.last: float | None = None
        self.untimed = False  # frames without a time came first (downstream timed them by the clock)
        self.jumps = 0

    def jumped(self, seconds: float | None) -> bool:
        """True when ``seconds`` does not continue the timeline (the caller starts a new segment).

        Frames without a time are timed downstream by another clock; the first timed frame after them
        switches clocks, which is a jump too (a camera whose first frames come before its timing)."""
        if seconds is None:
            self.untimed = self.last is None
            return False
        last, self.last = self.last, seconds
        if last is None:
            switched, self.untimed = self.untimed, False
            if switched:
                self.jumps += 1
                log.info("%s: timestamps start after untimed frames: new segment", self.name)
            return switched
        step = seconds - last
        if 0 < step and (self.interval is None or step < self.interval):
            self.interval = step if self.interval is None else min(self.interval, step)
        limit = max(JUMP_FRAMES * (self.interval or DEFAULT_INTERVAL_S), MIN_JUMP_S)
        if 0 <= step <= limit:  # a repeated timestamp is no jump: time did not go back
            return False
        self.jumps += 1
        log.warning("%s: timestamp jumped %+.3f s (%.3f -> %.3f): new segment",
                    self.name, step, last, seconds)
        return True

    def restart(self) -> None:
        """Forget the last time (a reconnect starts a new segment anyway; its first frame is no jump)."""
        self.last = None
        self.untimed = False
