"""The device store behind the worker's PgBouncer, with neonize's real Go library, offline.

Each test runs a child process (Go reads its environment once, when neonize is loaded) whose
HTTPS proxy is a closed port on 127.0.0.1: every dial is refused locally, nothing leaves the
machine. The child counts the database's connections itself, while Go's pools are open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from infra.postgres.embedded import start_embedded_postgres
from infra.whatsapp.devicestore import APPLICATION_NAME, DeviceStorePool
from tests.e2e.conftest import free_port
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys, threading, time
from uuid import uuid4
import psycopg
from application.ports import GatewayEvents
from infra.whatsapp.devicestore import APPLICATION_NAME, DeviceStorePool
from infra.whatsapp.neonize import NeonizeGateway
from infra.whatsapp.devicestore import prepare_store, store_dsn_from_url
from infra.whatsapp.loading import import_neonize
from tests.fakes.devices import FAKE_JID, insert_fake_device

url, clients, pool_size, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
reports, done = [], threading.Semaphore(0)

class Events(GatewayEvents):
    def qr_issued(self, *a): reports.append(("qr",)); done.release()
    def qr_exhausted(self, *a): reports.append(("qr_exhausted",)); done.release()
    def connected(self, *a): reports.append(("connected",)); done.release()
    def keepalive(self, *a): pass
    def message_received(self, *a): pass
    def message_status(self, *a): pass
    def disconnected(self, sid, ending):
        reports.append((str(sid), ending.reason, ending.detail)); done.release()

def connections():
    # Named, and not counted: the backend of an earlier census may still be leaving.
    with psycopg.connect(url, autocommit=True, application_name="census") as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name <> 'census' GROUP BY 1"
        ).fetchall()
    return {name: n for name, n in rows}

def settled():
    # The set-up's own direct connections (unnamed) gone, before anything is counted.
    for _ in range(200):
        if set(connections()) <= {APPLICATION_NAME}:
            return
        time.sleep(0.05)
    raise AssertionError(f"the set-up's connections stay: {connections()}")

def gateway_on_a_new_pool():
    pool = DeviceStorePool(url, size=pool_size)
    pool.start()
    dsn = store_dsn_from_url(pool.conninfo(), pooled=True)
    prepare_store(url, dsn)  # whatsmeow's whole upgrade, through the pool
    gateway = NeonizeGateway(dsn, pool=pool)
    gateway.bind(Events())
    return gateway, dsn

out = {}
gateway, dsn = gateway_on_a_new_pool()
insert_fake_device(url)
if mode == "many":
    settled()
    seen = []
    for i in range(clients):
        gateway.start(uuid4(), FAKE_JID if i % 2 else None)  # new pairings, and a resume
        if i % 10 == 9:
            seen.append(connections())
    for _ in range(clients):
        assert done.acquire(timeout=60), reports
    seen.append(connections())
    out["seen"] = seen
    # whatsmeow's writes, through transaction pooling: a contact, then a batch (a transaction)
    nz = import_neonize()
    client = nz.new_client(dsn, jid=nz.build_jid("15551234567:12"))
    try:
        client.connect()
    except Exception as exc:
        out["resume_error"] = str(exc)
    peer = nz.build_jid("15550001111")
    client.contact.put_contact_name(peer, "Ann Example", "Ann")
    entry = nz.pb.ContactEntry(JID=nz.build_jid("15550002222"), FirstName="Bo", FullName="Bo B")
    client.contact.put_all_contact_name([entry])
    out["contact"] = client.contact.get_contact(peer).FullName
    client.stop()
else:  # hand-over: this worker resumes the device, leaves; another takes the session over
    sid = uuid4()
    gateway.start(sid, FAKE_JID)
    assert done.acquire(timeout=60), reports
    gateway.close()  # its PgBouncer stops with it
    taker, _ = gateway_on_a_new_pool()
    taker.start(sid, FAKE_JID)
    assert done.acquire(timeout=60), reports
    taker.close()
out["reports"] = reports
print(json.dumps(out))
"""


def run_child(database_url: str, clients: int, pool_size: int, mode: str) -> dict[str, object]:
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"HTTPS_PROXY": proxy, "https_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, database_url, str(clients), str(pool_size), mode],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=REPO,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parsed: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def dial_failures(out: dict[str, object], count: int) -> list[list[str]]:
    """The child's `count` reports (session id, reason, detail), checked to be starts that
    got as far as dialling WhatsApp: not unlinked, not a store error."""
    reports = out["reports"]
    assert isinstance(reports, list) and len(reports) == count
    for _sid, reason, detail in reports:
        assert reason == "whatsapp_unreachable", detail
        assert "failed to dial whatsapp web websocket" in detail, detail
    return reports


@pytest.mark.postgres
def test_go_pools_share_the_pools_fixed_server_connections_and_whatsmeow_works_through_it(
    database_url: str,
) -> None:
    out = run_child(database_url, clients=40, pool_size=2, mode="many")

    # Check 40 real clients (40 Go stores and pools, each keeping a connection to PgBouncer)
    # never held more than the pool's 2 server connections, and nothing else of theirs.
    seen = out["seen"]
    assert isinstance(seen, list) and len(seen) == 5
    for counts in seen:
        assert counts.get(APPLICATION_NAME, 0) <= 2, seen
        assert set(counts) <= {APPLICATION_NAME}, seen

    # Check each start failed at the dial (a resumed device too: Go found it through the
    # pool), never in the store.
    dial_failures(out, 40)

    # Check whatsmeow's writes go through transaction pooling (lib/pq's binary parameters).
    assert "failed to dial whatsapp web websocket" in str(out["resume_error"])
    assert out["contact"] in ("Ann", "Ann Example")  # read back through the pool
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT their_jid, first_name, full_name FROM whatsmeow.whatsmeow_contacts ORDER BY 1"
        ).fetchall()
    assert [(jid, {first, full}) for jid, first, full in rows] == [
        ("15550001111@s.whatsapp.net", {"Ann", "Ann Example"}),
        ("15550002222@s.whatsapp.net", {"Bo", "Bo B"}),
    ]


@pytest.mark.postgres
def test_a_device_stays_resumable_by_the_worker_that_takes_the_session_over(
    database_url: str,
) -> None:
    out = run_child(database_url, clients=1, pool_size=2, mode="handover")
    # Both workers found the device in the store through their own pools and handed it to Go,
    # which got as far as dialling WhatsApp.
    (first_sid, *_), (second_sid, *_) = dial_failures(out, 2)
    assert first_sid == second_sid


def pgbouncers_of(pool_dir: str) -> list[int]:
    """The PgBouncer processes serving the pool in `pool_dir` (their command line names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if command[0].endswith(b"pgbouncer") and pool_dir.encode() in b" ".join(command):
                found.append(int(entry.name))
    return found


@pytest.mark.postgres
def test_pgbouncer_ends_with_its_worker_even_a_killed_one(database_url: str) -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from infra.whatsapp.devicestore import DeviceStorePool\n"
            "pool = DeviceStorePool(sys.argv[1], size=1)\n"
            "pool.start()\n"
            "print(pool.socket_dir, flush=True)\n"
            "time.sleep(120)\n",
            database_url,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    pool_dir = child.stdout.readline().strip()
    assert pool_dir and len(pgbouncers_of(pool_dir)) == 1
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    eventually(lambda: pgbouncers_of(pool_dir) == [], "the PgBouncer's end", timeout=15)


@pytest.mark.postgres
def test_a_pgbouncer_that_dies_is_started_again_on_the_same_socket(database_url: str) -> None:
    pool = DeviceStorePool(database_url, size=1)
    pool.start()
    try:
        [first] = pgbouncers_of(pool.socket_dir)
        os.kill(first, signal.SIGKILL)

        def serving_again() -> bool:
            try:
                with psycopg.connect(pool.conninfo(), connect_timeout=2) as conn:
                    row = conn.execute("SHOW search_path").fetchone()
            except psycopg.Error:
                return False
            return row == ("whatsmeow",)

        eventually(serving_again, "a PgBouncer serving again", timeout=15)
        [second] = pgbouncers_of(pool.socket_dir)
        assert second != first
    finally:
        pool.close()
    assert pgbouncers_of(pool.socket_dir) == []
    assert not Path(pool.socket_dir).exists()  # nothing left: no password on disk either


def test_a_password_reaches_postgresql_through_pgbouncer_and_stays_off_disk(
    tmp_path: Path,
) -> None:
    """A private server (never the shared one reconfigured) whose role needs a password."""
    url, server = start_embedded_postgres(tmp_path / "pw")
    password = "p\"a's s\\w"  # quotes, a space, a backslash
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE tenant LOGIN PASSWORD {}").format(sql.Literal(password))
            )
            conn.execute("CREATE DATABASE tenant_db OWNER tenant")
        hba = tmp_path / "pw" / "postgres" / "pg_hba.conf"
        hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        without = make_conninfo(url, dbname="tenant_db", user="tenant")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(without).close()

        pool = DeviceStorePool(make_conninfo(without, password=password), size=1)
        pool.start()
        try:
            with psycopg.connect(pool.conninfo()) as conn:
                row = conn.execute("SELECT current_user, current_database()").fetchone()
            assert row == ("tenant", "tenant_db")
            assert os.listdir(pool.socket_dir) == [".s.PGSQL.6432"]  # no configuration left
        finally:
            pool.close()
    finally:
        server.cleanup()


def test_pgbouncer_reaches_a_server_whose_socket_only_root_can_reach(tmp_path: Path) -> None:
    """Run by root, PgBouncer runs as an unprivileged user; the way to the server's socket may
    cross a directory only root can enter (pytest makes its base directory 0700 again at every
    run: another run of the suite did so under this one)."""
    locked = tmp_path / "locked"
    url, server = start_embedded_postgres(locked / "pg")
    try:
        locked.chmod(0o700)
        pool = DeviceStorePool(url, size=1)
        pool.start()
        try:
            with psycopg.connect(pool.conninfo()) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            pool.close()
    finally:
        locked.chmod(0o755)  # for the server's own user, to stop it
        server.cleanup()
