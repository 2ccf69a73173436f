"""What the link reports is recorded even while other writers change the same session.

A connected or disconnected report is a fact about the link: dropping it because the API
recorded something else on the session at the same moment would leave the service saying
`connected` about a link that is down (or the reverse) until the next report, which may never
come. Found with a noisy neighbour stopping and starting its session while its link reported.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial

from application.errors import ConcurrentChange
from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR, session_uuid
from infra.settings import eventsourcing_env

JID = "491701234567:3@s.whatsapp.net"
REPORTS = 60


def reached(total: list[int], wanted: int) -> bool:
    return total[0] >= wanted


def report_while_written(
    api: SessionsApplication, worker: SessionsApplication, writers: int, pause: float
) -> None:
    """`writers` threads change the session through `api` (each waiting `pause` between two
    changes) while `worker` reports the link up and down; every report must be recorded, in
    order, and the API must have written the session between every two reports."""
    sid = api.create_session("Busy", {}, None, ADMIN_ACTOR).session_id
    uuid = session_uuid(sid)
    expires = datetime.now(UTC) + timedelta(minutes=1)
    assert worker.record_qr(uuid, "2@code", expires, 1, 6) is not None
    done = threading.Event()
    written = threading.Condition()
    total = [0]

    def write(n: int) -> None:
        while not done.is_set():
            try:  # an API command may lose the race: its caller is told to try again
                api.set_rate_limit(sid, 100 + n * 1000 + total[0] % 997, ADMIN_ACTOR)
            except ConcurrentChange:
                continue
            with written:
                total[0] += 1
                written.notify_all()
            time.sleep(pause)

    positions: list[int | None] = []
    with ThreadPoolExecutor(writers) as pool:
        running = [pool.submit(write, n) for n in range(writers)]
        try:
            for n in range(REPORTS):
                with written:  # the API writes the session between two reports
                    wanted = total[0] + 2
                    assert written.wait_for(partial(reached, total, wanted), timeout=30)
                if n % 2 == 0:
                    positions.append(worker.record_connected(uuid, JID, "Phone", "w1"))
                else:
                    positions.append(worker.record_disconnected(uuid, "connection_lost"))
        finally:
            done.set()
            for writer in running:
                writer.result()

    assert all(position is not None for position in positions), positions
    assert worker.load(uuid).status == "disconnected"  # the link's last word (REPORTS is even)
    names = [type(e).__name__ for e in worker.repository.event_store.get(uuid)]
    links = [name for name in names if name in ("Connected", "Disconnected")]
    assert links == ["Connected", "Disconnected"] * (REPORTS // 2)
    assert names.count("RateLimitSet") >= 2 * REPORTS


def test_link_reports_are_recorded_while_the_same_process_floods_the_session(
    database_url: str,
) -> None:
    """`sessiond serve`: the API and the worker share one application; 8 unthrottled
    writers on the session do not make the link's reports run out of tries."""
    app = SessionsApplication(env=eventsourcing_env(database_url, pool_size=8))
    try:
        report_while_written(app, app, writers=8, pause=0.0)
    finally:
        app.close()


def test_link_reports_are_recorded_while_another_process_writes_the_session(
    database_url: str,
) -> None:
    """Roles apart: the API process writes the session at 8 x 20 commands a second (the
    default rate limit allows 10), the worker's reports conflict with them and still land."""
    api = SessionsApplication(env=eventsourcing_env(database_url, pool_size=8))
    worker = SessionsApplication(env={**eventsourcing_env(database_url), "CREATE_TABLE": "n"})
    try:
        report_while_written(api, worker, writers=8, pause=0.05)
    finally:
        api.close()
        worker.close()
