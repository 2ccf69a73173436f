"""`sessiond projections rebuild` against a running server: it switches, and nothing breaks."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.conftest import ADMIN, create_session, key_of
from tests.e2e.steps import sessiond


def _views(env: dict[str, str]) -> dict[str, list[int]]:
    shown = sessiond(env, "projections", "status")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()[1:-1]
    return {line.split()[0]: [int(n) for n in line.split()[1:]] for line in lines}


def test_rebuilding_the_status_view_switches_to_it_while_the_server_serves(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env)
    with server.client() as client:
        sessions = [create_session(client, f"Rebuilt {n}") for n in range(3)]
        first = sessions[0]
        assert client.post(f"/sessions/{first['sessionId']}/stop", headers=ADMIN).status_code == 200
        before = {
            s["sessionId"]: client.get(
                f"/sessions/{s['sessionId']}/status", headers=key_of(s)
            ).json()
            for s in sessions
        }

        rebuilt = sessiond(sessiond_env, "projections", "rebuild", "session_status")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert "as generation 1" in rebuilt.stdout
        assert "dropped the previous generation: session_status, session_status_tracking" in (
            rebuilt.stdout
        )

        # Check the server serves the same statuses, and new writes read back at once.
        for s in sessions:
            now = client.get(f"/sessions/{s['sessionId']}/status", headers=key_of(s)).json()
            assert {k: now[k] for k in ("status", "reason", "health")} == {
                k: before[s["sessionId"]][k] for k in ("status", "reason", "health")
            }
        later = create_session(client, "After the rebuild")
        status = client.get(f"/sessions/{later['sessionId']}/status", headers=key_of(later))
        assert status.status_code == 200 and status.json()["status"] == "connecting"
        assert client.post(f"/sessions/{later['sessionId']}/stop", headers=ADMIN).status_code == 200
        status = client.get(f"/sessions/{later['sessionId']}/status", headers=key_of(later))
        assert status.json()["reason"] == "stopped"

    # Check the status command shows generation 1, caught up with the log.
    deadline = time.monotonic() + 60
    while True:
        views = _views(sessiond_env)
        if views["session_status"][1] == 0:
            break
        assert time.monotonic() < deadline, views
        time.sleep(0.2)
    assert views["session_status"][2] == 1
    assert views["api_keys"][2] == views["gateway"][2] == views["uptime"][2] == 0


def test_rebuild_refuses_unknown_views_and_the_gateway_view(sessiond_env: dict[str, str]) -> None:
    unknown = sessiond(sessiond_env, "projections", "rebuild", "sessions")
    assert unknown.returncode == 2
    assert "no view named 'sessions'" in unknown.stderr
    assert "api_keys, messages, session_status, uptime" in unknown.stderr
    gateway = sessiond(sessiond_env, "projections", "rebuild", "gateway")
    assert gateway.returncode == 2
    assert "the gateway view cannot be rebuilt" in gateway.stderr
    missing = sessiond(sessiond_env, "projections", "rebuild")
    assert missing.returncode == 2 and "say which view to rebuild" in missing.stderr
