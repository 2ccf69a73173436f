"""A client that does not read its stream cannot grow the server's memory: the server keeps
one bounded window of recent events for all its streams, a stream waits on its socket
instead of queueing, and once its client reads again it is ended with the position to resume
from (a last `end` event, `too-slow`); resuming from there misses and repeats nothing. A key
revoked while its stream's client does not read is cut all the same."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.e2e.conftest import ADMIN, Sessiond, key_of
from tests.e2e.streams import inbound, linked_session, message_positions, reading
from tests.waiting import eventually

#: A text of 4,096 characters of 3 bytes each: about 12 KB per event on the stream.
BIG_TEXT = "€" * 4096
MESSAGES_PER_SESSION = 250
#: The session whose key's stream is cut gets more: about 5 MB, more than the sockets hold.
MESSAGES_OF_BLOCKED = 400
SESSIONS = 4
WINDOW = 100


class RawStream:
    """An SSE request on a socket with a small receive buffer that reads nothing until told."""

    def __init__(self, port: int, path: str, headers: Mapping[str, str]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        self.sock.connect(("127.0.0.1", port))
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200"), head

    def drain(self, timeout: float = 60) -> tuple[bytes, bool]:
        """Read until the response ends (its last chunk) or the server closes the connection;
        the body (de-chunked), and whether it ended cleanly (the last chunk came)."""
        self.sock.settimeout(timeout)
        raw, body = b"", b""
        while True:
            size_line, found, rest = raw.partition(b"\r\n")
            if found and len(rest) >= int(size_line, 16) + 2:
                size = int(size_line, 16)
                if size == 0:
                    self.sock.close()
                    return body, True
                body, raw = body + rest[:size], rest[size + 2 :]
                continue
            got = self.sock.recv(1 << 20)
            if not got:
                self.sock.close()
                return body, False
            raw += got


def events_of(body: bytes) -> list[dict[str, Any]]:
    """The events of an SSE body: each frame's fields (comments left out)."""
    found = []
    for frame in body.decode().split("\n\n"):
        fields: dict[str, Any] = {}
        for line in frame.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if "data" in fields:
            found.append(fields)
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def http_process(server: Sessiond) -> int:
    """The granian worker process that serves the API (a child of `sessiond serve`, not its
    gateway worker)."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    for pid in children.read_text().split():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"infra.cli worker" not in cmdline:
            return int(pid)
    raise AssertionError("no HTTP worker process")


def test_readers_that_do_not_read_are_ended_with_a_resumable_position_in_bounded_memory(
    start: Callable[..., Sessiond], sessiond_env: dict[str, str]
) -> None:
    server = start(
        "serve",
        {**sessiond_env, "SESSIOND_STREAM_BUFFER": str(WINDOW), "SESSIOND_STREAM_HEARTBEAT": "1"},
    )
    client = server.client()
    assert server.port is not None
    sessions = [linked_session(client, f"Busy {n}") for n in range(SESSIONS)]
    blocked = sessions[0]
    sid = blocked["sessionId"]
    per_phase = (SESSIONS - 1) * MESSAGES_PER_SESSION + MESSAGES_OF_BLOCKED
    worker = http_process(server)

    def produce_and_measure() -> int:
        """Record `per_phase` big messages; how much the HTTP process grew meanwhile."""
        before = rss_kib(worker)

        def produce(session: dict[str, Any]) -> None:
            with server.client() as sender:
                count = MESSAGES_OF_BLOCKED if session is blocked else MESSAGES_PER_SESSION
                for _ in range(count):
                    inbound(sender, session["sessionId"], BIG_TEXT)

        with ThreadPoolExecutor(SESSIONS) as pool:
            list(pool.map(produce, sessions))
        time.sleep(1)
        return rss_kib(worker) - before

    # A reader that keeps up all along (httpx-sse).
    with reading(server, "/events/stream", ADMIN, types="message.received") as keeping_up:
        # The server's own growth for these messages, with no slow reader (its baseline).
        baseline = produce_and_measure()
        boundary = int(keeping_up.wait_for(lambda got: len(got) >= per_phase, "phase 1")[-1].id)

        # Check: the same again while three clients read nothing, each owed about 12 MB of
        # events, and a session key's client reads nothing either.
        slow = [
            RawStream(server.port, "/events/stream?types=message.received", ADMIN) for _ in range(3)
        ]
        revoked = RawStream(server.port, f"/sessions/{sid}/events/stream", key_of(blocked))
        grown = produce_and_measure()
        owed = 3 * per_phase * len(BIG_TEXT.encode())
        assert (grown - baseline) * 1024 < owed / 4, (
            f"with slow readers the server grew by {grown} KiB, without by {baseline} KiB"
        )
        print(
            f"HTTP process grew {baseline} KiB without slow readers, {grown} KiB with 3 "
            f"slow readers owed {owed // 1024} KiB"
        )
        keeping_up.wait_for(lambda got: len(got) >= 2 * per_phase, "every message", 120)
        assert [e.event for e in keeping_up.events] == ["message.received"] * 2 * per_phase

        # Check a key revoked while its stream's client reads nothing is cut (within a second
        # by design; waited for generously here, on a loaded machine): the stream read then
        # ends without its `end` event (it could not be sent). Read only once the server says
        # it cut it: read earlier, the blocked send would go on and the stream would end
        # cleanly with its `end` event.
        key_id = blocked["apiKey"]["keyId"]
        cut = f"an event stream of {sid} is cut without its end event (key-revoked)"
        assert cut not in server.full_log()
        assert client.delete(f"/sessions/{sid}/keys/{key_id}", headers=ADMIN).status_code == 204
        eventually(lambda: cut in server.full_log(), what="the server cut the revoked key's stream")
        body, clean = revoked.drain(timeout=10)
        assert not clean
        assert all(e.get("event") != "end" for e in events_of(body))

        # Check each slow stream, once read, ends with the position to resume from.
        ends = []
        for stream in slow:
            body, clean = stream.drain()
            assert clean
            received = events_of(body)
            end = received[-1]
            assert end["event"] == "end", end
            assert json.loads(end["data"])["reason"] == "too-slow"
            assert int(end["id"]) == json.loads(end["data"])["resumeAfter"]
            first = [e for e in received if e["event"] == "message.received"]
            assert 0 < len(first) < per_phase
            assert int(first[-1]["id"]) <= int(end["id"])
            ends.append((first, end["id"]))

        # Check resuming from there gets exactly the rest.
        first, resume_after = ends[0]
        with reading(
            server,
            "/events/stream",
            {**ADMIN, "Last-Event-ID": resume_after},
            types="message.received",
        ) as rest:
            rest.wait_for(lambda got: len(first) + len(got) >= per_phase, "the rest", 120)
            ids = [int(e["id"]) for e in first] + [int(e.id or 0) for e in rest.events]
    every = sorted(p for s in sessions for p in message_positions(client, s["sessionId"], 0))
    assert ids == [p for p in every if p > boundary]
