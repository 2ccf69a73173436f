"""`sessiond history` and `sessiond export` against a database a server has written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import ADMIN, create_session, key_of
from tests.e2e.steps import sessiond


def test_history_prints_a_timeline_and_export_writes_the_log(
    start: Any, sessiond_env: dict[str, str], tmp_path: Path
) -> None:
    server = start("serve", sessiond_env)
    with server.client() as client:
        created = create_session(client, "Audited")
        sid = created["sessionId"]
        deadline = time.monotonic() + 60
        while client.post(f"/simulator/sessions/{sid}/scan", headers=ADMIN).status_code != 200:
            assert time.monotonic() < deadline, "never scanned"
            time.sleep(0.05)
        client.post(f"/sessions/{sid}/stop", headers=key_of(created))

    history = sessiond(sessiond_env, "history", sid)
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    kinds = [line.split()[2] for line in lines]
    assert kinds[:3] == ["Created", "ApiKeyIssued", "QRIssued"]
    assert "Connected" in kinds and kinds[-1] == "Stopped"
    assert "key_hash=[redacted]" in history.stdout
    assert created["apiKey"]["key"] not in history.stdout

    unknown = sessiond(sessiond_env, "history", "sess_" + "0" * 32)
    assert unknown.returncode == 1 and "no session" in unknown.stderr
    malformed = sessiond(sessiond_env, "history", "nope")
    assert malformed.returncode == 2 and "not a session id" in malformed.stderr

    exported = tmp_path / "log.ndjson"
    done = sessiond(sessiond_env, "export", "--output", str(exported))
    assert done.returncode == 0, done.stderr
    written: list[dict[str, Any]] = [json.loads(text) for text in exported.read_text().splitlines()]
    records = [r for r in written if "chain" in r]  # the events (then checkpoints, the head)
    assert written[-1]["head"]["position"] == records[-1]["position"]
    positions = [r["position"] for r in records]
    assert positions == sorted(set(positions))  # in log order (ids may skip numbers)
    versions = [r["version"] for r in records]
    assert versions == list(range(1, len(records) + 1))  # one session: every version once
    assert {r["sessionId"] for r in records} == {sid}
    assert [r["type"] for r in records][-1] == "Stopped"
    tail = sessiond(sessiond_env, "export", "--after", str(positions[-2]))
    continued: list[dict[str, Any]] = [json.loads(text) for text in tail.stdout.splitlines()]
    assert continued[0]["chainFrom"]["position"] == positions[-2]
    assert [r["position"] for r in continued if "chain" in r] == positions[-1:]


def test_projections_status_shows_each_views_position_and_lag(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env)
    with server.client() as client:
        create_session(client, "Counted")
    shown = sessiond(sessiond_env, "projections", "status")
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines()[1:]}
    views = {"session_status", "api_keys", "gateway", "uptime", "messages", "webhooks"}
    assert set(rows) == {*views, "(log"}
    head = int(shown.stdout.splitlines()[-1].split()[-1])
    assert head >= 2
    for name in ("session_status", "api_keys", "gateway", "uptime"):
        position, lag, generation = map(int, rows[name])
        assert position + lag == head and lag >= 0
        assert generation == 0  # never rebuilt
