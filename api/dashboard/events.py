"""The live event stream for a signed-in operator's browser: the API's `GET /events/stream`
behind the dashboard's sign-in, since a browser's `EventSource` cannot send ``x-api-key``."""

from __future__ import annotations

import time

from litestar import get
from litestar.di import NamedDependency

from api.context import Service
from api.controllers.streams import (
    RESUME,
    EventStreams,
    Resume,
    every_session_stream,
)
from api.dashboard.security import SKIP_SESSION, sign_in_left
from api.dashboard.web import DashboardController, DashRequest
from api.streaming import EventStreamResponse


class EventsController(DashboardController):
    dependencies = RESUME

    @get("/events/stream", opt={SKIP_SESSION: True})
    async def events(
        self,
        request: DashRequest,
        resume: NamedDependency[Resume],
        *,
        streams: Service[EventStreams],
    ) -> EventStreamResponse:
        """Every session's events, live, as `GET /events/stream` sends them; the stream ends
        (``signed-out``) when the operator's sign-in does."""
        until = time.monotonic() + await sign_in_left(request)
        return await every_session_stream(streams, request, resume, until)
