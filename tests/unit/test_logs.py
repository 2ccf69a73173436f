"""Log lines: secrets masked in both formats, session fields found, one JSON object a line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from uuid import UUID

import pytest

from infra.runtime.logs import configure_logging, redact

SESSION = UUID("0506b6be-4108-4972-af55-0177aa87fe91")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("key sdk_cE9ZWLBx13KwXB3wcKG5DuOTLZF2TlFt21KAX7 refused", "key sdk_*** refused"),
        ("admin sda_Rh2l8q0gOrcnhkyIysVwzWI9dSHrqvUv1eh8nt", "admin sda_***"),
        (
            "via socks5://bob:hunter2@10.0.0.1:1080 failed",
            "via socks5://bob:***@10.0.0.1:1080 failed",
        ),
        (
            "postgresql://postgres:pw@db/x and http://a:b@c",
            "postgresql://postgres:***@db/x and http://a:***@c",
        ),
        ("http://host:8080/path stays", "http://host:8080/path stays"),
        ("sessions sdk and sd_ are words", "sessions sdk and sd_ are words"),
    ],
)
def test_secrets_are_masked(text: str, masked: str) -> None:
    assert redact(text) == masked


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    yield io.StringIO()
    logging.basicConfig(level="WARNING", force=True)


def fail(text: str) -> None:
    raise RuntimeError(text)


def test_json_lines_have_the_fields_and_no_secret(captured: io.StringIO) -> None:
    configure_logging("info", "json", "worker", captured)
    log = logging.getLogger("sessiond.test")
    log.info("lost the lease of %s; key %s", SESSION, "sdk_abcdefghijklmnop")
    log.info(
        "session x: Disconnected",
        extra={"sessionId": "sess_x", "event": "Disconnected", "reason": "logged_out"},
    )
    try:
        fail("dial socks5://u:topsecret@h:1 failed")
    except RuntimeError:
        log.exception("could not start")
    log.debug("not at info")
    first, second, third = (json.loads(line) for line in captured.getvalue().splitlines())
    assert first["role"] == "worker" and first["level"] == "INFO"
    assert first["logger"] == "sessiond.test"
    assert first["sessionId"] == "sess_0506b6be41084972af550177aa87fe91"
    assert first["message"] == f"lost the lease of {SESSION}; key sdk_***"
    assert first["time"].endswith("+00:00")
    assert (second["sessionId"], second["event"], second["reason"]) == (
        "sess_x",
        "Disconnected",
        "logged_out",
    )
    assert "topsecret" not in captured.getvalue()
    assert "RuntimeError" in third["exc_info"]


def test_text_lines_are_masked_too(captured: io.StringIO) -> None:
    configure_logging("info", "text", "api", captured)
    logging.getLogger("sessiond.test").warning("proxy %s", "http://u:pw123@h:3128")
    line = captured.getvalue()
    assert "WARNING sessiond.test: proxy http://u:***@h:3128" in line
    assert "pw123" not in line
