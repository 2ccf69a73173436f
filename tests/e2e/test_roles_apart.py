"""The roles run apart against one database: api, projector and worker processes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import ADMIN, create_session, key_of
from tests.waiting import eventually


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


def _niceness(pid: int) -> int | None:
    """The CPU priority (nice) of process `pid`, from /proc (field 19 of its stat line); None
    once it has exited."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[16])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the API's HTTP server runs its workers as children)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # it has exited meanwhile
        pending += [int(child) for child in children.split()]
    return tree


def test_background_roles_run_at_a_lower_cpu_priority_than_the_api(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    """SESSIOND_BACKGROUND_NICENESS lowers the CPU priority of the worker and projector
    processes (those of `serve` included: its child worker), never the API's: on a node
    whose cores are all busy, the API's reads are served first."""
    env = {**sessiond_env, "SESSIOND_BACKGROUND_NICENESS": "7"}
    own = os.nice(0)
    api = start("api", env)
    projector = start("projector", env)
    worker = start("worker", env)
    # The API's processes keep their priority (its expensive-read processes have their own,
    # SESSIOND_READER_NICENESS, 10 by default).
    assert _niceness(api.process.pid) == own
    assert {_niceness(pid) for pid in _process_tree(api.process.pid)} <= {own, own + 10, None}
    assert _niceness(projector.process.pid) == own + 7
    assert _niceness(worker.process.pid) == own + 7
    # The roles still work together at that priority.
    with api.client() as client:
        created = create_session(client, "Niced")
        path = f"/sessions/{created['sessionId']}/qr"
        eventually(
            lambda: client.get(path, headers=key_of(created)).status_code == 200,
            "a QR code from the niced worker, through the niced projector",
            timeout=60,
        )
    served = start("serve", {**env, "SESSIOND_DATA_DIR": env["SESSIOND_DATA_DIR"] + "-serve"})
    assert _niceness(served.process.pid) == own

    def child_workers() -> list[int]:
        children = [pid for pid in _process_tree(served.process.pid) if pid != served.process.pid]
        return [pid for pid in children if "infra.cli\x00worker" in _cmdline(pid)]

    # The child lowers its own priority as it starts, which may be after serve is ready.
    eventually(
        lambda: [_niceness(pid) for pid in child_workers()] == [own + 7],
        "serve's one child worker at the background priority",
        timeout=60,
    )
