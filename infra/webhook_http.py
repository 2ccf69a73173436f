"""The HTTP client webhook deliveries use, safe against SSRF.

Every connection is vetted after DNS resolution: the client resolves the host itself, refuses it
unless every address is public, then connects to a vetted address, so DNS cannot change between
the check and the connect. Redirects are not followed and the environment's proxies are ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import select
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",  # "this network", includes the unspecified 0.0.0.0
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata services
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes the broadcast 255.255.255.255
    )
)

# All global unicast IPv6 lives in 2000::/3; anything outside it (loopback, unspecified, ULA
# fc00::/7, link-local fe80::/10, site-local, multicast ff00::/8, discard 100::/64, local-use
# NAT64 64:ff9b:1::/48, reserved) is refused, except the forms that embed an IPv4 address.
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "2001::/23",  # IETF protocol assignments (Teredo 2001::/32 is unwrapped before this)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

# Characters of the legacy IPv4 spellings inet_aton accepts: 2130706433, 0x7f000001, 0177.1.
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")


class BlockedAddress(httpx.ConnectError):
    """The webhook target resolved to an address that is not public; nothing was sent."""


def is_public(ip: IPAddress | str) -> bool:
    """Whether a webhook may be delivered to this address (IPv4 embedded in IPv6 is unwrapped)."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv4Address):
        return _is_public_v4(address)
    return _is_public_v6(address)


def _is_public_v4(ip: ipaddress.IPv4Address) -> bool:
    # is_global alone is not enough: Python counts multicast as global.
    return ip.is_global and not ip.is_multicast and not any(ip in net for net in _BLOCKED_V4)


def _is_public_v6(ip: ipaddress.IPv6Address) -> bool:
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        # Mapped, compatible and NAT64 addresses are another spelling of the IPv4 target; 6to4
        # and Teredo tunnel through the IPv4 relay and client they embed.
        return all(_is_public_v4(v4) for v4 in embedded)
    return ip in _GLOBAL_UNICAST_V6 and not any(ip in net for net in _BLOCKED_V6)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _IPV4_COMPATIBLE or ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [server, client]
    return None


def _literal_ip(host: str) -> IPAddress | None:
    """The address a host spells literally, legacy IPv4 forms included; None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_url(url: str, *, allow_private: bool = False) -> str | None:
    """Why this URL can never be a webhook target, or None if it may be one.

    For a 422 at registration. It cannot see where a name resolves, and DNS can change, so the
    check at connection time stays the real defence.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return f"the URL is not valid: {exc}"
    if parsed.scheme not in ("http", "https"):
        return "the URL must use http or https"
    if not parsed.host:
        return "the URL has no host"
    if parsed.userinfo:
        return "the URL must not contain a user name or password"
    ip = _literal_ip(parsed.host)
    if ip is not None and not allow_private and not is_public(ip):
        return f"the URL's host {parsed.host} is the address {ip}, which is not public"
    return None


def _readable(sock: socket.socket) -> bool:
    """Whether reading `sock` would not block (data, or the peer closed): for an idle
    keep-alive connection, that the server has closed it. A closed socket counts as readable."""
    if sock.fileno() == -1:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _Stream(httpcore.AsyncNetworkStream):
    """anyio's stream, but asked whether it is readable through its socket, found once.

    httpcore asks every pooled connection that before each request and after each answer
    (`has_expired`), and anyio answers each question by building its table of attributes
    anew: about a fifth of a delivery's CPU time went there with 8 connections in a client.
    """

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return _readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


class VettingBackend(httpcore.AsyncNetworkBackend):
    """Resolves every host itself and connects only to vetted addresses."""

    def __init__(self, *, allow_private: bool, private_only: bool = False) -> None:
        self._allow_private = allow_private or private_only
        self._private_only = private_only
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        addresses = await self._resolve(host, port, timeout)
        if not self._allow_private:
            refused = [ip for ip in addresses if not is_public(ip)]
            if refused:
                listed = ", ".join(str(ip) for ip in refused)
                raise BlockedAddress(
                    f"webhook target {host!r} resolves to non-public address {listed}; refused"
                )
        if self._private_only:
            public = [ip for ip in addresses if is_public(ip)]
            if public:
                listed = ", ".join(str(ip) for ip in public)
                raise BlockedAddress(
                    f"webhook target {host!r} resolves to public address {listed}; refused "
                    "(SESSIOND_WEBHOOKS_ALLOW_PRIVATE=only delivers to private addresses only)"
                )
        # Connecting to the address, not the name, pins the vetted address. TLS still verifies
        # the certificate against the original name: httpcore calls start_tls with
        # server_hostname taken from the request's origin (or the sni_hostname extension), never
        # from the address connected to, so SNI and hostname checking are unchanged.
        error: Exception | None = None
        for ip in addresses:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                stream = await self._backend.connect_tcp(
                    str(ip),
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
                return _Stream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None  # _resolve returns at least one address
        raise error

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        literal = _literal_ip(host)
        if literal is not None:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        addresses: list[IPAddress] = []
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(sockaddr[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} resolves to no address")
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never delivered over Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _VettedTransport(httpx.AsyncHTTPTransport):
    def __init__(
        self, *, allow_private: bool, limits: httpx.Limits, private_only: bool = False
    ) -> None:
        super().__init__(limits=limits, trust_env=False)
        # httpx takes no network backend, so the pool it built is replaced by one that has ours;
        # it opened nothing yet. The other arguments are those httpx passes (no proxy, no uds).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=VettingBackend(allow_private=allow_private, private_only=private_only),
        )


def webhook_client(
    *,
    allow_private: bool,
    connect_timeout: float = 5.0,
    read_timeout: float = 10.0,
    max_connections: int = 100,
    private_only: bool = False,
) -> httpx.AsyncClient:
    """An HTTP client for webhook deliveries: vetted targets, no redirects, no proxies.

    `allow_private` lets loopback and private targets through (development and tests only);
    `private_only` lets only them through (tests, closed networks: nothing leaves the host's
    networks).
    Connect and read are bounded; a receiver that trickles bytes is bounded only by the caller's
    overall deadline.
    """
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
    return httpx.AsyncClient(
        transport=_VettedTransport(
            allow_private=allow_private, limits=limits, private_only=private_only
        ),
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        ),
        follow_redirects=False,
        trust_env=False,
    )
