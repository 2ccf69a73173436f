"""One tenant cannot slow down or starve the others, tried on a real `sessiond serve`: the
per-session caps on keys and webhook endpoints, the cap of expensive reads in flight (429)
while the status path answers, bounded replays with a cursor, one replay per endpoint at a
time, and webhook slots that a slow endpoint cannot take from the others."""

from __future__ import annotations

import os
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from eventsourcing.cryptography import AESCipher

from tests.e2e.conftest import ADMIN, create_session, key_of
from tests.e2e.steps import children
from tests.receiver import Answer, Receiver, receiver
from tests.waiting import eventually


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:sessiond:problem:{code}", body
    return body


def test_keys_and_endpoints_beyond_a_sessions_caps_are_refused_with_409(
    start: Any, sessiond_env: dict[str, str], hook: Receiver
) -> None:
    env = {
        **sessiond_env,
        "SESSIOND_MAX_KEYS_PER_SESSION": "3",
        "SESSIOND_MAX_WEBHOOKS_PER_SESSION": "2",
    }
    server = start("serve", env)
    with server.client() as client:
        created = create_session(client, "Capped")  # holds its first key
        sid = created["sessionId"]
        keys = [client.post(f"/sessions/{sid}/keys", json={"label": "k1"}, headers=ADMIN)]
        keys.append(client.post(f"/sessions/{sid}/keys", json={"label": "k2"}, headers=ADMIN))
        assert [k.status_code for k in keys] == [201, 201], keys[-1].text
        # Check: the fourth key is refused, with a problem naming the cap.
        refused = client.post(f"/sessions/{sid}/keys", json={"label": "k3"}, headers=ADMIN)
        body = _problem(refused, 409, "key-cap-reached")
        assert "at most 3" in body["detail"]
        assert "SESSIOND_MAX_KEYS_PER_SESSION" in body["detail"]
        # Check: a revoked key frees its place.
        revoked = client.delete(f"/sessions/{sid}/keys/{keys[0].json()['keyId']}", headers=ADMIN)
        assert revoked.status_code == 204, revoked.text
        again = client.post(f"/sessions/{sid}/keys", json={"label": "k3"}, headers=ADMIN)
        assert again.status_code == 201, again.text

        hooks = [
            client.post(
                "/webhooks",
                json={"url": hook.url, "events": ["session.stopped"]},
                headers=key_of(created),
            )
            for _ in range(2)
        ]
        assert [h.status_code for h in hooks] == [201, 201], hooks[-1].text
        # Check: the third endpoint of the session is refused, by its key and by the admin.
        for headers, body_extra in ((key_of(created), {}), (ADMIN, {"sessionId": sid})):
            third = client.post(
                "/webhooks",
                json={"url": hook.url, "events": ["session.stopped"], **body_extra},
                headers=headers,
            )
            assert "at most 2" in _problem(third, 409, "webhook-cap-reached")["detail"]
        # Check: another session's endpoints are not counted against this one's.
        other = create_session(client, "Other")
        theirs = client.post(
            "/webhooks",
            json={"url": hook.url, "events": ["session.stopped"]},
            headers=key_of(other),
        )
        assert theirs.status_code == 201, theirs.text
        deleted = client.delete(f"/webhooks/{hooks[0].json()['webhookId']}", headers=ADMIN)
        assert deleted.status_code == 204
        freed = client.post(
            "/webhooks",
            json={"url": hook.url, "events": ["session.stopped"]},
            headers=key_of(created),
        )
        assert freed.status_code == 201, freed.text


def test_expensive_reads_beyond_the_cap_answer_429_while_the_status_path_answers(
    start: Any, sessiond_env: dict[str, str], database_url: str, hook: Receiver
) -> None:
    env = {
        **sessiond_env,
        "SESSIOND_EXPENSIVE_READS_PER_SESSION": "1",
        "SESSIOND_EXPENSIVE_READERS": "1",
    }
    server = start("serve", env)
    with server.client() as client:
        noisy, quiet = create_session(client, "Noisy"), create_session(client, "Quiet")
        as_of = datetime.now(UTC).isoformat()
        past = f"/sessions/{noisy['sessionId']}"
        answers: list[httpx.Response] = []
        registered = client.post(
            "/webhooks",
            json={"url": hook.url, "events": ["session.stopped"]},
            headers=key_of(noisy),
        )
        assert registered.status_code == 201, registered.text
        replay = f"/webhooks/{registered.json()['webhookId']}/replay"
        window = {"from": as_of, "to": datetime.now(UTC).isoformat()}
        # A replay of the endpoint, once: the server now knows whose reads its replays are.
        replayed = client.post(replay, json=window, headers=key_of(noisy))
        assert replayed.status_code == 202, replayed.text
        # The fault: the snapshots table is locked, so a past state's read hangs in flight.
        with psycopg.connect(database_url) as lock:
            lock.execute("LOCK TABLE sessiond_status_snapshots IN ACCESS EXCLUSIVE MODE")
            hanging = threading.Thread(
                target=lambda: answers.append(
                    client.get(past, params={"asOf": as_of}, headers=key_of(noisy))
                )
            )
            hanging.start()

            def waiting_on_the_lock() -> bool:
                with psycopg.connect(database_url) as probe:
                    found = probe.execute(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted "
                        "AND relation = 'sessiond_status_snapshots'::regclass"
                    ).fetchone()
                return bool(found and found[0])

            eventually(waiting_on_the_lock, what="the past read waits on the lock")
            # Check: the session's next expensive reads are refused at once, whichever kind.
            for path, params in (
                (past, {"asOf": as_of}),
                (past + "/uptime", {}),
                (past + "/events", {}),
            ):
                refused = client.get(path, params=params, headers=key_of(noisy))
                _problem(refused, 429, "expensive-reads-spent")
                assert refused.headers["retry-after"] == "1"
            # Check: the refusal comes after the key's check, as on the route itself: no key
            # or a wrong one is 401, another session's key 404 (nothing about this session
            # is told), the admin key is refused 429 too, and the rate limit was counted.
            assert client.get(past + "/events").status_code == 401
            bad = {"x-api-key": key_of(noisy)["x-api-key"][:-2] + "xx"}
            _problem(client.get(past + "/events", headers=bad), 401, "unauthorized")
            foreign = client.get(past, params={"asOf": as_of}, headers=key_of(quiet))
            _problem(foreign, 404, "session-not-found")
            admin = client.get(past + "/uptime", headers=ADMIN)
            _problem(admin, 429, "expensive-reads-spent")
            counted = client.get(past + "/events", params={"limit": "5"}, headers=key_of(noisy))
            _problem(counted, 429, "expensive-reads-spent")
            assert "ratelimit-remaining" in counted.headers, counted.headers
            # Check: a replay of the session's endpoint is refused 429 too, before its body is
            # read (a body that is not JSON: 429, not 400), after the key's check as on the
            # route (rate limit counted); another session's key is told 404 as on the route.
            not_json = {**key_of(noisy), "content-type": "application/json"}
            spent = client.post(replay, content=b"{not json", headers=not_json)
            _problem(spent, 429, "expensive-reads-spent")
            assert spent.headers["retry-after"] == "1"
            assert "ratelimit-remaining" in spent.headers, spent.headers
            _problem(client.post(replay, json=window, headers=ADMIN), 429, "expensive-reads-spent")
            assert client.post(replay, content=b"{not json").status_code == 401
            foreign_replay = client.post(replay, json=window, headers=key_of(quiet))
            _problem(foreign_replay, 404, "webhook-not-found")
            # Check: without `asOf` the session itself is no expensive read.
            assert client.get(past, headers=key_of(noisy)).status_code == 200
            # Check: the status path of both sessions answers meanwhile.
            for created in (noisy, quiet):
                status = client.get(
                    f"/sessions/{created['sessionId']}/status", headers=key_of(created)
                )
                assert status.status_code == 200, status.text
            lock.rollback()
        hanging.join(30)
        assert [a.status_code for a in answers] == [200], answers[0].text if answers else None
        # Check: once the read ended, the session may read again.
        again = client.get(past, params={"asOf": as_of}, headers=key_of(noisy))
        assert again.status_code == 200, again.text
        assert again.json() == answers[0].json()


def _readers(server: Any) -> list[int]:
    """The reader processes of the server's HTTP process (`api.expensive`)."""
    return [
        pid
        for http, _ in children(server.process.pid)
        for pid, cmd in children(http)
        if "multiprocessing.spawn" in cmd
    ]


def test_a_reader_process_that_dies_mid_read_is_replaced_and_none_outlives_the_server(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    server = start("serve", {**sessiond_env, "SESSIOND_EXPENSIVE_READERS": "1"})
    with server.client() as client:
        created = create_session(client, "Read")
        past = f"/sessions/{created['sessionId']}"
        as_of = datetime.now(UTC).isoformat()
        first = client.get(past, params={"asOf": as_of}, headers=key_of(created))
        assert first.status_code == 200, first.text
        (reader,) = _readers(server)
        answers: list[httpx.Response] = []
        # The fault: the reader process is killed while its read waits on a lock.
        with psycopg.connect(database_url) as lock:
            lock.execute("LOCK TABLE sessiond_status_snapshots IN ACCESS EXCLUSIVE MODE")
            hanging = threading.Thread(
                target=lambda: answers.append(
                    client.get(past, params={"asOf": as_of}, headers=key_of(created))
                )
            )
            hanging.start()
            eventually(
                lambda: _waiting_on(database_url, "sessiond_status_snapshots"),
                what="the past read waits on the lock",
            )
            os.kill(reader, signal.SIGKILL)
            hanging.join(30)
            lock.rollback()
        # Check: the read answers 503 with Retry-After, not a 500 and not never.
        (answer,) = answers
        _problem(answer, 503, "reader-unavailable")
        assert answer.headers["retry-after"] == "1"
        # Check: the next read is served by a new reader process, with the same answer.
        again = client.get(past, params={"asOf": as_of}, headers=key_of(created))
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        (replaced,) = _readers(server)
        assert replaced != reader
    # Check: a server killed outright leaves no reader process behind.
    server.process.kill()
    server.process.wait(10)
    eventually(lambda: not _alive(replaced), timeout=20, what="the reader process ends")


def test_reader_processes_decrypt_the_log_with_the_servers_cipher_key(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    env = {
        **sessiond_env,
        "SESSIOND_CIPHER_KEY": AESCipher.create_key(32),
        "SESSIOND_READER_NICENESS": "15",
    }
    server = start("serve", env)
    with server.client() as client:
        created = create_session(client, "Encrypted")
        sid = created["sessionId"]
        assert client.post(f"/sessions/{sid}/stop", headers=ADMIN).status_code == 200
        # Check: a history page, a past state and an uptime series, read by a reader
        # process from the encrypted log, answer what the session recorded.
        page = client.get(f"/sessions/{sid}/events", headers=key_of(created))
        assert page.status_code == 200, page.text
        versions = [item["version"] for item in page.json()["items"]]
        assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 2
        past = client.get(
            f"/sessions/{sid}",
            params={"asOf": datetime.now(UTC).isoformat()},
            headers=key_of(created),
        )
        assert past.status_code == 200, past.text
        assert past.json()["name"] == "Encrypted"
        uptime = client.get(f"/sessions/{sid}/uptime", headers=key_of(created))
        assert uptime.status_code == 200, uptime.text
        # Check: the reader processes run SESSIOND_READER_NICENESS below their API process
        # for the CPU (nice), so that a core both want goes to the status reads first.
        # (A reader process applies it as it starts: one still starting, on a loaded machine,
        # is waited for; it serves nothing before.)
        readers = _readers(server)
        assert readers
        (http,) = set(map(_parent, readers))
        eventually(
            lambda: {_niceness(pid) for pid in _readers(server)} == {_niceness(http) + 15},
            what="every reader process below its API process",
        )


def _waiting_on(database_url: str, table: str) -> bool:
    with psycopg.connect(database_url) as probe:
        found = probe.execute(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
            (table,),
        ).fetchone()
    return bool(found and found[0])


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command's name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _parent(pid: int) -> int:
    return int(_stat(pid)[1])


def _niceness(pid: int) -> int:
    return int(_stat(pid)[16])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_replay_reads_a_bounded_page_of_the_sessions_own_events_and_goes_on_by_cursor(
    start: Any, sessiond_env: dict[str, str], hook: Receiver, database_url: str
) -> None:
    env = {**sessiond_env, "SESSIOND_REPLAY_MAX_EVENTS": "4"}
    server = start("serve", env)
    with server.client() as client:
        begin = datetime.now(UTC)
        mine = create_session(client, "Replayed")
        theirs = create_session(client, "Not mine")
        for _ in range(3):  # each adds a stop and a reconnect to the session's events
            for created in (mine, theirs):
                sid = created["sessionId"]
                assert client.post(f"/sessions/{sid}/stop", headers=ADMIN).status_code == 200
                assert client.post(f"/sessions/{sid}/reconnect", headers=ADMIN).status_code == 200
        end = datetime.now(UTC) + timedelta(seconds=1)
        registered = client.post(
            "/webhooks",
            json={"url": hook.url, "events": ["session.created", "session.stopped"]},
            headers=key_of(mine),
        )
        assert registered.status_code == 201, registered.text
        webhook = registered.json()["webhookId"]
        replay = f"/webhooks/{webhook}/replay"
        window = {"from": begin.isoformat(), "to": end.isoformat()}
        enqueued, calls, after = 0, 0, None
        while True:
            body = {**window, **({"after": after} if after else {})}
            answer = client.post(replay, json=body, headers=key_of(mine))
            assert answer.status_code == 202, answer.text
            calls += 1
            # Check: one call never enqueues more than the events it may read.
            assert answer.json()["enqueued"] <= 4
            enqueued += answer.json()["enqueued"]
            after = answer.json()["next"]
            if after is None:
                break
        # Check: the window needed several calls, and gave the session's 4 events, no more.
        assert calls >= 2
        assert enqueued == 4

        received = hook.wait_for(lambda r: r if len(r) >= 4 else None, timeout=30)
        assert {r.json["data"]["sessionId"] for r in received} == {mine["sessionId"]}
        bad = client.post(replay, json={**window, "after": "p12"}, headers=key_of(mine))
        _problem(bad, 422, "invalid-cursor")
        # Check: a replay of the endpoint in flight elsewhere (its lease held by another
        # process) refuses a second one; once it ends, replays go on.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO sessiond_webhook_replays (webhook_id, until) "
                "VALUES (%s, now() + interval '1 hour')",
                (webhook,),
            )
            busy = client.post(replay, json=window, headers=key_of(mine))
            _problem(busy, 409, "replay-in-progress")
            conn.execute("DELETE FROM sessiond_webhook_replays WHERE webhook_id = %s", (webhook,))
        assert client.post(replay, json=window, headers=key_of(mine)).status_code == 202


def test_a_slow_endpoint_holds_no_more_than_its_share_and_others_are_delivered(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    env = {
        **sessiond_env,
        "SESSIOND_WEBHOOK_CONCURRENCY": "8",
        "SESSIOND_WEBHOOK_MAX_SHARE": "0.25",  # 2 slots of 8 at most per endpoint or tenant
        "SESSIOND_WEBHOOK_TIMEOUT": "60",
    }
    server = start("serve", env)
    with receiver() as slow, receiver() as quick, server.client() as client:
        slow.default = Answer(200, delay=40)  # the fault: it holds every request it gets
        response = client.post(
            "/webhooks",
            json={"url": slow.url, "events": ["session.created", "session.stopped"]},
            headers=ADMIN,
        )
        assert response.status_code == 201, response.text
        for n in range(12):  # 12 deliveries due to the slow endpoint, more than all slots
            create_session(client, f"Noisy {n}")
        slow.wait_for(lambda r: len(r) >= 2, timeout=20)
        quiet = create_session(client, "Quiet")
        mine = client.post(
            "/webhooks",
            json={"url": quick.url, "events": ["session.stopped"]},
            headers=key_of(quiet),
        )
        assert mine.status_code == 201, mine.text
        assert client.post(f"/sessions/{quiet['sessionId']}/stop", headers=ADMIN).status_code == 200
        # Check: the quiet tenant's event is delivered while the slow endpoint hangs...
        got = quick.wait_for(lambda r: r, timeout=20)
        assert got[0].json["data"]["sessionId"] == quiet["sessionId"]
        # ... which never got more than its two slots (each of its requests hangs 40 s).
        assert len(slow.received) == 2
