"""Inbound message ingestion end to end, against the raw event-store save rate.

- **Ingestion**: threads call the gateway callback the worker binds
  (`RecordingGatewayEvents.message_received`, the path both gateways report through) for
  connected sessions, each call one new inbound text; measured from the first call until
  the status view (in PostgreSQL, written by a ``sessiond projector`` process) shows every
  message counted in ``messagesReceived``. Each callback loads the session (from the
  application's cache), checks the WhatsApp id is new, records ``MessageReceived`` (group
  committed with concurrent ones) and the projector applies it to the status and messages
  views.
- **Baseline** (same run, interleaved rounds, its own fresh database so that its events do not
  reach the projector): the same number of ``MessageReceived`` events, already built and
  encoded, inserted by the same number of threads, one event per `insert_events` call (one
  transaction each): the raw save rate of the event store.

    .venv/bin/python bench/inbound_ingestion.py [--messages 5000] [--sessions 50] [--rounds 3]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
from benchutil import ROOT, bench_parser, fresh_database, median, print_table, ratio, write_result

from application.gateway import RecordingGatewayEvents
from application.ports import InboundMessage
from application.sessions import SessionsApplication
from domain.session import Session
from domain.values import ADMIN_ACTOR, new_message_id, session_uuid
from infra.settings import eventsourcing_env

THREADS = 8
SENDER = "14155550123@s.whatsapp.net"


def start_projector(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SESSIOND_DATABASE_URL": url,
        "SESSIOND_ADMIN_KEY": "bench-admin-key-0123456789abcdef",
        "SESSIOND_GATEWAY": "simulator",
        "SESSIOND_LOG_LEVEL": "warning",
        "SESSIOND_DATA_DIR": str(workdir),
    }
    sessiond = str(Path(sys.executable).with_name("sessiond"))
    log = (workdir / "projector.log").open("wb")
    return subprocess.Popen([sessiond, "projector"], env=env, stdout=log, stderr=log)


def counted(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum((doc::json->>'messages_received')::int), 0) FROM session_status"
        ).fetchone()
    return int(row[0]) if row else 0


def wait_for(check: Any, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("bench: timed out waiting for the views")
        time.sleep(0.01)


def ingest(
    app: SessionsApplication, sessions: list[UUID], messages: int, url: str, before: int
) -> tuple[float, float]:
    """Seconds until every callback returned, and until the status view counted them all."""
    events = RecordingGatewayEvents(app)
    now = datetime.now(UTC)

    def one(n: int) -> None:
        message = InboundMessage(
            whatsapp_id=f"3EB0{uuid4().hex[:16].upper()}",
            sender=SENDER,
            chat=SENDER,
            text=f"inbound message number {n}",
            sent_at=now,
        )
        if events.message_received(sessions[n % len(sessions)], message) is None:
            raise SystemExit("bench: a message was not recorded")

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(messages)))
    recorded = time.monotonic() - started
    wait_for(lambda: counted(url) >= before + messages)
    return recorded, time.monotonic() - started


def raw_saves(app: SessionsApplication, messages: int) -> float:
    """Seconds to insert `messages` encoded events, one per transaction, from THREADS threads."""
    per_thread = messages // THREADS
    now = datetime.now(UTC)
    batches = []
    for _ in range(THREADS):
        originator = uuid4()
        received: Any = Session.MessageReceived  # its fields are declared as annotations
        stored = [
            app.mapper.to_stored_event(
                received(
                    originator_id=originator,
                    originator_version=version,
                    timestamp=now,
                    message_id=new_message_id(),
                    whatsapp_id=f"3EB0{version:016X}",
                    sender=SENDER,
                    chat=SENDER,
                    text=f"inbound message number {version}",
                    push_name="",
                    sent_at=now,
                )
            )
            for version in range(1, per_thread + 1)
        ]
        batches.append(stored)

    def insert(batch: list[Any]) -> None:
        for event in batch:
            app.recorder.insert_events([event])

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(insert, batches))
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, rounds=3)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--duration", type=float, help="ignored (run_all passes it)")
    args = parser.parse_args(argv)
    workdir = Path(ROOT / "var" / "bench-ingestion")
    workdir.mkdir(parents=True, exist_ok=True)
    with fresh_database() as url, fresh_database() as baseline_url:
        app = SessionsApplication(env=eventsourcing_env(url, pool_size=THREADS))
        baseline_app = SessionsApplication(env=eventsourcing_env(baseline_url, pool_size=THREADS))
        projector = start_projector(url, workdir)
        try:
            sessions = []
            for n in range(args.sessions):
                created = app.create_session(f"Inbound {n}", {}, None, ADMIN_ACTOR)
                uuid = session_uuid(created.session_id)
                app.record_connected(uuid, f"1555{n:07d}:1@s.whatsapp.net", "Bench")
                sessions.append(uuid)
            wait_for(lambda: _table_ready(url))
            ingest(app, sessions, THREADS * 50, url, 0)  # warm up caches and connections
            total = THREADS * 50
            rows = []
            ingestion_rates, visible_rates, raw_rates = [], [], []
            for round_number in range(1, args.rounds + 1):
                recorded, visible = ingest(app, sessions, args.messages, url, total)
                total += args.messages
                raw = raw_saves(baseline_app, args.messages)
                ingestion_rates.append(args.messages / recorded)
                visible_rates.append(args.messages / visible)
                raw_rates.append(args.messages / raw)
                rows.append(
                    [
                        str(round_number),
                        f"{args.messages / raw:,.0f}",
                        f"{args.messages / recorded:,.0f}",
                        f"{args.messages / visible:,.0f}",
                        f"{ratio(args.messages / visible, args.messages / raw):.2f}",
                    ]
                )
        finally:
            projector.terminate()
            projector.wait(30)
            app.close()
            baseline_app.close()
    print(
        f"\n{args.messages:,} inbound messages per round over {args.sessions} connected "
        f"sessions, {THREADS} threads; baseline: the same number of encoded events inserted "
        "one per transaction"
    )
    print_table(
        ["round", "raw saves/s", "recorded/s", "visible in status/s", "visible / raw"], rows
    )
    result = {
        "messages": args.messages,
        "sessions": args.sessions,
        "raw_per_s": median(raw_rates),
        "recorded_per_s": median(ingestion_rates),
        "visible_per_s": median(visible_rates),
        "ratio": ratio(median(visible_rates), median(raw_rates)),
    }
    print(
        f"\nmedian: raw {result['raw_per_s']:,.0f}/s, recorded {result['recorded_per_s']:,.0f}/s,"
        f" visible {result['visible_per_s']:,.0f}/s, ratio visible/raw {result['ratio']:.2f}"
    )
    write_result(args.json_out, result)
    return 0


def _table_ready(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('session_status') IS NOT NULL").fetchone()
    return bool(row and row[0])


if __name__ == "__main__":
    sys.exit(main())
