"""A webhook receiver on 127.0.0.1 for tests: records every request, answers from a script
(status codes, headers, pauses), and checks signatures with the official Standard Webhooks
verifier."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def verify(self, secret: str) -> Any:
        """The body, if it carries a valid signature for `secret` (else it raises)."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None  # written instead of an HTTP answer (then the connection closes)


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[Answer] = []  # answers to give first, in order; then `default`
        self.default = Answer()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    answer = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.received.append(
                        Received(self.path, dict(self.headers.items()), body, time.monotonic())
                    )
                    receiver.arrived.notify_all()
                if answer.delay:
                    time.sleep(answer.delay)
                if answer.raw is not None:
                    self.wfile.write(answer.raw)
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, check: Callable[[list[Received]], Any], timeout: float = 30.0) -> Any:
        """The first truthy `check(received)`, waiting for requests until `timeout`."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                result = check(list(self.received))
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"not received in {timeout} s: {self.types()}")
                self.arrived.wait(left)

    def signed(self, secret: str, kind: str, session_id: str) -> list[dict[str, Any]]:
        """The bodies of the deliveries of type `kind` about the session, every one checked
        to be signed with `secret` (else it raises)."""
        found = []
        for request in list(self.received):
            body = request.verify(secret)
            if body["type"] == kind and body["data"]["sessionId"] == session_id:
                found.append(body)
        return found

    def types(self) -> list[str]:
        return [json.loads(r.body).get("type", "?") for r in self.received]


@contextmanager
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.start()
    try:
        yield running
    finally:
        running.stop()
