"""`GatewayCalls` on PostgreSQL: a request row that the worker holding the session claims,
runs and answers (``sessiond_gateway_requests``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

from eventsourcing.postgres import PostgresDatastore
from psycopg.types.json import Jsonb

from api.context import GatewayCalls
from application.errors import (
    ApplicationError,
    GatewayError,
    GatewayFailed,
    GatewayUnavailable,
    NotConnected,
    NotPairing,
    SimulatorError,
)
from infra.postgres.connect import fetch_one
from infra.postgres.gateway import REQUESTS_CHANNEL

_ERRORS: dict[str, type[ApplicationError]] = {
    error.code: error
    for error in (
        GatewayError,
        GatewayFailed,
        NotConnected,
        NotPairing,
        SimulatorError,
        ApplicationError,
    )
}


class PostgresGatewayCalls(GatewayCalls):
    def __init__(self, datastore: PostgresDatastore, timeout: float = 5.0) -> None:
        self.datastore = datastore
        self.timeout = timeout

    async def call(self, session_id: UUID, action: str, args: dict[str, Any]) -> dict[str, Any]:
        request_id = await asyncio.to_thread(self._insert, session_id, action, args)
        try:
            return await self._wait(request_id)
        except asyncio.CancelledError:
            # The caller went away: withdraw the request unless a worker already has it.
            await asyncio.shield(asyncio.to_thread(self._cancel, request_id))
            raise

    async def _wait(self, request_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            done = await asyncio.to_thread(self._answer, request_id)
            if done is not None:
                return self._result(done)
        if await asyncio.to_thread(self._cancel, request_id):
            raise GatewayUnavailable(
                f"no gateway worker answered within {self.timeout:g} s (none is running the "
                "session yet, or it is starting); try again"
            )
        for _ in range(40):  # a worker has it: give it a moment to answer
            done = await asyncio.to_thread(self._answer, request_id)
            if done is not None:
                return self._result(done)
            await asyncio.sleep(0.05)
        raise GatewayUnavailable("the gateway worker took too long to answer; try again")

    @staticmethod
    def _result(done: dict[str, Any]) -> dict[str, Any]:
        if done["error_code"] is not None:
            error = _ERRORS.get(done["error_code"], ApplicationError)
            raised = error(done["error_detail"] or done["error_code"])
            raised.code = done["error_code"]
            raise raised
        result: dict[str, Any] = done["result"] or {}
        return result

    def _insert(self, session_id: UUID, action: str, args: dict[str, Any]) -> int:
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "INSERT INTO sessiond_gateway_requests (session_id, action, args) "
                "VALUES (%s, %s, %s) RETURNING id",
                (session_id, action, Jsonb(args)),
            )
            row = curs.fetchone()
            curs.execute("SELECT pg_notify(%s, '')", (REQUESTS_CHANNEL,))
        assert row is not None
        return int(row["id"])

    def _answer(self, request_id: int) -> dict[str, Any] | None:
        row = fetch_one(
            self.datastore,
            "SELECT result, error_code, error_detail FROM sessiond_gateway_requests "
            "WHERE id = %s AND done_at IS NOT NULL",
            (request_id,),
        )
        return None if row is None else dict(row)

    def _cancel(self, request_id: int) -> bool:
        """Withdraw an unanswered request, so that no worker runs it late."""
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(
                "DELETE FROM sessiond_gateway_requests WHERE id = %s AND done_at IS NULL "
                "AND claimed_by IS NULL",
                (request_id,),
            )
            return curs.rowcount == 1
