"""A client generated from the OpenAPI document works, and its names are the documented ones.

The document is fetched from a running `sessiond serve`, a Python client is generated from it
with `openapi-python-client` (as a client developer would), and the seed's flow runs through
that client only: create a session, read its QR code, link it, read its status and metrics, send
a message, stop it, delete it and see its key refused.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY

PACKAGE = "sessiond_client"

# The operations a client developer calls, by tag and by the generated function's name.
EXPECTED_FUNCTIONS = {
    "sessions": {
        "create_session",
        "list_sessions",
        "get_session",
        "get_session_status",
        "get_session_qr",
        "request_pairing_code",
        "reconnect_session",
        "stop_session",
        "delete_session",
        "set_session_rate_limit",
    },
    "keys": {"create_session_key", "list_session_keys", "revoke_session_key"},
    "messages": {"send_message", "get_message", "list_messages"},
    "history": {
        "list_events",
        "list_session_events",
        "get_session_uptime",
        "stream_events",
        "stream_session_events",
    },
    "webhooks": {
        "create_webhook",
        "list_webhooks",
        "get_webhook",
        "update_webhook",
        "delete_webhook",
        "rotate_webhook_secret",
        "list_webhook_deliveries",
        "retry_webhook_delivery",
        "replay_webhook",
    },
    "health": {"get_liveness", "get_readiness", "get_metrics"},
}


@pytest.fixture
def generated(start: Any, sessiond_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """(server, the generated package): the client is generated from the served document."""
    server = start("serve", sessiond_env)
    spec = tmp_path / "openapi.json"
    spec.write_bytes(httpx.get(server.url + "/schema/openapi.json", timeout=10).content)
    config = tmp_path / "client.yaml"
    config.write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    out = tmp_path / "generated"
    out.mkdir()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "openapi_python_client", "generate"),
            *("--path", str(spec), "--meta", "none", "--config", str(config)),
            *("--output-path", str(out / PACKAGE)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    sys.path.insert(0, str(out))
    try:
        yield server, importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _operation(tag: str, name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")


def _until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if outcome := check():
            return outcome
        time.sleep(0.1)
    raise AssertionError(f"not in {timeout}s: {what}")


def test_every_operation_has_a_stable_name_and_a_tag(generated: Any) -> None:
    _, package = generated
    api_dir = Path(package.__file__).parent / "api"
    for tag, functions in EXPECTED_FUNCTIONS.items():
        found = {path.stem for path in (api_dir / tag).glob("*.py")} - {"__init__"}
        assert functions <= found, (tag, sorted(found))


def test_the_seed_flow_runs_through_the_generated_client(generated: Any) -> None:
    server, package = generated
    models = importlib.import_module(f"{PACKAGE}.models")

    def client(key: str) -> Any:
        return package.AuthenticatedClient(
            base_url=server.url, token=key, prefix="", auth_header_name="x-api-key"
        )

    admin = client(ADMIN_KEY)
    created = _operation("sessions", "create_session").sync_detailed(
        client=admin, body=models.CreateSessionIn(name="Support")
    )
    assert created.status_code == 201, created.content
    session_id = created.parsed.session_id
    session = client(created.parsed.api_key.key)

    def shown() -> Any:
        """The QR code once the worker shows it (before, a 409 problem: not an outcome)."""
        answer = _operation("sessions", "get_session_qr").sync(session_id, client=session)
        return answer if isinstance(answer, models.QrOut) else None

    qr = _until(shown, "a QR code")
    assert isinstance(qr, models.QrOut), qr
    assert qr.attempt == 1

    scanned = _operation("simulator", "simulate_scan").sync(session_id, client=admin)
    assert isinstance(scanned, models.StatusOut), scanned
    assert scanned.status == "connected"

    status = _operation("sessions", "get_session_status").sync(session_id, client=session)
    assert isinstance(status, models.StatusOut), status
    assert status.status == "connected"
    assert status.health == "healthy"
    assert status.connected_at is not None
    assert isinstance(status.metrics.uptime, float | int)
    assert 0 <= status.metrics.uptime <= 100
    assert status.metrics.messages_sent == 0

    sent = _operation("messages", "send_message").sync_detailed(
        session_id, client=session, body=models.SendMessageIn(to="+14155550123", text="hello")
    )
    assert sent.status_code == 202, sent.content

    def messages_sent() -> bool:
        read = _operation("sessions", "get_session_status").sync(session_id, client=session)
        return isinstance(read, models.StatusOut) and read.metrics.messages_sent == 1

    _until(messages_sent, "the message counted as sent")

    stopped = _operation("sessions", "stop_session").sync_detailed(session_id, client=session)
    assert stopped.status_code == 200, stopped.content
    assert stopped.parsed.reason == "stopped"

    deleted = _operation("sessions", "delete_session").sync_detailed(session_id, client=admin)
    assert deleted.status_code == 204, deleted.content
    refused = _operation("sessions", "get_session_status").sync_detailed(session_id, client=session)
    assert refused.status_code == 401, refused.content
    assert isinstance(refused.parsed, models.ProblemOut)
