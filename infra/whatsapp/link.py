"""Whether WhatsApp Web can be reached from here, checked the way whatsmeow dials it.

neonize leaves behind a store and a connection pool for every client start that fails
(`infra.whatsapp.devicestore`), so a session whose link is down is not handed to Go again on each
retry: the gateway first asks this check, which opens the first hop whatsmeow would open —
a TCP connection to ``web.whatsapp.com:443``, or to the HTTPS proxy named in the environment
(``HTTPS_PROXY`` / ``https_proxy``, unless ``NO_PROXY`` / ``no_proxy`` exempts the host: Go's
rules) and a ``CONNECT`` through it — and closes it. One check serves every session of the
process for `ttl` seconds.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

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
        self._lock = threading.Lock()  # one check at a time; the others reuse its answer
        self._checked_at: float | None = None
        self._failure: str | None = None
        self.checks = 0

    def failure(self) -> str | None:
        with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self.ttl:
                self._failure = self._check()
                self._checked_at = self._clock()
                self.checks += 1
            return self._failure

    def _check(self) -> str | None:
        target = f"{WHATSAPP_HOST}:{WHATSAPP_PORT}"
        proxy = proxy_for(WHATSAPP_HOST, self._environ)
        if proxy is None:
            try:
                self._connect((WHATSAPP_HOST, WHATSAPP_PORT), self.timeout).close()
            except OSError as exc:
                return f"cannot reach {target}: {exc}"
            return None
        parts = urlsplit(proxy)
        scheme = parts.scheme.lower()
        port = parts.port or DEFAULT_PROXY_PORTS.get(scheme, 80)
        where = f"{parts.hostname}:{port}"
        try:
            answer = self._through_proxy(scheme, parts.hostname or "", port, target)
        except OSError as exc:
            return f"cannot reach {target} through the proxy {where}: {exc}"
        status = answer.split(" ")
        if answer and (len(status) < 2 or not status[1].startswith("2")):
            return f"the proxy {where} refused to reach {target}: {answer}"
        return None

    def _through_proxy(self, scheme: str, host: str, port: int, target: str) -> str:
        """Ask the proxy to reach `target`; its status line (empty: a SOCKS proxy answered,
        what lies beyond it is for Go to find out)."""
        sock = self._connect((host, port), self.timeout)
        try:
            if scheme.startswith("socks"):
                return ""
            if scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(self.timeout)
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            answer = sock.recv(1024).split(b"\r\n", 1)[0].decode("latin-1")
            return answer or "no answer"
        finally:
            sock.close()
