"""What survives a restart, the no-configuration start on embedded PostgreSQL, bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN, ROOT, Sessiond, create_session, key_of


def _status(client: httpx.Client, created: dict[str, Any]) -> dict[str, Any]:
    response = client.get(f"/sessions/{created['sessionId']}/status", headers=key_of(created))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _eventually(client: httpx.Client, created: dict[str, Any], status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = _status(client, created)
        if body["status"] == status:
            return body
        time.sleep(0.05)
    raise AssertionError(f"never became {status}: {body}")


def _wait_for_qr(client: httpx.Client, created: dict[str, Any]) -> None:
    deadline = time.monotonic() + 30
    while True:
        response = client.get(f"/sessions/{created['sessionId']}/qr", headers=ADMIN)
        if response.status_code == 200:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"no QR code: {response.status_code} {response.text}")
        time.sleep(0.05)


def test_a_restart_keeps_stopped_sessions_stopped_and_resumes_connected_ones(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    first = start("serve", sessiond_env)
    with first.client() as client:
        stopped, connected = create_session(client, "Stopped"), create_session(client, "Connected")
        for created in (stopped, connected):
            _wait_for_qr(client, created)
            assert (
                client.post(
                    f"/simulator/sessions/{created['sessionId']}/scan", headers=ADMIN
                ).status_code
                == 200
            )
        assert (
            client.post(
                f"/sessions/{stopped['sessionId']}/stop", headers=key_of(stopped)
            ).status_code
            == 200
        )
    first.stop()

    second = start("serve", sessiond_env)
    with second.client() as client:
        # Check the connected one comes back by itself, without a new QR code.
        body = _eventually(client, connected, "connected")
        assert body["health"] == "healthy"
        history = client.get(f"/sessions/{connected['sessionId']}", headers=ADMIN).json()
        assert history["phoneJid"] is not None
        # Check the stopped session stayed stopped, once the worker started what it runs.
        body = _status(client, stopped)
        assert (body["status"], body["reason"], body["health"]) == (
            "disconnected",
            "stopped",
            "stopped",
        )


def test_serve_with_no_configuration_uses_embedded_postgres(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    env["SESSIOND_DATA_DIR"] = str(tmp_path / "var")
    env["SESSIOND_GATEWAY"] = "simulator"  # the default (neonize) would dial WhatsApp
    server = Sessiond("serve", env, tmp_path / "serve.log")
    try:
        server.wait_ready(timeout=90)
        log = server.full_log()
        assert "SESSIOND_ADMIN_KEY=sda_" in log, log
        admin_key = log.split("SESSIOND_ADMIN_KEY=", 1)[1].split()[0]
        with server.client() as client:
            created = client.post(
                "/sessions", json={"name": "Embedded"}, headers={"x-api-key": admin_key}
            )
            assert created.status_code == 201, created.text
        assert (tmp_path / "var" / "postgres" / "PG_VERSION").exists()
    finally:
        server.stop()
    # Check the generated admin key is kept (hashed) and not shown again on the next start.
    again = Sessiond("serve", env, tmp_path / "serve-again.log")
    try:
        again.wait_ready(timeout=90)
        assert "SESSIOND_ADMIN_KEY=" not in again.full_log()
        with again.client() as client:
            assert client.get("/sessions", headers={"x-api-key": admin_key}).status_code == 200
    finally:
        again.stop()


def test_a_wrong_setting_stops_start_up_with_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "SESSIOND_DATA_DIR": str(tmp_path), "SESSIOND_DEFAULT_RATE_LIMIT": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == ["sessiond: SESSIOND_DEFAULT_RATE_LIMIT='lots': expected a whole number"]
