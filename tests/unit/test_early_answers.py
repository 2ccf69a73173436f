"""`read_unread_bodies`: an answer sent before the body was read goes out after the rest of
the body has been read and dropped, within bounds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api import requests
from api.requests import read_unread_bodies

START = {"type": "http.response.start", "status": 413, "headers": [(b"x", b"1")]}


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/", "headers": list(headers)}


class Peer:
    """The server's side of one request: the body's parts to receive, what was sent."""

    def __init__(self, parts: int, size: int = 1000) -> None:
        self.parts = [
            {"type": "http.request", "body": b"x" * size, "more_body": n < parts - 1}
            for n in range(parts)
        ]
        self.received = 0
        self.sent: list[tuple[int, dict[str, Any]]] = []  # (parts received by then, message)

    async def receive(self) -> dict[str, Any]:
        if self.received == len(self.parts):
            await asyncio.sleep(3600)  # a client that sends nothing more
        self.received += 1
        return self.parts[self.received - 1]

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append((self.received, message))


async def early_answer(scope: Any, receive: Any, send: Any) -> None:
    await send(START)
    await send({"type": "http.response.body", "body": b"too large"})


async def reads_one_part(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await early_answer(scope, receive, send)


async def reads_everything(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await early_answer(scope, receive, send)


def run(app: Any, request_scope: dict[str, Any], peer: Peer) -> None:
    wrapped: Any = read_unread_bodies(app)
    asyncio.run(wrapped(request_scope, peer.receive, peer.send))


@pytest.mark.parametrize("app", [early_answer, reads_one_part])
def test_the_rest_of_the_body_is_read_before_the_answer(app: Any) -> None:
    peer = Peer(parts=5)
    run(app, scope((b"content-length", b"5000")), peer)
    assert peer.received == 5
    assert [received for received, _ in peer.sent] == [5, 5]
    assert peer.sent[0][1] == START  # the answer as the app gave it


def test_a_chunked_body_is_read_too() -> None:
    peer = Peer(parts=3)
    run(early_answer, scope((b"transfer-encoding", b"chunked")), peer)
    assert peer.received == 3


def test_a_body_the_app_read_is_not_read_again() -> None:
    peer = Peer(parts=3)
    run(reads_everything, scope((b"content-length", b"3000")), peer)
    assert peer.received == 3
    assert peer.sent[0][1] == START


@pytest.mark.parametrize(
    "headers",
    [
        (),
        ((b"content-length", b"0"),),
        ((b"content-length", b"10"), (b"expect", b"100-continue")),
    ],
)
def test_no_body_to_wait_for_means_no_read(headers: tuple[tuple[bytes, bytes], ...]) -> None:
    peer = Peer(parts=2)
    run(early_answer, scope(*headers), peer)
    assert peer.received == 0
    assert peer.sent[0][1] == START


def test_past_the_byte_bound_the_answer_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(requests, "DRAIN_BYTES", 2500)
    peer = Peer(parts=10)
    run(early_answer, scope((b"content-length", b"10000")), peer)
    assert peer.received < 10
    headers = peer.sent[0][1]["headers"]
    assert (b"connection", b"close") in headers
    assert (b"x", b"1") in headers


def test_a_client_that_stops_sending_is_waited_for_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(requests, "DRAIN_SECONDS", 0.05)
    peer = Peer(parts=2)
    peer.parts[-1]["more_body"] = True  # promises more, sends nothing
    run(early_answer, scope((b"content-length", b"10000")), peer)
    assert peer.received == 2
    assert (b"connection", b"close") in peer.sent[0][1]["headers"]
