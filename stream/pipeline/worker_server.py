"""Imported by the fork server alone (it is the first module of its preload list): the fork server is
a process of the run's process group, so a stop signal sent to the group (``docker stop``, systemd,
Ctrl+C) reaches it too. Its default would end it, and with it the bookkeeping of every worker forked
from it, which the coordinator would then take for crashed workers. It ignores them; each worker
installs its own handlers (``stream.runtime.stage``).
"""

import signal

from stream.runtime.stage import STOP_SIGNALS

for _signum in STOP_SIGNALS:
    signal.signal(_signum, signal.SIG_IGN)
