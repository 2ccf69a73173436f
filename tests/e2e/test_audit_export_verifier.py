"""An auditor's verifier of `sessiond export`, written from the README's "Checking an export
with your own code" alone: it imports nothing of sessiond, only the standard library and an
Ed25519 implementation. It checks a real server's export, and finds an edited event."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.e2e.conftest import ADMIN, create_session
from tests.e2e.steps import sessiond


def event_hash(previous: bytes, chain: dict[str, Any], position: int) -> bytes:
    topic = chain["topic"].encode("utf-8")
    state = base64.b64decode(chain["state"])
    encoded = (
        previous
        + struct.pack(">q", position)
        + uuid.UUID(chain["originatorId"]).bytes
        + struct.pack(">q", chain["version"])
        + struct.pack(">q", chain["recordedAtMicros"])
        + struct.pack(">i", len(topic))
        + topic
        + struct.pack(">q", len(state))
        + state
    )
    return hashlib.sha256(encoded).digest()


def checkpoint_valid(checkpoint: dict[str, Any], trusted: bytes) -> bool:
    if base64.b64decode(checkpoint["publicKey"]) != trusted:
        return False
    message = (
        b"sessiond audit checkpoint v1\n"
        + struct.pack(">qq", checkpoint["position"], checkpoint["events"])
        + bytes.fromhex(checkpoint["hash"])
        + struct.pack(">q", checkpoint["signedAtMicros"])
    )
    try:
        Ed25519PublicKey.from_public_bytes(trusted).verify(
            base64.b64decode(checkpoint["signature"]), message
        )
    except InvalidSignature:
        return False
    return True


def verify_export(lines: list[str], trusted: bytes) -> tuple[str, int, int]:
    """("ok", events, checkpoints) or ("broken", position, 0)."""
    previous, last, count, signed = bytes(32), 0, 0, 0
    for line in lines:
        record = json.loads(line)
        if "chainFrom" in record:
            start = record["chainFrom"]
            previous, last, count = bytes.fromhex(start["hash"]), start["position"], start["events"]
        elif "checkpoint" in record:
            checkpoint = record["checkpoint"]
            if not (
                checkpoint_valid(checkpoint, trusted)
                and checkpoint["position"] == last
                and bytes.fromhex(checkpoint["hash"]) == previous
                and checkpoint["events"] == count
            ):
                return "broken", checkpoint["position"], 0
            signed += 1
        elif "head" in record:
            head = record["head"]
            if (head["position"], bytes.fromhex(head["hash"]), head["events"]) != (
                last,
                previous,
                count,
            ):
                return "broken", head["position"], 0
        else:
            position = record["position"]
            expected = event_hash(previous, record["chain"], position)
            if position <= last or bytes.fromhex(record["chain"]["hash"]) != expected:
                return "broken", position, 0
            previous, last, count = expected, position, count + 1
    return "ok", count, signed


def test_an_export_verifies_with_the_public_key_alone_and_an_edit_is_found(
    start: Any, sessiond_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    trusted = key.public_key().public_bytes_raw()
    env = {
        **sessiond_env,
        "SESSIOND_AUDIT_SIGNING_KEY": base64.b64encode(raw).decode(),
        "SESSIOND_AUDIT_CHECKPOINT_EVENTS": "4",
    }
    server = start("serve", env)
    with server.client() as client:
        for n in range(3):
            created = create_session(client, f"Audited {n}")
            client.post(f"/sessions/{created['sessionId']}/stop", headers=ADMIN)
        # Check the server publishes the configured key.
        published = client.get("/audit/public-key").json()
        assert base64.b64decode(published["publicKey"]) == trusted
        deadline = time.monotonic() + 30
        while "lastCheckpoint" not in client.get("/audit/verify", headers=ADMIN).json():
            assert time.monotonic() < deadline, "no checkpoint signed"
            time.sleep(0.2)

    exported = tmp_path / "log.ndjson"
    assert sessiond(env, "export", "-o", str(exported)).returncode == 0
    lines = exported.read_text().splitlines()
    verdict, events, checkpoints = verify_export(lines, trusted)
    assert verdict == "ok" and events >= 9 and checkpoints >= 1
    # Check a continued export verifies from its start line too.
    positions = [json.loads(line)["position"] for line in lines if "chain" in json.loads(line)]
    tail = sessiond(env, "export", "--after", str(positions[3]))
    assert verify_export(tail.stdout.splitlines(), trusted)[0] == "ok"
    # Check a key the auditor does not trust fails the checkpoints.
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert verify_export(lines, stranger)[0] == "broken"

    edited = positions[2]
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE sessiond_events SET state = state || '\\x20'::bytea WHERE notification_id = %s",
            (edited,),
        )
    assert sessiond(env, "export", "-o", str(exported)).returncode == 0
    assert verify_export(exported.read_text().splitlines(), trusted) == ("broken", edited, 0)


def test_audit_verify_reports_the_chain_and_the_first_broken_position(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    env = {**sessiond_env, "SESSIOND_AUDIT_CHECKPOINT_EVENTS": "3"}
    server = start("serve", env)
    # Check a generated key is shown once, and is the one published.
    assert server.log().count("SESSIOND_AUDIT_SIGNING_KEY=") == 1
    shown = server.log().split("SESSIOND_AUDIT_SIGNING_KEY=")[1].split()[0]
    public = (
        Ed25519PrivateKey.from_private_bytes(base64.b64decode(shown))
        .public_key()
        .public_bytes_raw()
    )
    with server.client() as client:
        assert base64.b64decode(client.get("/audit/public-key").json()["publicKey"]) == public
        created = create_session(client, "Audited")
        session_key = {"x-api-key": created["apiKey"]["key"]}
        assert client.get("/audit/verify").status_code == 401
        assert client.get("/audit/verify", headers=session_key).status_code == 403
        deadline = time.monotonic() + 30
        while "lastCheckpoint" not in (body := client.get("/audit/verify", headers=ADMIN).json()):
            assert time.monotonic() < deadline, "no checkpoint signed"
            time.sleep(0.2)
        assert body["verified"] is True
        checkpoint = body["lastCheckpoint"]["position"]
        client.post(f"/sessions/{created['sessionId']}/stop", headers=ADMIN)
        body = client.get("/audit/verify", headers=ADMIN).json()
        assert body["verified"] is True and body["verifiedFrom"] == checkpoint
        assert body["position"] > checkpoint
    server.stop()
    again = start("serve", env)
    assert "SESSIOND_AUDIT_SIGNING_KEY=" not in again.log()  # shown only once

    verified = sessiond(env, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    line = verified.stdout.strip()
    assert line.startswith("verified ") and " events up to position " in line
    assert ", last checkpoint at 20" in line

    with psycopg.connect(database_url) as conn:
        last = conn.execute("SELECT max(notification_id) FROM sessiond_events").fetchone()
        assert last is not None
        conn.execute(
            "UPDATE sessiond_events SET topic = topic || 'x' WHERE notification_id = %s",
            (last[0],),
        )
    broken = sessiond(env, "audit", "verify")
    assert broken.returncode == 1
    assert broken.stdout.startswith(f"broken at position {last[0]}: ")
    with httpx.Client(base_url=again.url, timeout=10) as client:
        body = client.get("/audit/verify", headers=ADMIN).json()
    assert body == {"verified": False, "brokenAt": last[0], "problem": body["problem"]}


def test_a_configured_key_other_than_the_databases_is_refused_at_start(
    start: Any, sessiond_env: dict[str, str]
) -> None:
    first = start("serve", sessiond_env)  # generates the database's key
    first.stop()
    other = base64.b64encode(bytes(range(32))).decode()
    refused = start("serve", {**sessiond_env, "SESSIOND_AUDIT_SIGNING_KEY": other}, wait=False)
    assert refused.process.wait(60) == 2
    assert "is not the key this database's audit checkpoints are signed with" in refused.log()


def test_two_api_processes_writing_at_once_keep_one_valid_chain(
    start: Any, sessiond_env: dict[str, str], database_url: str
) -> None:
    servers = [start("serve", sessiond_env), start("api", sessiond_env)]

    def write(url: str, name: str) -> int:
        commands = 0
        with httpx.Client(base_url=url, timeout=30) as client:
            for n in range(6):
                created = create_session(client, f"{name}{n}")
                for _ in range(3):
                    for action in ("stop", "reconnect"):
                        answer = client.post(
                            f"/sessions/{created['sessionId']}/{action}", headers=ADMIN
                        )
                        assert answer.status_code in (200, 202), answer.text
                        commands += 1
        return commands

    with ThreadPoolExecutor(4) as pool:
        done = list(
            pool.map(write, [s.url for s in servers for _ in range(2)], ["A", "B", "C", "D"])
        )
    assert sum(done) == 4 * 6 * 6
    verified = sessiond(sessiond_env, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    words = verified.stdout.split()  # verified N events up to position P, …
    events, position = int(words[1]), int(words[6].rstrip(","))
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sessiond_events WHERE notification_id <= %s", (position,)
        ).fetchone()
    assert row is not None and row[0] == events >= 4 * 6 * 8
