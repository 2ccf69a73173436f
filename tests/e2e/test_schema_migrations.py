"""The schema at start-up, on real processes: a database of the previous release upgraded in
place with everything it held, several processes starting together on an empty database, and
a database newer than the code refused in one line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from infra.postgres.schema import MIGRATION_TABLE, migration_ids
from tests.e2e.conftest import ADMIN, ROOT, create_session, key_of
from tests.fixtures import PREVIOUS, load_previous_release
from tests.waiting import eventually

#: What a message's answer has gained since the previous release, as it reads for the
#: messages that release recorded (no quota held them, no restriction paused them).
NEW_MESSAGE_FIELDS = {"nextAttemptAt": None, "restriction": None}


def events_digest(url: str, through: int) -> tuple[int, str]:
    """How many events are stored up to position `through`, and a digest of every byte of
    them in log order."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), md5(string_agg(originator_id::text || originator_version || "
            "topic || encode(state, 'hex'), ',' ORDER BY notification_id)) FROM sessiond_events "
            "WHERE notification_id <= %s",
            (through,),
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def test_a_database_of_the_previous_release_keeps_every_event_view_and_key(
    empty_database_url: str, start: Any, sessiond_env: dict[str, str]
) -> None:
    url = empty_database_url
    load_previous_release(url)
    with psycopg.connect(url) as conn:
        head = (conn.execute("SELECT max(notification_id) FROM sessiond_events").fetchone() or [0])[
            0
        ]
    count, digest = events_digest(url, head)
    assert count == PREVIOUS["events"]
    with psycopg.connect(url) as conn:
        delivered = {
            r[0]
            for r in conn.execute(
                "SELECT delivery_id FROM sessiond_webhook_deliveries WHERE webhook_id = %s",
                (PREVIOUS["webhooks"][0],),
            )
        }
    assert delivered
    server = start(
        "serve",
        {**sessiond_env, "SESSIOND_DATABASE_URL": url, "SESSIOND_ADMIN_KEY": PREVIOUS["adminKey"]},
    )
    admin = {"x-api-key": PREVIOUS["adminKey"]}
    alpha, beta, gamma = PREVIOUS["alpha"], PREVIOUS["beta"], PREVIOUS["gamma"]
    sid = alpha["sessionId"]
    with server.client() as client:
        # Check every event is still there, byte for byte, and served by the history API.
        assert events_digest(url, head) == (count, digest)
        served = client.get(f"/events?limit={count}", headers=admin)
        assert served.status_code == 200, served.text
        assert len(served.json()["items"]) == count
        # Check the views: each session's status and counters as that release left them. The
        # new worker takes the sessions over meanwhile: alpha may be reconnecting (on its
        # stored device, no scan) for a moment.
        for session, state in ((alpha, "connected"), (beta, "disconnected")):
            path = f"/sessions/{session['sessionId']}/status"
            headers = {"x-api-key": session["key"]}

            def settled(path: str = path, headers: dict[str, str] = headers) -> Any:
                status = client.get(path, headers=headers)
                assert status.status_code == 200, status.text
                body = status.json()
                return body if body["status"] == state else None  # noqa: B023

            body = eventually(settled)
            assert body["metrics"] == {
                **session["status"]["metrics"],
                "uptime": body["metrics"]["uptime"],
            }
        assert body["reason"] == "stopped"  # beta
        # Check the messages view: every text, with its state, and the texts received.
        for message_id, recorded in alpha["messages"].items():
            found = client.get(
                f"/sessions/{sid}/messages/{message_id}", headers={"x-api-key": alpha["key"]}
            )
            assert found.status_code == 200, found.text
            assert found.json() == {**recorded, **NEW_MESSAGE_FIELDS}
        inbound = client.get(
            f"/sessions/{sid}/messages?direction=inbound", headers={"x-api-key": alpha["key"]}
        )
        assert inbound.json()["items"] == [{**m, **NEW_MESSAGE_FIELDS} for m in alpha["inbound"]]
        # Check the keys: the live ones work, the revoked one and the deleted session's do not.
        assert (
            client.get(f"/sessions/{sid}/status", headers={"x-api-key": alpha["extraKey"]})
        ).status_code == 200
        assert (
            client.get(
                f"/sessions/{beta['sessionId']}/status", headers={"x-api-key": beta["key"]}
            ).status_code
            == 200
        )
        refused = client.get(f"/sessions/{sid}/status", headers={"x-api-key": alpha["revokedKey"]})
        assert refused.status_code == 401, refused.text
        # Check the keys of that release have full access and no expiry (they have no scopes).
        extra = {"x-api-key": alpha["extraKey"]}
        listed = client.get(f"/sessions/{sid}/keys", headers=extra)
        assert listed.status_code == 200, listed.text
        assert all(
            (k["scopes"], k["expiresAt"], k["expired"]) == (None, None, False)
            for k in listed.json()["items"]
        )
        for path in (f"/sessions/{sid}/messages", "/webhooks", f"/sessions/{sid}/events"):
            assert client.get(path, headers=extra).status_code == 200, path
        scoped = client.post(
            f"/sessions/{sid}/keys",
            json={"scopes": ["status:read"], "ttlSeconds": 60},
            headers=extra,
        )
        assert scoped.status_code == 201, scoped.text
        assert scoped.json()["scopes"] == ["status:read"]
        gone = client.get(
            f"/sessions/{gamma['sessionId']}/status", headers={"x-api-key": gamma["key"]}
        )
        assert gone.status_code == 401, gone.text
        # Check the webhooks: both endpoints, one disabled, and the deliveries made.
        webhooks = client.get("/webhooks", headers=admin).json()["items"]
        assert sorted(w["webhookId"] for w in webhooks) == sorted(PREVIOUS["webhooks"])
        assert sorted(w["enabled"] for w in webhooks) == [False, True]
        deliveries = client.get(
            f"/webhooks/{PREVIOUS['webhooks'][0]}/deliveries?limit=200", headers=admin
        )
        assert deliveries.status_code == 200, deliveries.text
        assert delivered <= {d["deliveryId"] for d in deliveries.json()["items"]}
        # Check the service works on: a text on the session snapshotted by that release, a
        # new session.
        sent = client.post(
            f"/sessions/{sid}/messages",
            json={"to": "+14155550123", "text": "after the upgrade"},
            headers={"x-api-key": alpha["key"]},
        )
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["messageId"]
        eventually(
            lambda: (
                client.get(
                    f"/sessions/{sid}/messages/{message_id}", headers={"x-api-key": alpha["key"]}
                ).json()["status"]
                == "sent"
            ),
            what="the text sent after the upgrade",
        )
        created = client.post("/sessions", json={"name": "After"}, headers=admin)
        assert created.status_code == 201, created.text
        assert (
            client.get(
                f"/sessions/{created.json()['sessionId']}/status",
                headers={"x-api-key": created.json()["apiKey"]["key"]},
            ).status_code
            == 200
        )
    # Check the events of that release are still the first ones, untouched.
    assert events_digest(url, head) == (count, digest)
    assert migration_ids() == _applied(url)


def _applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                f'SELECT migration_id FROM "{MIGRATION_TABLE}" ORDER BY applied_at_utc'
            ).fetchall()
        ]


def test_processes_starting_together_on_an_empty_database_migrate_it_once(
    empty_database_url: str, start: Any, sessiond_env: dict[str, str]
) -> None:
    env = {**sessiond_env, "SESSIOND_DATABASE_URL": empty_database_url}
    started = [start(command, env, wait=False) for command in ("api", "api", "projector", "worker")]
    for process in started:
        if process.url:
            process.wait_ready(timeout=90)
    time.sleep(1)
    for process in started:
        assert process.process.poll() is None, process.log()
    with psycopg.connect(empty_database_url) as conn:
        row = conn.execute("SELECT count(*) FROM _yoyo_log WHERE operation = 'apply'").fetchone()
    assert row == (len(migration_ids()),)
    first, second = started[0], started[1]
    with first.client() as one, second.client() as other:
        created = create_session(one, "Together")
        eventually(
            lambda: (
                other.get(
                    f"/sessions/{created['sessionId']}/status", headers=key_of(created)
                ).status_code
                == 200
            ),
            what="the session seen by the other API process",
        )
        qr = f"/sessions/{created['sessionId']}/qr"
        answers: list[str] = []

        def shown() -> bool:
            answer = one.get(qr, headers=ADMIN)
            answers[:] = [f"{answer.status_code} {answer.text}"]
            return bool(answer.status_code == 200)

        try:
            eventually(shown, what="the worker's QR code")
        except AssertionError as error:
            raise AssertionError(f"{error}; the last answer: {answers}") from None


def test_a_database_newer_than_the_code_is_refused_with_one_clear_line(
    database_url: str, tmp_path: Path, sessiond_env: dict[str, str]
) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            f'INSERT INTO "{MIGRATION_TABLE}" (migration_hash, migration_id, applied_at_utc) '
            "VALUES ('f00d', '9999.from-the-future', now())"
        )
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "serve", "--port", "1"],
        cwd=ROOT,
        env={**sessiond_env, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "sessiond: the database's schema is newer than this sessiond knows (unknown migration "
        "9999.from-the-future): run a release that knows it"
    ]
