"""Helpers of the event stream tests: an SSE reader on its own thread (httpx-sse), and a
session linked through the simulator."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from tests.e2e.conftest import ADMIN, Sessiond, create_session
from tests.e2e.steps import scan_shown_qr


@dataclass
class Received:
    events: list[ServerSentEvent] = field(default_factory=list)
    error: BaseException | None = None
    ended_at: float | None = None  # monotonic time the stream ended (EOF or error)


class Reader:
    """Reads one SSE stream on a thread, keeping every event (httpx-sse's parser)."""

    def __init__(
        self, url: str, headers: Mapping[str, str], params: dict[str, Any] | None = None
    ) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(10, read=60))
        self.received = Received()
        self.status: queue.Queue[httpx.Response] = queue.Queue()
        self._answered = False
        self._new = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, args=(url, headers, params or {}), daemon=True
        )
        self._thread.start()
        self.response = self.status.get(timeout=30)

    def _run(self, url: str, headers: Mapping[str, str], params: dict[str, Any]) -> None:
        # A copy: httpx-sse writes Accept and Cache-Control into the dict it is given, and the
        # callers' dicts (ADMIN) are shared by every later test of the run.
        sent = dict(headers)
        try:
            with connect_sse(self.client, "GET", url, headers=sent, params=params) as source:
                self._answered = True
                self.status.put(source.response)
                if source.response.status_code != 200:
                    source.response.read()
                    return
                for event in source.iter_sse():
                    with self._new:
                        self.received.events.append(event)
                        self._new.notify_all()
        except BaseException as error:  # the test reads it
            self.received.error = error
            if not self._answered:
                raise
        finally:
            with self._new:
                self.received.ended_at = time.monotonic()
                self._new.notify_all()

    @property
    def events(self) -> list[ServerSentEvent]:
        with self._new:
            return list(self.received.events)

    def data_events(self) -> list[ServerSentEvent]:
        return [e for e in self.events if e.event != "end"]

    def wait_for(
        self, check: Callable[[list[ServerSentEvent]], bool], what: str, timeout: float = 30
    ) -> list[ServerSentEvent]:
        deadline = time.monotonic() + timeout
        with self._new:
            while not check(list(self.received.events)):
                if self.received.ended_at is not None:
                    raise AssertionError(f"the stream ended before {what}: {self.received}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"never happened: {what}; got {self.received.events}")
                self._new.wait(left)
            return list(self.received.events)

    def wait_end(self, timeout: float = 30) -> float:
        """Wait until the stream ended; the monotonic time it did."""
        self._thread.join(timeout)
        assert self.received.ended_at is not None, "the stream did not end"
        return self.received.ended_at

    def close(self) -> None:
        self.client.close()
        self._thread.join(5)


def data(event: ServerSentEvent) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(event.data)
    return loaded


def linked_session(client: httpx.Client, name: str = "Streamed") -> dict[str, Any]:
    """A session linked to the simulator's phone (it can receive messages)."""
    created = create_session(client, name)
    scan_shown_qr(client, created)
    return created


def inbound_once_resumed(client: httpx.Client, session_id: str, text: str) -> None:
    """A message to a session that a new server's worker is resuming: its status may still
    say connected (the view kept it) while the simulator refuses until the link is back."""
    deadline = time.monotonic() + 60
    while True:
        answer = client.post(
            f"/simulator/sessions/{session_id}/inbound",
            json={"sender": "+14155550123", "text": text},
            headers=ADMIN,
        )
        if answer.status_code == 200:
            return
        assert answer.status_code in (409, 502, 503), answer.text
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.1)


def inbound(client: httpx.Client, session_id: str, text: str) -> None:
    answer = client.post(
        f"/simulator/sessions/{session_id}/inbound",
        json={"sender": "+14155550123", "text": text},
        headers=ADMIN,
    )
    assert answer.status_code == 200, answer.text


def message_positions(client: httpx.Client, session_id: str, after: int) -> list[int]:
    """The positions of the session's `MessageReceived` events after `after`, from the log."""
    positions: list[int] = []
    while True:
        page = client.get("/events", params={"after": after, "limit": 1000}, headers=ADMIN)
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        positions += [
            item["position"]
            for item in items
            if item["sessionId"] == session_id and item["type"] == "MessageReceived"
        ]
        if page.json()["next"] is None:
            return positions
        after = page.json()["next"]


@contextlib.contextmanager
def reading(server: Sessiond, path: str, headers: Mapping[str, str], **params: Any) -> Any:
    reader = Reader(server.url + path, headers, params)
    try:
        yield reader
    finally:
        reader.close()
