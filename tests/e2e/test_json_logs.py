"""`SESSIOND_LOG_FORMAT=json`: every line a real `sessiond serve` writes (its HTTP server, its
API and projector, its gateway worker) is one JSON object with time, level, role, logger and
message; lines about a session's life carry `sessionId`, `event` and `reason`; no line holds a
key, a proxy's password or a message's text."""

from __future__ import annotations

import base64
import json
import os
import signal
from typing import Any

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import ADMIN, key_of
from tests.e2e.streams import inbound, linked_session
from tests.waiting import eventually

SECRET_TEXT = "the-vault-code-is-31337"
SECRET_INBOUND = "my-pin-is-8642"
PROXY_PASSWORD = "pr0xy-pa55word"


def lines(path: Any) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]


def test_json_logs_are_one_object_per_line_with_session_fields_and_no_secrets(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    # Both keys set, as in production: a key generated at the first start is shown once on
    # a plain line of its own (the README says so), not as a log line.
    audit_key = base64.b64encode(os.urandom(32)).decode()
    env = {**sessiond_env, "SESSIOND_LOG_FORMAT": "json", "SESSIOND_AUDIT_SIGNING_KEY": audit_key}
    server = start("serve", env)
    with server.client() as client:
        created = linked_session(client, "Logged")
        sid, key = created["sessionId"], key_of(created)
        proxied = client.put(
            f"/sessions/{sid}/proxy",
            json={"url": f"socks5://user:{PROXY_PASSWORD}@127.0.0.1:1080"},
            headers=ADMIN,
        )
        assert proxied.status_code == 200, proxied.text
        sent = client.post(
            f"/sessions/{sid}/messages",
            json={"to": "+14155550123", "text": SECRET_TEXT},
            headers=key,
        )
        assert sent.status_code == 202, sent.text
        inbound(client, sid, SECRET_INBOUND)
        dropped = client.post(f"/simulator/sessions/{sid}/drop", headers=ADMIN)
        assert dropped.status_code == 200, dropped.text
        # A refused key is logged by no one, but try: it must not appear either.
        assert (
            client.get(f"/sessions/{sid}/status", headers={"x-api-key": "sdk_wrong"}).status_code
            == 401
        )

        def disconnect_logged() -> bool:
            return any('"event": "Disconnected"' in line for line in lines(server.log_path))

        eventually(disconnect_logged, "the disconnection's log line")
    server.stop(signal.SIGTERM)
    server.process.wait(timeout=30)

    objects = []
    for line in lines(server.log_path):
        try:
            objects.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON object: {line!r}") from None
    assert objects
    for entry in objects:
        assert {"time", "level", "role", "logger", "message"} <= entry.keys(), entry
        assert entry["time"].endswith("+00:00"), entry
    roles = {entry["role"] for entry in objects}
    assert "worker" in roles, roles  # the gateway worker, a process of its own
    assert any("api" in role.split(",") for role in roles), roles
    life = [entry for entry in objects if entry.get("sessionId") == sid and "event" in entry]
    events = [entry["event"] for entry in life]
    for name in ("Created", "ApiKeyIssued", "Connected", "ProxySet", "Disconnected"):
        assert name in events, events
    disconnected = next(entry for entry in life if entry["event"] == "Disconnected")
    assert disconnected["reason"], disconnected

    written = server.log_path.read_text(errors="replace")
    for secret in (
        created["apiKey"]["key"],
        ADMIN_KEY,
        PROXY_PASSWORD,
        SECRET_TEXT,
        SECRET_INBOUND,
    ):
        assert secret not in written, secret
