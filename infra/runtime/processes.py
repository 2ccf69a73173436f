"""How sessiond's processes end: with the process that started them, and in bounded time.

A process asked to stop (SIGTERM, SIGINT) closes its roles in `infra.bootstrap.STOP_TIMEOUT`
whatever the database does; `exit_if_not_stopped` is the net under that promise: should
anything still hang, the process prints every thread's stack and exits anyway.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import threading
import time

#: A process asked to stop has exited this many seconds later, at the latest.
STOP_LIMIT = 9.0
#: Printed when a process had to be ended by `exit_if_not_stopped` (tests look for it).
NOT_STOPPED = "did not stop in time; exiting anyway"
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Get SIGTERM when the parent process dies (a SIGKILL of `sessiond serve` leaves no
    orphan to hold sessions, projections or the port). With `parent_pid`, exit at once if
    the parent is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def exit_if_not_stopped(what: str, limit: float = STOP_LIMIT) -> None:
    """End the process `limit` seconds from now if it has not ended by itself (call it when
    asked to stop). Every thread's stack is printed first: a hang is a bug to find."""

    def run() -> None:
        time.sleep(limit)
        print(f"sessiond: {what} {NOT_STOPPED} ({limit:g} s)", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)

    threading.Thread(target=run, name="stop-limit", daemon=True).start()
