"""The webhook HTTP client refuses internal targets at connect time, in every spelling."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from infra.webhooks.client import (
    BlockedAddress,
    _Policy,
    _VettingResolver,
    is_public,
    registration_refusal,
    webhook_client,
)


@dataclass
class Canary:
    """An HTTP server on 127.0.0.1 that records every connection and request line."""

    port: int = 0
    connections: int = 0
    requests: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line = head.split(b"\r\n", 1)[0].decode()
        self.requests.append(request_line)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        path = request_line.split(" ")[1]
        if path == "/hang":
            await reader.read()  # never answers; returns when the client gives up
        elif path == "/redirect":
            writer.write(
                b"HTTP/1.1 302 Found\r\nLocation: /second\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
        else:
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    canary = Canary()
    server = await asyncio.start_server(canary.handle, "127.0.0.1", 0)
    canary.port = server.sockets[0].getsockname()[1]
    async with server:
        yield canary
        server.close()


#: A connect time-out no refusal may come near: one that waited for a connect would be late.
CONNECT_FOREVER = 30.0

HOSTILE_TARGETS = [
    "127.0.0.1:{port}",
    "localhost:{port}",
    "LOCALHOST:{port}",
    "runsc:{port}",  # in /etc/hosts as 127.0.0.1
    "vm:{port}",  # in /etc/hosts as 127.0.0.1
    "2130706433:{port}",  # decimal
    "0x7f000001:{port}",  # hex
    "0x7f.0x0.0x0.0x1:{port}",  # dotted hex
    "017700000001:{port}",  # octal
    "127.1:{port}",
    "127.0.1:{port}",
    "0.0.0.0:{port}",
    "0:{port}",
    "[::1]:{port}",
    "[::]:{port}",
    "[::ffff:127.0.0.1]:{port}",  # IPv4-mapped
    "[::ffff:7f00:1]:{port}",
    "[0:0:0:0:0:ffff:127.0.0.1]:{port}",
    "[::127.0.0.1]:{port}",  # IPv4-compatible
    "[64:ff9b::7f00:1]:{port}",  # NAT64
    "[2002:7f00:1::]:{port}",  # 6to4
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}",  # Teredo, client 127.0.0.1
    "169.254.169.254:{port}",  # cloud metadata
    "[::ffff:a9fe:a9fe]:{port}",  # cloud metadata, IPv4-mapped
    "10.0.0.1:{port}",
    "172.16.0.1:{port}",
    "192.168.0.1:{port}",
    "100.64.0.1:{port}",
    "198.18.0.1:{port}",
    "255.255.255.255:{port}",
    "224.0.0.1:{port}",
    "[fc00::1]:{port}",
    "[fe80::1%25lo]:{port}",
    "[ff02::1]:{port}",
]


async def test_the_canary_receives_posts_when_private_targets_are_allowed(canary: Canary) -> None:
    async with webhook_client(allow_private=True) as client:
        response = await client.post(f"http://localhost:{canary.port}/hook", json={"a": 1})

    assert response.status_code == 204
    assert canary.requests == ["POST /hook HTTP/1.1"]


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
async def test_a_hostile_target_is_refused_before_anything_is_sent(
    canary: Canary, target: str
) -> None:
    url = "http://" + target.format(port=canary.port) + "/hook"
    async with webhook_client(allow_private=False, connect_timeout=CONNECT_FOREVER) as client:
        started = time.monotonic()
        with pytest.raises(BlockedAddress, match=r"^refused: not a public address$"):
            await client.post(url, json={"type": "probe"})

    # Check it was refused before any connect attempt, not after one timed out (a connect to
    # an address that does not answer would wait the whole CONNECT_FOREVER).
    assert time.monotonic() - started < CONNECT_FOREVER / 3
    assert canary.connections == 0
    assert canary.requests == []


async def test_the_canary_receives_nothing_from_any_hostile_spelling(canary: Canary) -> None:
    refused = 0
    async with webhook_client(allow_private=False, connect_timeout=0.5) as client:
        for target in HOSTILE_TARGETS:
            with pytest.raises(httpx.ConnectError):
                await client.post("http://" + target.format(port=canary.port) + "/")
            refused += 1
        # Check spellings that httpx itself rejects never reach the network either.
        for target in ("0177.0.0.1", "127.000.000.001"):
            with pytest.raises(httpx.InvalidURL):
                await client.post(f"http://{target}:{canary.port}/")

    assert refused >= 20
    assert canary.connections == 0


async def test_a_redirect_is_returned_and_not_followed(canary: Canary) -> None:
    async with webhook_client(allow_private=True) as client:
        response = await client.post(f"http://127.0.0.1:{canary.port}/redirect", content=b"{}")

    assert response.status_code == 302
    assert response.is_redirect
    assert canary.requests == ["POST /redirect HTTP/1.1"]


async def test_a_receiver_that_never_answers_hits_the_read_timeout(canary: Canary) -> None:
    async with webhook_client(allow_private=True, read_timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"http://127.0.0.1:{canary.port}/hang", content=b"{}")
        elapsed = time.monotonic() - started

    assert 0.4 < elapsed < CONNECT_FOREVER / 3  # not before the time-out; and it ended


async def test_a_slow_receiver_does_not_block_another_delivery(canary: Canary) -> None:
    async with webhook_client(allow_private=True, read_timeout=5.0) as client:
        slow = asyncio.create_task(client.post(f"http://127.0.0.1:{canary.port}/hang"))
        while "POST /hang HTTP/1.1" not in canary.requests:  # in flight: the receiver has it
            await asyncio.sleep(0.01)
        response = await client.post(f"http://127.0.0.1:{canary.port}/fast")
        # Check the fast one answered while the slow one still waits for its answer.
        assert not slow.done()
        with pytest.raises(httpx.ReadTimeout):
            await slow

    assert response.status_code == 204


async def test_the_environment_proxy_is_ignored(
    canary: Canary, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.255.255.1:3128")
    async with webhook_client(allow_private=True, connect_timeout=0.5) as client:
        response = await client.post(f"http://127.0.0.1:{canary.port}/hook")

    assert response.status_code == 204


async def test_cookies_a_receiver_sets_are_never_sent_back(canary: Canary) -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            seen.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nSet-Cookie: tenant=a; Path=/\r\nContent-Length: 0\r\n\r\n"
            )
            await writer.drain()
            if len(seen) == 2:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, webhook_client(allow_private=True) as client:
        for _ in range(2):
            response = await client.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
            assert response.status_code == 200
        server.close()

    assert len(seen) == 2
    assert b"cookie:" not in seen[1].lower()


class _FixedResolver:
    """Resolves every name to the same addresses."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, object]]:
        return [
            {"hostname": host, "host": a, "port": port, "family": 0, "proto": 0, "flags": 0}
            for a in self.addresses
        ]

    async def close(self) -> None:
        pass


async def test_a_name_with_one_private_address_among_public_ones_is_refused() -> None:
    resolver = _VettingResolver(_Policy(allow_private=False, private_only=False))
    resolver._inner = _FixedResolver("93.184.216.34", "10.0.0.7")  # type: ignore[assignment]
    with pytest.raises(OSError, match=r"non-public address 10\.0\.0\.7"):
        await resolver.resolve("mixed.example", 443)
    resolver._inner = _FixedResolver("93.184.216.34", "2606:2800:220:1::")  # type: ignore[assignment]
    assert [r["host"] for r in await resolver.resolve("public.example", 443)] == [
        "93.184.216.34",
        "2606:2800:220:1::",
    ]


@pytest.mark.parametrize(
    ("address", "family"),
    [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6), ("169.254.169.254", socket.AF_INET)],
)
def test_the_socket_factory_refuses_a_private_address_whatever_led_to_it(
    address: str, family: socket.AddressFamily
) -> None:
    make = _Policy(allow_private=False, private_only=False).socket_factory()
    with pytest.raises(OSError, match="non-public address"):
        make((family, socket.SOCK_STREAM, 6, "", (address, 443)))
    allowed = _Policy(allow_private=True, private_only=False).socket_factory()
    allowed((family, socket.SOCK_STREAM, 6, "", (address, 443))).close()


def _certificate_for_localhost(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_verifies_the_host_name_although_the_connection_is_made_to_the_address(
    canary: Canary, tmp_path: Path
) -> None:
    cert_path, key_path = _certificate_for_localhost(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    server = await asyncio.start_server(canary.handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(cert_path))
    async with server, webhook_client(allow_private=True, ssl_context=client_context) as client:
        # Check the certificate for "localhost" is accepted: SNI and verification use the name.
        response = await client.post(f"https://localhost:{port}/hook")
        assert response.status_code == 204
        # Check a certificate that does not name the host is still refused.
        with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|mismatch"):
            await client.post(f"https://127.0.0.1:{port}/hook")
        server.close()

    assert canary.requests == ["POST /hook HTTP/1.1"]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:2800:220:1::", True),
        ("2a00:1450:4001:82b::200e", True),
        ("::ffff:93.184.216.34", True),  # IPv4-mapped public
        ("64:ff9b::5db8:d822", True),  # NAT64 of 93.184.216.34
        ("2002:5db8:d822::1", True),  # 6to4 of 93.184.216.34
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("0.0.0.0", False),
        ("0.1.2.3", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("100.127.255.255", False),
        ("169.254.169.254", False),
        ("192.0.0.8", False),
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("198.19.255.255", False),
        ("198.51.100.1", False),
        ("203.0.113.1", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("::127.0.0.1", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b:1::1", False),  # local-use NAT64
        ("2002:a00:1::", False),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo, client 127.0.0.1
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("100::1", False),
        ("2001:db8::1", False),
        ("3fff::1", False),
    ],
)
def test_is_public_allows_only_global_unicast(address: str, public: bool) -> None:
    assert is_public(address) is public


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://example.com/hook", None),
        ("http://93.184.216.34:8080/hook", None),
        ("http://[2606:2800:220:1::]/hook", None),
        ("ftp://example.com/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        ("http:///hook", "no host"),
        ("https://user:secret@example.com/hook", "user name or password"),
        ("http://127.0.0.1/hook", "not public"),
        ("http://2130706433/hook", "not public"),
        ("http://0x7f000001/hook", "not public"),
        ("http://127.1/hook", "not public"),
        ("http://[::ffff:127.0.0.1]/hook", "not public"),
        ("http://169.254.169.254/latest/meta-data", "not public"),
        ("http://[fe80::1%25lo]/hook", "not public"),
        ("http://0177.0.0.1/hook", "not valid"),
        ("not a url at all", "http or https"),
    ],
)
def test_registration_refusal_explains_targets_that_can_never_be_valid(
    url: str, reason: str | None
) -> None:
    result = registration_refusal(url)
    if reason is None:
        assert result is None
    else:
        assert result is not None
        assert reason in result


def test_registration_refusal_lets_loopback_through_when_private_targets_are_allowed() -> None:
    assert registration_refusal("http://127.0.0.1:8080/hook", allow_private=True) is None
    # Check a name is never judged at registration: it is vetted when connecting.
    assert registration_refusal("http://localhost:8080/hook") is None


async def test_transport_errors_keep_their_httpx_class() -> None:
    # A closed port: refused at once, a ConnectError (httpx-aiohttp alone says ConnectTimeout).
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()  # no answer at all

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, webhook_client(allow_private=True, connect_timeout=2) as client:
        with pytest.raises(httpx.ConnectError) as refused:
            await client.post(f"http://127.0.0.1:{closed_port}/hook")
        with pytest.raises(httpx.RemoteProtocolError, match="disconnected"):
            await client.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
        server.close()

    assert not isinstance(refused.value, BlockedAddress)


async def test_a_malformed_answer_or_a_cut_body_is_an_httpx_error() -> None:
    answers = iter(
        [
            b"HELLO\r\n\r\n",  # not HTTP at all
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",  # then closed
        ]
    )

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(next(answers))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    async with server, webhook_client(allow_private=True, connect_timeout=2) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(url)
        response = await client.send(client.build_request("POST", url), stream=True)
        assert response.status_code == 200
        with pytest.raises(httpx.ReadError):
            async for _ in response.aiter_raw():
                pass
        await response.aclose()
        server.close()
