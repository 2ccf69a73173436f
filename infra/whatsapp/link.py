"""Whether WhatsApp Web can be reached from here, checked the way whatsmeow dials it.

neonize leaves behind a store and a connection pool for every client start that fails
(`infra.whatsapp.devicestore`), so a session whose link is down is not handed to Go again on each
retry: the gateway first asks this check, which opens the first hop whatsmeow would open —
a TCP connection to ``web.whatsapp.com:443``, or to the HTTPS proxy named in the environment
(``HTTPS_PROXY`` / ``https_proxy``, unless ``NO_PROXY`` / ``no_proxy`` exempts the host: Go's
rules) and a ``CONNECT`` through it — and closes it. A session with a proxy of its own is
checked through that one instead (a SOCKS5 proxy only has to accept the connection). One check
of each route serves every session of the process that takes it for `ttl` seconds.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

WHATSAPP_HOST = "web.whatsapp.com"
WHATSAPP_PORT = 443

Connect = Callable[[tuple[str, int], float], socket.socket]
DEFAULT_PROXY_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}


def _env(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = environ.get(name, "")
        if value:
            return value
    return ""


def proxy_for(host: str, environ: Mapping[str, str]) -> str | None:
    """The proxy Go's ``http.ProxyFromEnvironment`` uses for ``https://<host>``, or None."""
    proxy = _env(environ, "HTTPS_PROXY", "https_proxy")
    if not proxy:
        return None
    for item in _env(environ, "NO_PROXY", "no_proxy").split(","):
        entry = item.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return None
        name = entry.split(":")[0].lstrip("*")
        if host == name.lstrip(".") or (name.startswith(".") and host.endswith(name)):
            return None
        if not name.startswith(".") and host.endswith("." + name):
            return None
    return proxy if "://" in proxy else "http://" + proxy


@dataclass(frozen=True)
class LinkFailure:
    """Why WhatsApp's first hop does not answer; `at_proxy`: the proxy itself failed (it
    cannot be reached, or broke off), rather than refused to go on to WhatsApp."""

    detail: str
    at_proxy: bool


class LinkCheck:
    """`failure()`: None when WhatsApp's first hop answers, else why it does not."""

    def __init__(
        self,
        *,
        ttl: float = 1.0,
        timeout: float = 5.0,
        environ: Mapping[str, str] | None = None,
        connect: Connect | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._environ = os.environ if environ is None else environ
        self._connect: Connect = connect or socket.create_connection
        self._clock = clock
        self._lock = threading.Lock()  # guards the answers and the routes' locks
        self._routes: dict[str, threading.Lock] = {}
        # per route (a session's proxy, or "" for the environment's): when, and the answer
        self._answers: dict[str, tuple[float, LinkFailure | None]] = {}
        self.checks = 0

    def default_proxy(self) -> str | None:
        """The proxy a client without one of its own dials WhatsApp through (Go's rules on
        the environment), or None: directly."""
        return proxy_for(WHATSAPP_HOST, self._environ)

    def failure(self, proxy: str | None = None) -> str | None:
        """Why WhatsApp's first hop does not answer (through `proxy`, a session's own, when
        given, else as the environment says), or None."""
        found = self.diagnose(proxy)
        return found.detail if found is not None else None

    def diagnose(self, proxy: str | None = None) -> LinkFailure | None:
        """`failure`, saying whether the proxy itself is what failed."""
        key = proxy or ""
        with self._lock:
            route = self._routes.setdefault(key, threading.Lock())
        # One check of a route at a time, the others reuse its answer; a proxy that does not
        # answer holds up only the sessions that dial through it.
        with route:
            now = self._clock()
            with self._lock:
                answer = self._answers.get(key)
            if answer is None or now - answer[0] >= self.ttl:
                found = self._check(proxy or self.default_proxy())
                answer = (self._clock(), found)
                with self._lock:
                    self.checks += 1
                    self._answers[key] = answer
                    # Forget stale routes (one per proxy ever checked would pile up); at worst
                    # one being looked up again is checked twice at once.
                    for stale, (at, _) in list(self._answers.items()):
                        lock = self._routes.get(stale)
                        if stale != key and now - at > self.ttl and not (lock and lock.locked()):
                            self._answers.pop(stale, None)
                            self._routes.pop(stale, None)
            return answer[1]

    def _check(self, proxy: str | None) -> LinkFailure | None:
        target = f"{WHATSAPP_HOST}:{WHATSAPP_PORT}"
        if proxy is None:
            try:
                self._connect((WHATSAPP_HOST, WHATSAPP_PORT), self.timeout).close()
            except OSError as exc:
                return LinkFailure(f"cannot reach {target}: {exc}", at_proxy=False)
            return None
        parts = urlsplit(proxy)
        scheme = parts.scheme.lower()
        port = parts.port or DEFAULT_PROXY_PORTS.get(scheme, 80)
        where = f"{parts.hostname}:{port}"
        credentials = (unquote(parts.username or ""), unquote(parts.password or ""))
        try:
            answer = self._through_proxy(scheme, parts.hostname or "", port, target, credentials)
        except OSError as exc:
            detail = f"cannot reach {target} through the proxy {where}: {exc}"
            return LinkFailure(detail, at_proxy=True)
        status = answer.split(" ")
        if answer and (len(status) < 2 or not status[1].startswith("2")):
            # 407: the proxy refused the credentials, its own failure; else (403, 502...) it
            # would not or could not go on to WhatsApp.
            at_proxy = len(status) >= 2 and status[1] == "407"
            detail = f"the proxy {where} refused to reach {target}: {answer}"
            return LinkFailure(detail, at_proxy=at_proxy)
        return None

    def _through_proxy(
        self, scheme: str, host: str, port: int, target: str, credentials: tuple[str, str]
    ) -> str:
        """Ask the proxy to reach `target`; its status line (empty: a SOCKS proxy answered,
        what lies beyond it is for Go to find out)."""
        sock = self._connect((host, port), self.timeout)
        try:
            if scheme.startswith("socks"):
                return ""
            if scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(self.timeout)
            authorization = ""
            if credentials[0]:
                token = base64.b64encode(":".join(credentials).encode()).decode()
                authorization = f"Proxy-Authorization: Basic {token}\r\n"
            request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{authorization}\r\n"
            sock.sendall(request.encode())
            answer = sock.recv(1024).split(b"\r\n", 1)[0].decode("latin-1")
            return answer or "no answer"
        finally:
            sock.close()
