"""Moving a linked session between two deployments (two `sessiond serve`, two databases) with
`sessiond session export` and `sessiond session import`, run as an operator runs them.

With the simulator's device store: the imported session connects without a QR code, with the
source's settings and webhooks (same secret), and the source never runs it again. What must
be refused is refused with one clear line, changing nothing: a wrong passphrase, a file
altered anywhere, a second import of one export, a reconnect of the exported session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pyrage
import pytest
from pyrage import x25519

from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR
from infra.postgres.schema import migrate
from infra.settings import eventsourcing_env
from tests.conftest import drop_database, empty_database
from tests.e2e.conftest import ADMIN, ROOT, create_session, key_of
from tests.receiver import Receiver

PASSPHRASE = "correct horse battery staple"
JID = "4915112345678:7@s.whatsapp.net"


@pytest.fixture
def second_database_url(pg_base_url: str) -> Iterator[str]:
    """The other deployment's database (same server, another database)."""
    url = empty_database(pg_base_url)
    migrate(url)
    yield url
    drop_database(pg_base_url, url)


class Deployments:
    """Two deployments' environments: the source's database and the destination's."""

    def __init__(self, sessiond_env: dict[str, str], source: str, target: str, root: Path) -> None:
        self.source_url, self.target_url = source, target
        self.source = {**sessiond_env, "SESSIOND_DATABASE_URL": source}
        self.source["SESSIOND_DATA_DIR"] = str(root / "a")
        self.target = {**sessiond_env, "SESSIOND_DATABASE_URL": target}
        self.target["SESSIOND_DATA_DIR"] = str(root / "b")


@pytest.fixture
def deployments(
    sessiond_env: dict[str, str], database_url: str, second_database_url: str, tmp_path: Path
) -> Deployments:
    return Deployments(sessiond_env, database_url, second_database_url, tmp_path)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`sessiond <args>` as a separate process, no terminal (stdin closed)."""
    clean = {k: v for k, v in os.environ.items() if k != "SESSIOND_EXPORT_PASSPHRASE"}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=ROOT,
        env={**clean, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def export(
    env: dict[str, str], session_id: str, output: Path, *how: str
) -> subprocess.CompletedProcess[str]:
    """`sessiond session export` of the session to `output`, with the options `how` (its
    protection: ``--passphrase-file``, ``--recipient``; none)."""
    return cli(env, "session", "export", session_id, "-o", str(output), *how)


def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def footprint(url: str) -> tuple[int, int, int, int]:
    """What a refused import must leave as it was: events, sessions, devices, endpoints."""
    with psycopg.connect(url) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM sessiond_events), "
            "(SELECT count(*) FROM session_status), "
            "(SELECT count(*) FROM sessiond_simulator_devices), "
            "(SELECT count(*) FROM sessiond_webhook_endpoints)"
        ).fetchone()
    assert counts is not None
    return (int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3]))


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal: a non-zero exit and one line on stderr, nothing on stdout."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sessiond: "), result.stderr
    return lines[0]


def linked(client: httpx.Client, created: dict[str, Any]) -> str:
    """Scan the session's QR code with the simulated phone; its device JID."""
    sid = created["sessionId"]
    until(lambda: client.get(f"/sessions/{sid}/qr", headers=ADMIN).status_code == 200, "a QR")
    assert client.post(f"/simulator/sessions/{sid}/scan", headers=ADMIN).status_code == 200
    body = until(
        lambda: (
            (s := client.get(f"/sessions/{sid}", headers=ADMIN).json())["status"] == "connected"
            and s
        ),
        "connected",
    )
    jid: str = body["phoneJid"]
    assert jid
    return jid


# Each passphrase (de)cryption is age's scrypt, about 3 s on a loaded 2-core machine: a dozen.
@pytest.mark.timeout(400)
def test_a_session_moves_with_its_device_and_settings_and_runs_in_one_place_only(
    start: Any, deployments: Deployments, tmp_path: Path, hook: Receiver
) -> None:
    source_env, target_env = deployments.source, deployments.target
    second_database_url = deployments.target_url
    source, target = start("serve", source_env), start("serve", target_env)
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    export_file = tmp_path / "support.sessiond"

    with source.client() as a:
        created = create_session(
            a,
            "Support EU",
            labels={"region": "eu", "useCase": "support"},
            rateLimit={"requestsPerMinute": 77},
            proxy={"url": "socks5://ann:s3cret-pass@proxy.example.com:1080"},
        )
        sid = created["sessionId"]
        registered = a.post(
            "/webhooks",
            json={"url": hook.url, "events": ["session.socket-connected", "session.created"]},
            headers=key_of(created),
        ).json()
        quiet = a.post(
            "/webhooks",
            json={"url": hook.url + "/quiet", "events": ["message.received"]},
            headers=key_of(created),
        ).json()
        assert a.patch(
            f"/webhooks/{quiet['webhookId']}", json={"enabled": False}, headers=ADMIN
        ).is_success
        jid = linked(a, created)

        # Export: the file is written, the session is stopped here for good, and says why.
        exported = export(
            source_env,
            sid,
            export_file,
            "--passphrase-file",
            str(passphrase_file),
        )
        assert exported.returncode == 0, exported.stderr
        assert export_file.read_bytes().startswith(b"sessiond-session-export/1\nage-encryption")
        assert (export_file.stat().st_mode & 0o777) == 0o600
        assert PASSPHRASE not in export_file.read_text(errors="replace")
        assert b"s3cret-pass" not in export_file.read_bytes()  # encrypted, proxy password too
        session = until(
            lambda: (
                (s := a.get(f"/sessions/{sid}", headers=ADMIN).json())["reason"] == "exported" and s
            ),
            "the source shows the session exported",
        )
        assert session["status"] == "disconnected"
        history = a.get(f"/sessions/{sid}/events", headers=ADMIN).json()["items"]
        assert [e["type"] for e in history].count("SessionExported") == 1

        # Check the source refuses to run it again: a reconnect is 409 with its own problem.
        for headers in (ADMIN, key_of(created)):
            again = a.post(f"/sessions/{sid}/reconnect", headers=headers)
            assert again.status_code == 409, again.text
            assert again.headers["content-type"].startswith("application/problem+json")
            assert again.json()["type"] == "urn:sessiond:problem:session-exported"
        sent = a.post(
            f"/sessions/{sid}/messages",
            json={"to": "+14155550123", "text": "hi"},
            headers=key_of(created),
        )
        assert sent.status_code == 409 and "exported" in sent.json()["detail"]

    before = footprint(second_database_url)
    # A wrong passphrase: refused in one line, nothing changed at the destination.
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    line = one_line(
        cli(target_env, "session", "import", str(export_file), "--passphrase-file", str(wrong))
    )
    assert "wrong passphrase" in line
    assert footprint(second_database_url) == before
    # A file altered anywhere: in age's header (the scrypt stanza), in the encrypted body
    # (first chunk, last byte), or cut short: refused, nothing changed.
    original = export_file.read_bytes()
    body = original.index(b"\n---") + 60
    altered: list[bytes] = []
    for position in (original.index(b"-> scrypt") + 12, body, len(original) - 1):
        flipped = bytearray(original)
        flipped[position] ^= 0x01
        altered.append(bytes(flipped))
    altered.append(original[:-20])
    for number, content in enumerate(altered):
        tampered = tmp_path / f"tampered-{number}.sessiond"
        tampered.write_bytes(content)
        args = ["session", "import", str(tampered), "--passphrase-file", str(passphrase_file)]
        line = one_line(cli(target_env, *args))
        assert "wrong passphrase, or the file was altered" in line, line
        assert footprint(second_database_url) == before
    # Not an export at all.
    stranger = tmp_path / "notes.txt"
    stranger.write_text("hello\n")
    assert "not a sessiond session export" in one_line(
        cli(target_env, "session", "import", str(stranger), "--passphrase-file", str(wrong))
    )

    # The import: the passphrase from the environment this time.
    imported = cli(
        {**target_env, "SESSIOND_EXPORT_PASSPHRASE": PASSPHRASE},
        "session",
        "import",
        str(export_file),
        "--json",
    )
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    new_id, new_key = result["sessionId"], {"x-api-key": result["apiKey"]["key"]}
    assert new_id != sid and result["sourceSessionId"] == sid and result["jid"] == jid
    assert len(result["webhooks"]) == 2

    with target.client() as b:
        # Check it resumes the device: connected, with the source's JID, and no QR code ever.
        until(
            lambda: (
                b.get(f"/sessions/{new_id}/status", headers=new_key).json()["status"] == "connected"
            ),
            "the imported session connects",
        )
        assert b.get(f"/sessions/{new_id}", headers=new_key).json()["phoneJid"] == jid
        events = b.get(f"/sessions/{new_id}/events", headers=new_key).json()["items"]
        types = [e["type"] for e in events]
        assert types[0] == "SessionImported" and "QRIssued" not in types, types
        assert events[0]["data"]["export_id"] == result["exportId"]
        # Its settings came along; its key is a new one (the source's keys did not).
        session = b.get(f"/sessions/{new_id}", headers=ADMIN).json()
        assert session["name"] == "Support EU"
        assert session["labels"] == {"region": "eu", "useCase": "support"}
        assert session["rateLimit"]["requestsPerMinute"] == 77
        proxy = b.get(f"/sessions/{new_id}/proxy", headers=new_key).json()
        assert proxy["url"] == "socks5://ann:***@proxy.example.com:1080"
        assert b.get(f"/sessions/{new_id}", headers=key_of(created)).status_code == 401
        hooks = {h["url"]: h for h in b.get("/webhooks", headers=new_key).json()["items"]}
        assert set(hooks) == {hook.url, hook.url + "/quiet"}
        assert hooks[hook.url]["enabled"] and not hooks[hook.url + "/quiet"]["enabled"]
        assert hooks[hook.url]["events"] == ["session.created", "session.socket-connected"]
        # Its endpoint signs with the secret the receiver already has.
        delivered = hook.wait_for(
            lambda received: [
                r
                for r in received
                if r.json["type"] == "session.socket-connected"
                and r.json["data"]["sessionId"] == new_id
            ]
        )
        delivered[0].verify(registered["secret"])

        # A second import of the same file: refused, nothing changed.
        before = footprint(second_database_url)
        line = one_line(
            cli(
                target_env,
                "session",
                "import",
                str(export_file),
                "--passphrase-file",
                str(passphrase_file),
            )
        )
        assert "already imported" in line and new_id in line
        assert footprint(second_database_url) == before
        assert b.get(f"/sessions/{new_id}/status", headers=new_key).json()["status"] == "connected"

    with source.client() as a:
        # The source still refuses to run it, and its worker never started it again.
        assert a.post(f"/sessions/{sid}/reconnect", headers=ADMIN).status_code == 409
        assert a.get(f"/sessions/{sid}", headers=ADMIN).json()["reason"] == "exported"
        history = a.get(f"/sessions/{sid}/events", headers=ADMIN).json()["items"]
        after_export = [e["type"] for e in history][
            [e["type"] for e in history].index("SessionExported") + 1 :
        ]
        assert not {"Connected", "QRIssued", "ReconnectAttempted"} & set(after_export)

    # Exporting it again writes the same export (same id) to a new file, never over one; the
    # destination refuses that copy too: it has imported this export.
    flags = ["--passphrase-file", str(passphrase_file)]
    assert "exists" in one_line(export(source_env, sid, export_file, *flags))
    copy = tmp_path / "copy.sessiond"
    again = export(source_env, sid, copy, *flags)
    assert again.returncode == 0 and "writing that export again" in again.stderr, again.stderr
    before = footprint(second_database_url)
    line = one_line(cli(target_env, "session", "import", str(copy), *flags))
    assert "already imported" in line and new_id in line
    assert footprint(second_database_url) == before
    # Deleting it at the source removes the source's copy of the device; the destination's
    # session keeps running with its own.
    with source.client() as a:
        assert a.delete(f"/sessions/{sid}", headers=ADMIN).status_code == 204
    until(lambda: footprint(deployments.source_url)[2] == 0, "the source forgets the device")
    with target.client() as b:
        status = b.get(f"/sessions/{new_id}/status", headers=ADMIN).json()
        assert status["status"] == "connected"
    assert footprint(second_database_url)[2] == 1
    for server in (source, target):
        assert "Traceback" not in server.log(), server.log()


def test_an_export_to_an_age_recipient_imports_with_its_identity_only(
    start: Any, deployments: Deployments, tmp_path: Path
) -> None:
    source_env, target_env = deployments.source, deployments.target
    second_database_url = deployments.target_url
    source, target = start("serve", source_env), start("serve", target_env)
    identity, other = tmp_path / "identity.txt", tmp_path / "other.txt"
    made = cli(target_env, "session", "keygen", "-o", str(identity))
    assert made.returncode == 0, made.stderr
    recipient = made.stdout.strip()
    assert recipient.startswith("age1") and (identity.stat().st_mode & 0o777) == 0o600
    assert cli(target_env, "session", "keygen", "-o", str(other)).returncode == 0
    export_file = tmp_path / "moved.sessiond"

    with source.client() as a:
        created = create_session(a, "Sales")
        unlinked = export(source_env, created["sessionId"], export_file, "--recipient", recipient)
        assert "no linked device" in one_line(unlinked) and not export_file.exists()
        jid = linked(a, created)
        # No passphrase and no terminal: refused before anything is recorded.
        assert "no passphrase" in one_line(export(source_env, created["sessionId"], export_file))
        assert a.get(f"/sessions/{created['sessionId']}", headers=ADMIN).json()["status"] == (
            "connected"
        )
        exported = export(source_env, created["sessionId"], export_file, "--recipient", recipient)
        assert exported.returncode == 0, exported.stderr

    before = footprint(second_database_url)
    assert "give its identity" in one_line(cli(target_env, "session", "import", str(export_file)))
    assert "wrong identity" in one_line(
        cli(target_env, "session", "import", str(export_file), "--identity", str(other))
    )
    assert footprint(second_database_url) == before
    imported = cli(
        target_env, "session", "import", str(export_file), "--identity", str(identity), "--json"
    )
    assert imported.returncode == 0, imported.stderr
    new_id = json.loads(imported.stdout)["sessionId"]
    with target.client() as b:
        status = until(
            lambda: (
                (s := b.get(f"/sessions/{new_id}", headers=ADMIN).json())["status"] == "connected"
                and s
            ),
            "the imported session connects",
        )
        assert status["phoneJid"] == jid


def test_an_export_waits_for_the_worker_holding_the_session_and_a_rerun_writes_that_export(
    start: Any, deployments: Deployments, tmp_path: Path
) -> None:
    env, url = deployments.source, deployments.source_url
    start("projector", env)
    app = SessionsApplication(env=eventsourcing_env(url))
    try:
        created = app.create_session("Held", {}, None, ADMIN_ACTOR)
        sid = created.session_id
        uuid = app.load(sid).id
        app.record_connected(uuid, JID, "Phone")
    finally:
        app.close()
    identity = x25519.Identity.generate()
    recipient = ["--recipient", str(identity.to_public())]
    output = tmp_path / "held.sessiond"
    # A live worker holds the session (its identity connection is open, its lease current)
    # and never lets it go: the export is recorded, but no file is written.
    with psycopg.connect(url, autocommit=True, application_name="sessiond-worker:w1") as worker:
        worker.execute("INSERT INTO sessiond_simulator_devices VALUES (%s)", (JID,))
        worker.execute("INSERT INTO sessiond_workers VALUES ('w1', 300, now())")
        worker.execute(
            "INSERT INTO sessiond_leases (session_id, owner, expires_at) "
            "VALUES (%s, 'w1', now() + interval '300 seconds')",
            (uuid,),
        )
        line = one_line(export(env, sid, output, "--wait", "1", *recipient))
        assert "worker w1 still runs it" in line and "run this command again" in line, line
        assert not output.exists()
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT count(*) FROM sessiond_events WHERE topic = 'sessiond:Session.SessionExported'"
        ).fetchone()
    assert found is not None and found[0] == 1

    # Once that worker is gone (its connection closed), running it again writes the export
    # recorded the first time.
    again = export(env, sid, output, "--wait", "1", *recipient)
    assert again.returncode == 0, again.stderr
    assert "writing that export again" in again.stderr
    sealed = output.read_bytes().split(b"\n", 1)[1]
    document = json.loads(pyrage.decrypt(sealed, [identity]))
    with psycopg.connect(url) as conn:
        exported = conn.execute(
            "SELECT count(*) FROM sessiond_events WHERE topic = 'sessiond:Session.SessionExported'"
        ).fetchone()
    assert exported is not None and exported[0] == 1
    assert document["sourceSessionId"] == sid and document["device"]["jid"] == JID
    assert document["exportId"].startswith("exp_")
