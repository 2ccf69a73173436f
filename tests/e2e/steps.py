"""Steps the end-to-end tests share: wait, read a status, scan, find a server's children."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.sql import SQL, Identifier

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import ADMIN, ROOT, Sessiond, create_session, key_of
from tests.receiver import Receiver
from tests.waiting import eventually


def status(client: httpx.Client, created: dict[str, Any]) -> dict[str, Any]:
    response = client.get(f"/sessions/{created['sessionId']}/status", headers=key_of(created))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def scan_shown_qr(client: httpx.Client, created: dict[str, Any]) -> dict[str, Any]:
    """Wait until the session shows a QR code, then have the simulator's phone scan it; the
    scan's answer (the session's status)."""
    sid, key = created["sessionId"], key_of(created)
    eventually(
        lambda: client.get(f"/sessions/{sid}/qr", headers=key).status_code == 200,
        f"the QR code of {sid}",
        timeout=60.0,
    )
    scanned = client.post(f"/simulator/sessions/{sid}/scan", headers=ADMIN)
    assert scanned.status_code == 200, scanned.text
    answer: dict[str, Any] = scanned.json()
    return answer


def scan(client: httpx.Client, created: dict[str, Any]) -> None:
    def scanned() -> bool:
        url = f"/simulator/sessions/{created['sessionId']}/scan"
        return client.post(url, headers=ADMIN).status_code == 200

    eventually(scanned, what="the scan")
    assert status(client, created)["status"] == "connected"


def connected_session(client: httpx.Client, name: str) -> dict[str, Any]:
    """A new session (`create_session`'s answer) linked by the simulator's phone."""
    created = create_session(client, name)
    scan(client, created)
    return created


def register_hook(client: httpx.Client, hook: Receiver, events: list[str]) -> str:
    """Register the admin's webhook endpoint `hook` for `events`; its signing secret."""
    response = client.post("/webhooks", json={"url": hook.url, "events": events}, headers=ADMIN)
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


def children(pid: int) -> list[tuple[int, str]]:
    """The child processes of `pid` with their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


def gateway_child(server: Sessiond) -> int:
    (pid,) = [pid for pid, cmd in children(server.process.pid) if "infra.cli worker" in cmd]
    return pid


def rows(database_url: str, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
    """What a query answers, read on a connection of its own."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(query, params).fetchall()


def one_row(database_url: str, query: Any, params: Any = None) -> tuple[Any, ...] | None:
    """The first row a query answers (None: no row), read on a connection of its own."""
    found = rows(database_url, query, params)
    return found[0] if found else None


def highest_position(database_url: str, table: str) -> int:
    """The highest notification id in `table`: the event store's head, or how far the
    projection of a tracking table has got (0 when empty)."""
    query = SQL("SELECT max(notification_id) FROM {}").format(Identifier(table))
    row = one_row(database_url, query)
    return int(row[0] or 0) if row else 0


def disconnect_reasons(database_url: str, session_id: str) -> list[str]:
    """The reasons of the session's Disconnected events, read from the event store."""
    found = rows(
        database_url,
        "SELECT convert_from(state, 'UTF8') FROM sessiond_events WHERE originator_id = %s "
        "AND topic = 'sessiond:Session.Disconnected' ORDER BY originator_version",
        (session_id.removeprefix("sess_"),),
    )
    return [row[0].split('"reason":"', 1)[1].split('"', 1)[0] for row in found]


def sessiond(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def signed_in(server: Sessiond) -> httpx.Client:
    client = server.client()
    page = client.get("/dashboard/sign-in")
    token = TOKEN.search(page.text)
    assert token
    answer = client.post(
        "/dashboard/sign-in", data={"admin_key": ADMIN_KEY, "csrf_token": token.group(1)}
    )
    assert answer.status_code == 303, answer.text
    return client


def holder(database_url: str, session_id: str) -> str | None:
    row = one_row(
        database_url,
        "SELECT owner FROM sessiond_leases WHERE session_id = %s",
        (session_id.removeprefix("sess_"),),
    )
    return str(row[0]) if row else None


def worker_id(worker: Sessiond) -> str:
    found = re.findall(r"gateway worker ([0-9a-f]{32}) is up", worker.full_log())
    assert found, worker.log()
    return str(found[-1])


def roles_apart(start: Callable[..., Sessiond], env: dict[str, str], workers: int) -> Any:
    """`sessiond api`, `projector` and `workers` workers on one database, the workers up:
    (the API process, the workers)."""
    api = start("api", env)
    start("projector", env)
    started = [start("worker", env) for _ in range(workers)]
    eventually(lambda: all("is up" in w.full_log() for w in started), what=f"{workers} workers up")
    return api, started


PHONE = "+14155550123"


def send_text(client: httpx.Client, created: dict[str, Any], text: str) -> dict[str, Any]:
    """Queue a text with the session's key: the 202's body."""
    response = client.post(
        f"/sessions/{created['sessionId']}/messages",
        json={"to": PHONE, "text": text},
        headers=key_of(created),
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def admin_status(client: httpx.Client, created: dict[str, Any]) -> dict[str, Any]:
    """The status, read with the admin key (not rate limited: for tests that poll it)."""
    response = client.get(f"/sessions/{created['sessionId']}/status", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def simulate(client: httpx.Client, created: dict[str, Any], action: str, **body: Any) -> None:
    """A simulator action on the session (`body`: its JSON body, if any), answered 200."""
    url = f"/simulator/sessions/{created['sessionId']}/{action}"
    response = client.post(url, headers=ADMIN, json=body or None)
    assert response.status_code == 200, response.text


def history(client: httpx.Client, created: dict[str, Any]) -> list[dict[str, Any]]:
    """The session's events (up to 1,000), read with the admin key."""
    answer = client.get(f"/sessions/{created['sessionId']}/events?limit=1000", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def metric(client: httpx.Client, name: str) -> float:
    """The value of one sample of `/metrics`: `name` with its labels, as the text shows it."""
    text = client.get("/metrics").text
    (value,) = [row.removeprefix(name + " ") for row in text.splitlines() if row.startswith(name)]
    return float(value)


def message(client: httpx.Client, created: dict[str, Any], message_id: str) -> dict[str, Any]:
    """One of the session's messages, read with the admin key."""
    response = client.get(f"/sessions/{created['sessionId']}/messages/{message_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
