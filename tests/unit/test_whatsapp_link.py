"""The link check: WhatsApp's first hop, direct or through the proxy the environment names,
as Go finds it. Proxies here are sockets on 127.0.0.1; the direct case uses a fake connector.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from infra.whatsapp.link import LinkCheck, proxy_for


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        ({"https_proxy": "p:3128"}, "http://p:3128"),  # Go assumes http://
        ({"HTTP_PROXY": "http://p:3128"}, None),  # https URLs use HTTPS_PROXY only
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "*"}, None),
        ({"HTTPS_PROXY": "http://p:3128", "no_proxy": "example.com, whatsapp.com"}, None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".whatsapp.com"}, None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "example.com"}, "http://p:3128"),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "app.com"}, "http://p:3128"),
    ],
)
def test_the_proxy_is_chosen_as_go_chooses_it(
    environ: dict[str, str], expected: str | None
) -> None:
    assert proxy_for("web.whatsapp.com", environ) == expected


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def proxy() -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """A one-line HTTP proxy on 127.0.0.1: answers each CONNECT with the next answer given."""
    server = socket.create_server(("127.0.0.1", 0))
    answers: list[bytes] = []
    requests: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                requests.append(conn.recv(1024))
                conn.sendall(answers.pop(0) if answers else b"")

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], answers, requests
    server.close()


def test_a_closed_proxy_port_is_reported_with_its_address() -> None:
    port = free_port()
    check = LinkCheck(environ={"HTTPS_PROXY": f"http://127.0.0.1:{port}"})
    why = check.failure()
    assert why is not None
    assert why.startswith(f"cannot reach web.whatsapp.com:443 through the proxy 127.0.0.1:{port}")
    assert "refused" in why


Proxy = tuple[int, list[bytes], list[bytes]]


def failure_through(proxy: Proxy, answer: bytes, scheme: str = "http://") -> str | None:
    """What the check says when the proxy (named with `scheme`, or without one) answers the
    tunnel's request with `answer`."""
    port, answers, _ = proxy
    answers.append(answer)
    return LinkCheck(environ={"HTTPS_PROXY": f"{scheme}127.0.0.1:{port}"}).failure()


def test_a_proxy_that_connects_lets_the_start_through(proxy: Proxy) -> None:
    answer = b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert failure_through(proxy, answer, scheme="") is None
    assert proxy[2][0].startswith(b"CONNECT web.whatsapp.com:443 HTTP/1.1\r\n")


def test_a_proxy_that_refuses_the_tunnel_is_a_failure(proxy: Proxy) -> None:
    port = proxy[0]
    assert failure_through(proxy, b"HTTP/1.1 403 Forbidden\r\n\r\n") == (
        f"the proxy 127.0.0.1:{port} refused to reach web.whatsapp.com:443: HTTP/1.1 403 Forbidden"
    )


def test_one_check_serves_every_caller_for_its_ttl() -> None:
    dials: list[tuple[str, int]] = []
    now = [0.0]

    def refuse(address: tuple[str, int], timeout: float) -> socket.socket:
        dials.append(address)
        raise OSError(101, "Network is unreachable")

    check = LinkCheck(ttl=1.0, environ={}, connect=refuse, clock=lambda: now[0])
    answers = {check.failure() for _ in range(50)}
    assert answers == {"cannot reach web.whatsapp.com:443: [Errno 101] Network is unreachable"}
    assert dials == [("web.whatsapp.com", 443)]
    now[0] = 1.5
    check.failure()
    assert len(dials) == 2


def test_a_sessions_own_proxy_is_checked_instead_with_its_credentials(
    proxy: tuple[int, list[bytes], list[bytes]],
) -> None:
    port, answers, requests = proxy
    answers += [b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", b"HTTP/1.1 502 Bad\r\n\r\n"]
    check = LinkCheck(ttl=0.0, environ={"HTTPS_PROXY": "http://127.0.0.1:1"})
    own = f"http://user:p%40ss@127.0.0.1:{port}"

    # Check the credentials go with the CONNECT; a 407 is the proxy's own failure.
    refused = check.diagnose(own)
    assert refused is not None and refused.at_proxy
    assert b"Proxy-Authorization: Basic dXNlcjpwQHNz\r\n" in requests[0]  # user:p@ss
    # ... while a proxy that cannot go on to WhatsApp is not.
    beyond = check.diagnose(own)
    assert beyond is not None and not beyond.at_proxy
    # Check a closed port is the proxy's failure, and the environment's proxy is separate.
    closed = check.diagnose(f"socks5://127.0.0.1:{free_port()}")
    assert closed is not None and closed.at_proxy and "refused" in closed.detail
    assert check.default_proxy() == "http://127.0.0.1:1"


def test_a_proxy_that_does_not_answer_holds_up_only_its_own_route() -> None:
    release = threading.Event()
    entered = threading.Event()

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        if address == ("10.0.0.1", 1080):  # a silent proxy: the dial hangs until released
            entered.set()
            release.wait(10)
        raise ConnectionRefusedError(111, "Connection refused")

    check = LinkCheck(ttl=60.0, environ={}, connect=connect)
    stuck = threading.Thread(target=check.diagnose, args=("socks5://10.0.0.1:1080",))
    stuck.start()
    assert entered.wait(5)
    # Check another proxy, and the direct route, are checked meanwhile.
    other = check.diagnose("socks5://10.0.0.2:1080")
    assert other is not None and other.at_proxy
    direct = check.diagnose()
    assert direct is not None and not direct.at_proxy
    assert stuck.is_alive()
    release.set()
    stuck.join(5)
    assert check.checks == 3
