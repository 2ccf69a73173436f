"""Two processes write the same sessions: stale cached copies never lose or break a command."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from application.sessions import SessionsApplication
from domain.values import ADMIN_ACTOR, session_uuid
from infra.settings import eventsourcing_env


def test_commands_on_sessions_another_process_changed_are_all_recorded(database_url: str) -> None:
    api = SessionsApplication(env=eventsourcing_env(database_url, pool_size=2))
    worker = SessionsApplication(env={**eventsourcing_env(database_url), "CREATE_TABLE": "n"})
    try:
        ids = [api.create_session(f"S{n}", {}, None, ADMIN_ACTOR).session_id for n in range(40)]
        # The worker records a QR code on each: the API process's cached copies go stale.
        expires = datetime.now(UTC) + timedelta(minutes=1)
        for session_id in ids:
            assert worker.record_qr(session_uuid(session_id), "2@code", expires, 1, 6) is not None

        with ThreadPoolExecutor(8) as pool:
            positions = list(pool.map(lambda sid: api.stop(sid, ADMIN_ACTOR), ids))

        assert all(position is not None for position in positions)
        assert all(worker.load(session_id).is_stopped for session_id in ids)
        assert all(worker.load(session_id).version == 4 for session_id in ids)
    finally:
        api.close()
        worker.close()
