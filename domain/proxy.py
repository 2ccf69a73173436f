"""A session's proxy: the address its WhatsApp connection dials through, checked and masked.

The password is a secret: it is kept apart from the address shown (``socks5://user:***@host:port``)
so that nothing which shows a session (answers, history, logs) can print it by mistake.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from domain.errors import InvalidProxy

#: The schemes whatsmeow dials through (its ``SetProxyAddress``): SOCKS5 and HTTP(S) CONNECT.
PROXY_SCHEMES = ("socks5", "http", "https")
MAX_PROXY_URL_LENGTH = 2048
MASK = "***"
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


@dataclass(frozen=True)
class ProxyAddress:
    """A proxy: scheme, host, port, and optional credentials (`password` is the secret)."""

    scheme: str
    host: str
    port: int
    username: str = ""
    password: str = ""

    @property
    def masked(self) -> str:
        """The address as shown anywhere: the password replaced by ``***``."""
        return self._url(MASK if self.password else "")

    @property
    def url(self) -> str:
        """The full address, password included: for the gateway's dial only."""
        return self._url(quote(self.password, safe=""))

    def _url(self, password: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = quote(self.username, safe="") if self.username else ""
        if password:
            userinfo += ":" + password
        at = f"{userinfo}@" if userinfo else ""
        return f"{self.scheme}://{at}{host}:{self.port}"

    @classmethod
    def unmask(cls, masked: str, password: str) -> ProxyAddress:
        """The proxy a masked address and its password (as recorded) stand for."""
        shown = parse_proxy_url(masked.replace(f":{MASK}@", "@", 1))
        return cls(shown.scheme, shown.host, shown.port, shown.username, password)


def parse_proxy_url(url: str) -> ProxyAddress:
    """The proxy `url` names (``socks5://user:pass@host:port``, ``http://host:port``);
    `InvalidValue` saying what is wrong otherwise. The port is required: proxies have no
    usual port worth guessing."""
    if not url or len(url) > MAX_PROXY_URL_LENGTH:
        raise InvalidProxy(f"a proxy URL is 1 to {MAX_PROXY_URL_LENGTH} characters")
    if any(not c.isprintable() or c.isspace() for c in url):
        raise InvalidProxy("a proxy URL has no spaces or control characters")
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in PROXY_SCHEMES:
        raise InvalidProxy(
            "a proxy URL starts with socks5://, http:// or https:// "
            "(e.g. socks5://user:password@proxy.example.com:1080)"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        # Not the parser's words: they quote what was typed, which may hold the password.
        raise InvalidProxy(
            "the proxy URL is malformed: write scheme://user:password@host:port, "
            "the port a number from 1 to 65535"
        ) from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidProxy("a proxy URL has no path, query or fragment: scheme://host:port")
    host = parts.hostname or ""
    if not host:
        raise InvalidProxy("the proxy URL names no host (scheme://host:port)")
    if not _valid_host(host):
        raise InvalidProxy(f"{host!r} is not a host name or an IP address")
    if port is None:
        raise InvalidProxy("the proxy URL names no port (scheme://host:port)")
    if not 1 <= port <= 65535:
        raise InvalidProxy("the proxy's port is between 1 and 65535")
    username = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if password and not username:
        raise InvalidProxy("the proxy URL has a password without a user name")
    if any(not c.isprintable() for c in username + password):
        raise InvalidProxy("the proxy's user name and password have no control characters")
    return ProxyAddress(scheme.lower(), host.lower(), port, username, password)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOST_NAME.fullmatch(host))
    return True


def hide_password(text: str, password: str) -> str:
    """`text` (a library's message) with the proxy's password, raw or URL-encoded, masked."""
    if not password:
        return text
    for form in {password, quote(password, safe="")}:
        text = text.replace(form, MASK)
    return text
