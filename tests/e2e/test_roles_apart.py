"""The roles run apart against one database: api, projector and worker processes."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.conftest import ADMIN, create_session, key_of


def test_api_projector_and_worker_processes_work_together(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    api = start("api", sessiond_env)
    start("projector", sessiond_env)
    start("projector", sessiond_env)  # stands by: only one runs each projection
    start("worker", sessiond_env)
    with api.client() as client:
        created = create_session(client, "Apart")
        path = f"/sessions/{created['sessionId']}"

        # Check the worker shows a QR code and the projector brings it to the API's views.
        deadline = time.monotonic() + 60
        qr = client.get(path + "/qr", headers=key_of(created))
        while qr.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            qr = client.get(path + "/qr", headers=key_of(created))
        assert qr.status_code == 200, qr.text
        assert qr.json()["attempt"] == 1

        # Check the simulator's phone reaches the worker that holds the session.
        scanned = client.post(f"/simulator/sessions/{created['sessionId']}/scan", headers=ADMIN)
        assert scanned.status_code == 200, scanned.text
        assert scanned.json()["status"] == "connected"

        # Check a command through the API is visible at once (read-your-writes).
        stopped = client.post(path + "/stop", headers=key_of(created))
        assert stopped.json()["reason"] == "stopped"
        assert client.get(path + "/status", headers=key_of(created)).json()["health"] == "stopped"
