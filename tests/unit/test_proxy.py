"""A session's proxy: which URLs are proxies, how they are shown, what the session records,
and what a start through one reports (the neonize adapter with a scripted client)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from application.sessions import Resume, SessionsApplication
from domain.errors import InvalidProxy
from domain.policy import ReconnectPolicy
from domain.proxy import ProxyAddress, hide_password, parse_proxy_url
from domain.values import Reason, session_uuid
from infra.whatsapp.link import LinkCheck
from infra.whatsapp.mapping import start_failure_reason
from infra.whatsapp.neonize import NeonizeGateway
from tests.fakes.neonize import Recorder, ScriptedClient, make_store, scripted_gateway


@pytest.mark.parametrize(
    ("url", "expected", "shown"),
    [
        (
            "socks5://user:pa%3Ass@Proxy.Example.com:1080",
            ProxyAddress("socks5", "proxy.example.com", 1080, "user", "pa:ss"),
            "socks5://user:***@proxy.example.com:1080",
        ),
        ("http://10.0.0.7:3128", ProxyAddress("http", "10.0.0.7", 3128), "http://10.0.0.7:3128"),
        (
            "HTTPS://me@[2001:db8::1]:8443/",
            ProxyAddress("https", "2001:db8::1", 8443, "me"),
            "https://me@[2001:db8::1]:8443",
        ),
    ],
)
def test_a_proxy_url_is_read_and_shown_without_its_password(
    url: str, expected: ProxyAddress, shown: str
) -> None:
    address = parse_proxy_url(url)
    assert address == expected
    assert address.masked == shown
    assert parse_proxy_url(address.url) == address  # the full URL dials the same proxy
    assert ProxyAddress.unmask(address.masked, address.password) == address


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "1 to"),
        ("proxy.example.com:1080", "starts with socks5://"),
        ("ftp://proxy.example.com:21", "starts with socks5://"),
        ("socks5h://proxy.example.com:1080", "starts with socks5://"),
        ("socks5://proxy.example.com", "no port"),
        ("socks5://:1080", "no host"),
        ("socks5://user:pw@:1080", "no host"),
        ("http://proxy.example.com:0", "between 1 and 65535"),
        ("http://proxy.example.com:99999", "malformed"),
        ("http://proxy.example.com:port", "malformed"),
        ("http://proxy.example.com:8080/path", "no path"),
        ("http://proxy.example.com:8080?x=1", "no path"),
        ("http://bad_host!:8080", "not a host name"),
        ("http://proxy example.com:8080", "no spaces"),
        ("socks5://:secret@proxy.example.com:1080", "password without a user"),
        ("\x00\x01garbage", "no spaces or control"),
        ("socks5://u:secret:1080", "malformed"),  # no @: the parser would quote "secret"
        ("socks5://" + "a" * 3000 + ":1", "1 to"),
    ],
)
def test_anything_else_is_refused_with_what_to_fix(url: str, why: str) -> None:
    with pytest.raises(InvalidProxy, match=why) as refused:
        parse_proxy_url(url)
    assert refused.value.code == "invalid-proxy"
    assert "secret" not in str(refused.value)


def test_a_password_is_hidden_from_a_library_message_raw_or_encoded() -> None:
    message = "dial socks5://u:p@ss w0rd@h:1 and socks5://u:p%40ss%20w0rd@h:1"
    assert hide_password(message, "p@ss w0rd") == "dial socks5://u:***@h:1 and socks5://u:***@h:1"
    assert hide_password(message, "") == message


def test_the_session_records_its_proxy_and_the_next_start_dials_through_it() -> None:
    app = SessionsApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    created = app.create_session("Support", {}, None, "admin", proxy="socks5://u:pw@h:1080")
    assert created.proxy == "socks5://u:***@h:1080"
    uuid = session_uuid(created.session_id)

    # Check the event shows the masked URL, and keeps the password in a field of its own.
    [proxy_set] = [e for e in app.events.get(uuid) if type(e).__name__ == "ProxySet"]
    assert vars(proxy_set)["url"] == "socks5://u:***@h:1080"
    assert vars(proxy_set)["password"] == "pw"
    assert Resume.of(app.load(uuid)) == Resume(None, "socks5://u:pw@h:1080")

    # Check the same proxy again records nothing; another one, and a clear, do.
    assert app.set_proxy(created.session_id, "socks5://u:pw@h:1080", "admin") is None
    assert app.set_proxy(created.session_id, "http://h2:3128", "admin") is not None
    assert Resume.of(app.load(uuid)) == Resume(None, "http://h2:3128")
    assert app.clear_proxy(created.session_id, "admin") is not None
    assert app.clear_proxy(created.session_id, "admin") is None
    assert Resume.of(app.load(uuid)) == Resume(None, None)
    app.close()


def test_a_bad_proxy_at_creation_creates_nothing() -> None:
    app = SessionsApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    with pytest.raises(InvalidProxy):
        app.create_session("Support", {}, None, "admin", proxy="socks5://h")
    assert app.recorder.max_notification_id() in (None, 0)
    app.close()


def test_an_unreachable_proxy_is_retried_like_a_lost_connection() -> None:
    policy = ReconnectPolicy(base=2.0, jitter=0.0)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    when = policy.next_retry(Reason.PROXY_UNREACHABLE.value, 2, now)
    assert when is not None and (when - now).total_seconds() == 4
    assert not policy.needs_new_qr(Reason.PROXY_UNREACHABLE.value)


GO_SOCKS_REFUSED = (
    "failed to dial whatsapp web websocket: failed to WebSocket dial: failed to send handshake "
    'request: Get "https://web.whatsapp.com/ws/chat": socks connect tcp 127.0.0.1:41077->'
    "web.whatsapp.com:443: dial tcp 127.0.0.1:41077: connect: connection refused"
)
GO_HTTP_REFUSED = (
    "failed to dial whatsapp web websocket: failed to WebSocket dial: failed to send handshake "
    'request: Get "https://web.whatsapp.com/ws/chat": proxyconnect tcp: dial tcp '
    "127.0.0.1:41077: connect: connection refused"
)
GO_BEYOND_THE_PROXY = (
    "failed to dial whatsapp web websocket: failed to WebSocket dial: failed to send handshake "
    'request: Get "https://web.whatsapp.com/ws/chat": EOF'
)


def test_go_words_for_a_proxy_that_fails_are_proxy_unreachable_for_the_sessions_own() -> None:
    for message in (GO_SOCKS_REFUSED, GO_HTTP_REFUSED):
        assert start_failure_reason(message, own_proxy=True) == Reason.PROXY_UNREACHABLE
        # the environment's proxy is the operator's: WhatsApp is unreachable from here
        assert start_failure_reason(message) == Reason.WHATSAPP_UNREACHABLE
    assert start_failure_reason(GO_BEYOND_THE_PROXY, own_proxy=True) == (
        Reason.WHATSAPP_UNREACHABLE
    )
    socks = GO_SOCKS_REFUSED.rsplit(": dial tcp", 1)[0]
    # the SOCKS5 proxy answered that it cannot reach WhatsApp: not the proxy's failure...
    for reply in ("general SOCKS server failure", "host unreachable", "connection refused"):
        message = f"{socks}: unknown error {reply}"
        assert start_failure_reason(message, own_proxy=True) == Reason.WHATSAPP_UNREACHABLE
    # ... unless its rules refuse it, or it refuses the credentials
    for words in ("unknown error connection not allowed by ruleset", "EOF"):
        message = f"{socks}: {words}"
        assert start_failure_reason(message, own_proxy=True) == Reason.PROXY_UNREACHABLE
    message = f"{socks}: username/password authentication failed"
    assert start_failure_reason(message, own_proxy=True) == Reason.PROXY_UNREACHABLE


def refusing_gateway(
    store: Path, environ: dict[str, str], messages: list[str]
) -> tuple[NeonizeGateway, Recorder, list[ScriptedClient]]:
    """`scripted_gateway` with `environ`, where no address answers the link check."""

    def refuse(address: tuple[str, int], timeout: float) -> Any:
        raise ConnectionRefusedError(111, "Connection refused")

    return scripted_gateway(store, messages, LinkCheck(ttl=0.0, environ=environ, connect=refuse))


def test_each_client_is_given_its_own_proxy_else_the_environments(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store.db")
    environ = {"HTTPS_PROXY": "http://corp:3128"}
    gateway, _, made = refusing_gateway(store, environ, [])
    own, plain = uuid4(), uuid4()
    gateway.start(own, None, "socks5://u:pw@10.0.0.7:1080")
    gateway.start(plain, None)
    assert made[0].connecting.wait(5) and made[1].connecting.wait(5)
    assert made[0].proxy_settings.proxy_address == "socks5://u:pw@10.0.0.7:1080"
    assert made[1].proxy_settings.proxy_address == "http://corp:3128"
    gateway.close()

    # Check a client with no proxy anywhere is given none (a direct dial).
    gateway, _, made = refusing_gateway(store, {}, [])
    gateway.start(uuid4(), None)
    assert made[0].connecting.wait(5)
    assert made[0].proxy_settings is None
    gateway.close()


def test_a_start_whose_proxy_fails_says_so_without_the_password(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store.db")
    refused = GO_SOCKS_REFUSED.replace("127.0.0.1:41077", "u:s3cret@127.0.0.1:41077", 1)
    gateway, events, _ = refusing_gateway(store, {}, [refused])
    sid = uuid4()
    proxy = "socks5://u:s3cret@127.0.0.1:41077"

    # Check Go's words come through, as proxy_unreachable, the password masked.
    gateway.start(sid, None, proxy)
    [first] = events.wait_for(sid, lambda calls: len(calls) == 1)
    assert first.name == "disconnected"
    assert first.args[0] == "proxy_unreachable"
    assert "connection refused" in first.args[1] and "u:***@" in first.args[1]
    assert "s3cret" not in first.args[1]

    # Check the retry asks the link check about the session's proxy, and says it is that.
    gateway.start(sid, None, proxy)
    calls = events.wait_for(sid, lambda calls: len(calls) == 2)
    assert calls[1].args[0] == "proxy_unreachable"
    assert calls[1].args[1].startswith("cannot reach web.whatsapp.com:443 through the proxy ")
    assert "127.0.0.1:41077" in calls[1].args[1] and "s3cret" not in calls[1].args[1]
    gateway.close()
