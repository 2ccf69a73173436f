"""Per-session proxies with the real gateway (neonize), on a machine that cannot reach WhatsApp.

Each proxy is a real proxy server (pproxy) on 127.0.0.1 that logs every tunnel it is asked
for and forwards it to a closed local port, so nothing leaves the machine. The server's
environment names a third one as its HTTPS proxy (as `test_neonize_offline` does): a session
without a proxy of its own dials through that one, and only that one.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ADMIN, create_session, free_port, key_of
from tests.e2e.steps import holder
from tests.receiver import Receiver
from tests.waiting import eventually

WHATSAPP = "-> web.whatsapp.com:443"
SECRET_A = "s0cks-Secret"
SECRET_B = "http-Secret"


class Proxy:
    """`python -m pproxy` on 127.0.0.1: one scheme, optional credentials (checked on every
    connection), every tunnel forwarded to a closed port and logged."""

    def __init__(self, log_path: Path, scheme: str, user: str = "", password: str = "") -> None:
        self.port = free_port()
        self.log_path = log_path
        auth = f"#{user}:{password}" if user else ""
        where = f"127.0.0.1:{self.port}"
        userinfo = f"{user}:{password}@" if user else ""
        self.url = f"{scheme}://{userinfo}{where}"
        self.masked = f"{scheme}://{user}:***@{where}" if user else self.url
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-u",
                "-m",
                "pproxy",
                "-l",
                f"{scheme}://{where}{auth}",
                "-r",
                f"http://127.0.0.1:{free_port()}",  # nothing listens there
                "-v",
                "--auth",
                "0",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, self.text()
                assert self.process.poll() is None, self.text()
                time.sleep(0.05)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dials(self) -> int:
        """Tunnels to WhatsApp's host it was asked for (with the right credentials)."""
        return sum(WHATSAPP in line for line in self.text().splitlines())

    def refused(self) -> list[str]:
        """Connections it refused for their credentials (or their lack of them)."""
        return [line for line in self.text().splitlines() if "Unauthorized" in line]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log.close()


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []

    def _start(scheme: str, user: str = "", password: str = "") -> Proxy:
        proxy = Proxy(tmp_path / f"proxy-{len(started)}.log", scheme, user, password)
        started.append(proxy)
        return proxy

    yield _start
    for proxy in started:
        proxy.stop()


def neonize_env(sessiond_env: dict[str, str], default: Proxy) -> dict[str, str]:
    return {
        **sessiond_env,
        "SESSIOND_GATEWAY": "neonize",
        "SESSIOND_RETRY_BASE": "0.3",
        "SESSIOND_RETRY_CAP": "1",
        "HTTPS_PROXY": default.url,
        "https_proxy": default.url,
        "HTTP_PROXY": default.url,
        "http_proxy": default.url,
        "NO_PROXY": "",
        "no_proxy": "",
    }


#: Proxies are dialled on each retry: seconds apart.
until = partial(eventually, timeout=60.0)


def steady(count: Callable[[], int], what: str, quiet_for: float = 2.0) -> int:
    """`count()` once it has not changed for `quiet_for` seconds (waited for up to a minute)."""
    seen = [count(), time.monotonic()]

    def unchanged() -> bool:
        now = count()
        if now != seen[0]:
            seen[:] = [now, time.monotonic()]
        return time.monotonic() - seen[1] >= quiet_for

    until(unchanged, what)
    return int(seen[0])


def test_each_session_dials_whatsapp_through_its_own_proxy_and_only_that(
    start: Any, sessiond_env: dict[str, str], proxies: Callable[..., Proxy], database_url: str
) -> None:
    default = proxies("http")
    socks = proxies("socks5", "ann", SECRET_A)
    http = proxies("http", "bob", SECRET_B)
    server = start("serve", neonize_env(sessiond_env, default))
    with server.client() as client:
        one = create_session(client, "Through SOCKS", proxy={"url": socks.url})
        two = create_session(client, "Through HTTP", proxy={"url": http.url})
        three = create_session(client, "Direct")
        assert (one["proxy"], two["proxy"], three["proxy"]) == (socks.masked, http.masked, None)

        # Check each proxy is asked for WhatsApp's host, with its session's credentials
        # (each checks them on every connection: a session without them would be refused),
        # and the SOCKS5 one for WhatsApp itself, not for the environment's proxy behind it.
        until(lambda: socks.dials() >= 2, "the SOCKS5 proxy sees its session's dials")
        until(lambda: http.dials() >= 2, "the HTTP proxy sees its session's dials")
        until(lambda: default.dials() >= 2, "the environment's proxy sees the third session")
        assert f"-> 127.0.0.1:{default.port}" not in socks.text()
        assert socks.refused() == [] and http.refused() == []

        # Check the sessions with a proxy never touch the environment's: once the one
        # without is stopped, that proxy hears nothing more while the others go on retrying.
        # The stop's answer does not wait for the worker: counted from once the worker has
        # stopped its client (it gives the session's lease up then) and a dial under way
        # meanwhile has arrived (nothing came for 2 s).
        assert holder(database_url, three["sessionId"]) is not None
        stopped = client.post(f"/sessions/{three['sessionId']}/stop", headers=key_of(three))
        assert stopped.status_code == 200
        until(
            lambda: holder(database_url, three["sessionId"]) is None,
            "the worker stopped the session without a proxy",
        )
        quiet = steady(default.dials, "the environment's proxy hears nothing more")
        socks_before, http_before = socks.dials(), http.dials()
        until(lambda: socks.dials() >= socks_before + 2, "the SOCKS5 session keeps retrying")
        until(lambda: http.dials() >= http_before + 2, "the HTTP session keeps retrying")
        assert default.dials() == quiet
        assert socks.refused() == [] and http.refused() == []

        # Check each session says why it is not connected, in the library's words.
        for created in (one, two):
            body = client.get(f"/sessions/{created['sessionId']}", headers=ADMIN).json()
            assert body["reason"] in ("whatsapp_unreachable", None), body
    log = server.full_log()
    assert SECRET_A not in log and SECRET_B not in log
    assert "panic" not in log and "Traceback" not in log, log


def test_a_proxy_survives_a_restart_and_once_cleared_is_no_longer_used(
    start: Any, sessiond_env: dict[str, str], proxies: Callable[..., Proxy]
) -> None:
    default = proxies("http")
    socks = proxies("socks5", "ann", SECRET_A)
    env = neonize_env(sessiond_env, default)
    server = start("serve", env)
    with server.client() as client:
        created = create_session(client, "Moved")
        url = f"/sessions/{created['sessionId']}/proxy"
        until(lambda: default.dials() >= 1, "the session dials through the environment's")

        # Check the session's own key sets it, and the next connect (a retry) uses it.
        answer = client.put(url, json={"url": socks.url}, headers=key_of(created))
        assert answer.status_code == 200, answer.text
        assert answer.json()["url"] == socks.masked
        until(lambda: socks.dials() >= 1, "the next connect dials through the new proxy")
    server.stop()

    # Check it is still used after the service restarts (stop, then start again).
    before = socks.dials()
    server = start("serve", env)
    with server.client() as client:
        until(lambda: socks.dials() >= before + 2, "the restarted service dials through it")
        shown = client.get(url, headers=key_of(created)).json()
        assert shown == {"sessionId": created["sessionId"], "url": socks.masked}

        # Check a cleared proxy is no longer used: the environment's is, from the next connect.
        cleared = client.delete(url, headers=key_of(created))
        assert cleared.status_code == 204, cleared.text
        assert client.get(url, headers=key_of(created)).json()["url"] is None
        after = default.dials()
        until(lambda: default.dials() >= after + 2, "the next connects dial without it")
        left = socks.dials()
        until(lambda: default.dials() >= after + 5, "the session keeps retrying")
        assert socks.dials() == left
        assert socks.refused() == []
    log = server.full_log()
    assert SECRET_A not in log and "panic" not in log and "Traceback" not in log, log


def test_a_proxy_that_does_not_answer_is_proxy_unreachable_retried_and_never_shows_its_password(
    start: Any, sessiond_env: dict[str, str], proxies: Callable[..., Proxy], hook: Receiver
) -> None:
    default = proxies("http")
    server = start("serve", neonize_env(sessiond_env, default))
    closed = free_port()
    secret = "n0body-knows"
    with server.client() as client:
        webhook = client.post(
            "/webhooks",
            json={"url": hook.url, "events": ["session.socket-disconnected"]},
            headers=ADMIN,
        )
        assert webhook.status_code == 201, webhook.text
        created = create_session(
            client, "Nowhere", proxy={"url": f"socks5://eve:{secret}@127.0.0.1:{closed}"}
        )
        status_url = f"/sessions/{created['sessionId']}/status"

        def retried() -> dict[str, Any] | None:
            body: dict[str, Any] = client.get(status_url, headers=key_of(created)).json()
            ok = body["reason"] == "proxy_unreachable" and body["retryAttempt"] >= 3
            return body if ok else None

        # Check the reason is its own, the detail the library's (or the link check's) words
        # naming the proxy, and it is retried like any lost connection.
        body = until(retried, "proxy_unreachable, retried")
        assert f"127.0.0.1:{closed}" in body["detail"] and "refused" in body["detail"]
        assert body["nextRetryAt"] is not None and body["health"] == "unhealthy"
        assert default.dials() == 0  # never around it through the environment's proxy

        # Check the password is in no answer, no history entry and no webhook.
        history = client.get(f"/sessions/{created['sessionId']}/events", headers=ADMIN)
        proxy_set = [e for e in history.json()["items"] if e["type"] == "ProxySet"]
        assert proxy_set[0]["data"]["password"] == "[redacted]"
        assert proxy_set[0]["data"]["url"] == f"socks5://eve:***@127.0.0.1:{closed}"
        details = [e["data"]["detail"] for e in history.json()["items"] if "detail" in e["data"]]
        assert any("socks connect" in d for d in details), details  # Go's own words
        hook.wait_for(lambda received: len(received) >= 2, timeout=30)
        texts = [
            history.text,
            client.get("/events?after=0&limit=1000", headers=ADMIN).text,
            client.get(f"/sessions/{created['sessionId']}", headers=ADMIN).text,
            client.get(f"/sessions/{created['sessionId']}/proxy", headers=ADMIN).text,
            *(r.body.decode() for r in hook.received),
        ]
        assert all(secret not in text for text in texts)
        assert any("proxy_unreachable" in r.body.decode() for r in hook.received)
    log = server.full_log()
    assert secret not in log and "panic" not in log and "Traceback" not in log, log
