"""The bell in the dashboard's header: the open alerts, each linking to its session.

A page never waits for them: it shows the last read, and a read older than `every` seconds
starts a new one in a thread of its own (the alert rules are read from their events)."""

from __future__ import annotations

import logging
import threading
import time

from application.alerts import Alerts, OpenAlert
from application.sessions import SessionsApplication

log = logging.getLogger(__name__)
#: The app state's key of the bell.
BELL_STATE = "dashboard_bell"


class Bell:
    def __init__(self, app: SessionsApplication, every: float = 1.0) -> None:
        self.alerts = Alerts(app)
        self.every = every
        self._lock = threading.Lock()
        self._open: list[OpenAlert] = []
        self._read_at = float("-inf")
        self._reading = False

    def open(self) -> list[OpenAlert]:
        """The open alerts as last read (a new read starts when that one is old)."""
        with self._lock:
            if not self._reading and time.monotonic() - self._read_at >= self.every:
                self._reading = True
                threading.Thread(target=self._read, name="dashboard-bell", daemon=True).start()
            return self._open

    def _read(self) -> None:
        try:
            found = self.alerts.open()
        except Exception:  # the next page asks again
            log.warning("could not read the open alerts", exc_info=True)
            found = None
        with self._lock:
            if found is not None:
                self._open = found
            self._read_at = time.monotonic()
            self._reading = False
