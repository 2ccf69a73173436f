"""The HTTP client webhook deliveries use, safe against SSRF.

An `httpx.AsyncClient` whose transport is aiohttp's connection pool (`httpx-aiohttp`): the same
httpx API and exceptions, for about a third of httpcore's CPU per POST (0.44 against 1.1 to 1.6 ms
on the 2-core development machine, any number of requests in flight; httpcore's own cost grows
with them), which is what lets four workers keep up with 500 deliveries a second there.

Every address is vetted before anything is sent to it, in three places that each see it:
- a literal host (``127.0.0.1``, ``[::ffff:7f00:1]``, and the legacy spellings ``2130706433``,
  ``0x7f000001``, ``127.1`` that resolvers accept) is judged before aiohttp sees the URL;
- a name is resolved by our resolver, which refuses it unless every address is public (aiohttp
  then connects to those very addresses: DNS cannot change between the check and the connect);
- the socket factory judges the address of every socket about to connect, whatever led to it.
Redirects are not followed, the environment's proxies are ignored and no cookie is kept.
A refusal says only that (``refused: not a public address``): the attempt is recorded and shown
to whoever holds a key of the session, so which addresses a name resolves to goes to the log
only.
"""

from __future__ import annotations

import http.cookiejar
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from domain.errors import InvalidValue
from domain.webhook import check_url

log = logging.getLogger(__name__)
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


#: The error of an attempt whose target was refused (the log says which address, and why).
REFUSED_NOT_PUBLIC = "refused: not a public address"
REFUSED_NOT_PRIVATE = (
    "refused: not a private address (SESSIOND_WEBHOOKS_ALLOW_PRIVATE=only delivers to private "
    "addresses only)"
)


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


def registration_refusal(url: str, *, allow_private: bool = False) -> str | None:
    """Why this URL can never be a webhook target, or None if it may be one: its shape
    (`domain.webhook.check_url`), then an address written in it that is not public.

    For a 422 at registration. It cannot see where a name resolves, and DNS can change, so the
    check at connection time stays the real defence.
    """
    try:
        check_url(url)
        parsed = httpx.URL(url)  # what the client will connect to
    except InvalidValue as error:
        return str(error)
    except httpx.InvalidURL as exc:
        return f"the URL is not valid: {exc}"
    ip = _literal_ip(parsed.host)
    if ip is not None and not allow_private and not is_public(ip):
        return f"the URL's host {parsed.host} is the address {ip}, which is not public"
    return None


class _Refused(OSError):
    """An address the policy refuses; raised where aiohttp expects an `OSError`. Its message
    says which (for the log); `reason` says only why, for the attempt's record."""

    def __init__(self, message: str, reason: str = REFUSED_NOT_PUBLIC) -> None:
        super().__init__(message)
        self.reason = reason


def _parsed(address: str) -> IPAddress:
    """An address aiohttp is about to use; one that does not parse is refused."""
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise _Refused(
            f"webhook target address {address!r} is not an IP address; refused"
        ) from None


@dataclass(frozen=True)
class _Policy:
    """Which addresses a webhook may be sent to."""

    allow_private: bool  # private and loopback targets too (development and tests)
    private_only: bool  # only private and loopback targets (closed networks, tests)

    def check(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """Refuse `host` unless every one of its addresses may be reached."""
        if not (self.allow_private or self.private_only):
            refused = [ip for ip in addresses if not is_public(ip)]
            if refused:
                listed = ", ".join(str(ip) for ip in refused)
                raise _Refused(
                    f"webhook target {host!r} resolves to non-public address {listed}; refused"
                )
        if self.private_only:
            public = [ip for ip in addresses if is_public(ip)]
            if public:
                listed = ", ".join(str(ip) for ip in public)
                raise _Refused(
                    f"webhook target {host!r} resolves to public address {listed}; refused "
                    "(SESSIOND_WEBHOOKS_ALLOW_PRIVATE=only delivers to private addresses only)",
                    REFUSED_NOT_PRIVATE,
                )

    def socket_factory(self) -> Callable[[tuple[Any, ...]], socket.socket]:
        """aiohttp's socket factory: the address of every connection is judged first."""

        def make(addr_info: tuple[Any, ...]) -> socket.socket:
            family, kind, proto, _, sockaddr = addr_info
            address = str(sockaddr[0])
            self.check(address, [_parsed(address)])
            return socket.socket(family, kind, proto)

        return make


class _VettingResolver(AbstractResolver):
    """aiohttp's threaded resolver (the system's getaddrinfo), refusing a name unless every
    address it resolves to may be reached."""

    def __init__(self, policy: _Policy) -> None:
        self._policy = policy
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        self._policy.check(host, [_parsed(r["host"]) for r in results])
        return results

    async def close(self) -> None:
        await self._inner.close()


def _refusal(exc: BaseException) -> _Refused | None:
    """The refusal behind an exception aiohttp raised, if it is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _Refused):
            return seen
        seen = seen.__cause__
    return None


#: httpx's class for aiohttp's exceptions, most specific first. (httpx-aiohttp 0.2.0's own table
#: turns every connection error, a refused connection or a bad certificate too, into a
#: ConnectTimeout: it takes the first match, a base class, then only moves to subclasses of it.)
_HTTPX_CLASSES: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientOSError, httpx.ReadError),  # a reset connection among others
    (aiohttp.ClientConnectionError, httpx.RemoteProtocolError),  # "Connection closed"
    (aiohttp.ClientError, httpx.RemoteProtocolError),  # a malformed answer, whatever else
)


def _as_httpx(exc: BaseException, request: httpx.Request) -> httpx.TransportError | None:
    """The httpx exception for one the transport raised (httpx-aiohttp's, already mapped by
    its table, or aiohttp's own, which its table misses: a malformed answer is one); None if
    it is none of aiohttp's."""
    refused = _refusal(exc)
    if refused is not None:
        log.warning("webhook delivery to %s: %s", request.url, refused)
        return BlockedAddress(refused.reason, request=request)
    cause = exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__
    for kind, mapped in _HTTPX_CLASSES:
        if isinstance(cause, kind):
            return mapped(str(exc), request=request)
    return None


class _MappedStream(httpx.AsyncByteStream):
    """The answer's body, its errors mapped as `handle_async_request`'s are."""

    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            raise (_as_httpx(exc, self._request) or exc) from exc

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            raise (_as_httpx(exc, self._request) or exc) from exc


class _VettedTransport(AiohttpTransport):
    """httpx-aiohttp's transport on a session whose addresses are vetted (see above)."""

    def __init__(
        self,
        policy: _Policy,
        *,
        max_connections: int,
        keepalive_expiry: float,
        ssl_context: ssl.SSLContext,
    ) -> None:
        def session() -> aiohttp.ClientSession:  # made on first use, in the running loop
            connector = aiohttp.TCPConnector(
                limit=max_connections,
                limit_per_host=0,
                keepalive_timeout=keepalive_expiry,
                ssl=ssl_context,
                resolver=_VettingResolver(policy),
                socket_factory=policy.socket_factory(),
            )
            return aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
                auto_decompress=False,
            )

        super().__init__(verify=ssl_context, trust_env=False, client=session)
        self._policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        literal = _literal_ip(host)
        try:
            if literal is not None:  # aiohttp would not resolve it, nor judge its spelling
                self._policy.check(host, [literal])
            response = await super().handle_async_request(request)
        except (_Refused, httpx.TransportError, aiohttp.ClientError) as exc:
            raise (_as_httpx(exc, request) or exc) from exc
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _MappedStream(response.stream, request)
        return response


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Webhooks are stateless: a receiver's cookies are never kept, so never sent back."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


def webhook_client(
    *,
    allow_private: bool,
    connect_timeout: float = 5.0,
    read_timeout: float = 10.0,
    max_connections: int = 100,
    private_only: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncClient:
    """An HTTP client for webhook deliveries: vetted targets, no redirects, no proxies, no
    cookies.

    `allow_private` lets loopback and private targets through (development and tests only);
    `private_only` lets only them through (tests, closed networks: nothing leaves the host's
    networks). `ssl_context` replaces the system's certificate authorities (tests).
    Connect and read are bounded; a receiver that trickles bytes, or whose chunked body breaks
    after the headers (aiohttp then stops the read timer and the body never ends), is bounded
    only by the caller's overall deadline: always set one. Build it outside the event loop: it
    loads the certificate authorities.
    """
    transport = _VettedTransport(
        _Policy(allow_private=allow_private, private_only=private_only),
        max_connections=max_connections,
        keepalive_expiry=5.0,
        ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        ),
        follow_redirects=False,
        trust_env=False,
        cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
    )
