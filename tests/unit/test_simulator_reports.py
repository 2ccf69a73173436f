"""The simulator reports nothing of a client once what ends its codes has returned: a QR code
whose report had begun when `stop`, `stop_all` or a scan came is reported before they return
(they wait for it), never after."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from uuid import UUID, uuid4

import pytest

from application.ports import Disconnection, GatewayEvents, InboundMessage
from infra.whatsapp.simulator import SimulatorGateway


class HeldReports(GatewayEvents):
    """Records the reports; a QR code's report is held until `release` is set."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.reporting = threading.Event()
        self.release = threading.Event()

    def qr_issued(
        self, session_id: UUID, code: str, expires_at: datetime, attempt: int, max_attempts: int
    ) -> int | None:
        self.reporting.set()
        assert self.release.wait(30), "the test never released the report"
        self.calls.append("qr_issued")
        return None

    def qr_exhausted(self, session_id: UUID) -> int | None:
        self.calls.append("qr_exhausted")
        return None

    def connected(self, session_id: UUID, jid: str, push_name: str) -> int | None:
        self.calls.append("connected")
        return None

    def disconnected(self, session_id: UUID, disconnection: Disconnection) -> int | None:
        self.calls.append("disconnected")
        return None

    def keepalive(self, session_id: UUID, healthy: bool) -> int | None:
        return None

    def message_received(self, session_id: UUID, message: InboundMessage) -> int | None:
        return None

    def message_status(
        self, session_id: UUID, whatsapp_ids: list[str], status: str, at: datetime
    ) -> int | None:
        return None


@pytest.mark.parametrize("ending", ["stop", "stop_all", "scan"])
def test_a_code_being_reported_is_reported_before_what_ends_the_codes_returns(
    ending: str,
) -> None:
    gateway = SimulatorGateway(first_timeout=0.05, next_timeout=0.05, max_codes=1000)
    events = HeldReports()
    gateway.bind(events)
    sid = uuid4()
    end: Callable[[], object] = {
        "stop": lambda: gateway.stop(sid),
        "stop_all": gateway.stop_all,
        "scan": lambda: gateway.scan(sid),
    }[ending]
    try:
        gateway.start(sid, None)
        assert events.reporting.wait(30), "no QR code was reported"
        returned = threading.Event()

        def ending_call() -> None:
            end()
            returned.set()

        thread = threading.Thread(target=ending_call)
        thread.start()
        # While the code's report is held, the call that ends the codes does not return
        # (without the wait it returns at once, and the report would come after it).
        assert not returned.wait(0.3)
        events.release.set()
        thread.join(30)
        assert returned.is_set()
        shown = list(events.calls)
        assert shown[0] == "qr_issued"
        # Nothing more comes, though a next code was due every 0.05 s.
        threading.Event().wait(0.3)
        assert events.calls == shown
        assert shown.count("qr_issued") == 1
    finally:
        events.release.set()
        gateway.close()
