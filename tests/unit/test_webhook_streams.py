"""The webhook client's streams answer httpcore's "is this idle connection readable?" from
their socket: not readable while the server keeps the connection open, readable once it
closes it (so the pool drops it rather than send a delivery into a dead connection)."""

from __future__ import annotations

import asyncio

import httpcore

from infra.webhook_http import VettingBackend


async def test_an_idle_connection_turns_readable_when_the_server_closes_it() -> None:
    closed = asyncio.Event()
    peers: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        await closed.wait()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = VettingBackend(allow_private=True)
    stream = await backend.connect_tcp("127.0.0.1", port, timeout=5)
    try:
        for _ in range(50):
            if peers:
                break
            await asyncio.sleep(0.01)
        assert stream.get_extra_info("is_readable") is False
        assert stream.get_extra_info("socket") is not None
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
        peers[0].close()
        for _ in range(100):
            if stream.get_extra_info("is_readable"):
                break
            await asyncio.sleep(0.01)
        assert stream.get_extra_info("is_readable") is True
    finally:
        await stream.aclose()
        closed.set()
        server.close()
        await server.wait_closed()
    assert isinstance(stream, httpcore.AsyncNetworkStream)
