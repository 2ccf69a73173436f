"""Messages of a session: send a text (queued, then sent in order while connected), read one,
list them."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import HeaderParameter, JSONBody, QueryParameter

from api.auth import API_KEY_SECURITY, SessionAccess, provide_access
from api.context import MessageTexts, Service
from api.controllers.common import problems
from api.controllers.sending import sending_state
from api.presenters import message_out
from api.problems import ProblemError
from api.schemas import (
    Direction,
    MessageId,
    MessageOut,
    MessagePageOut,
    MessageStatusValue,
    SendMessageIn,
)
from api.writes import Writes, call
from application.errors import SessionNotFound
from application.phones import InvalidPhone, normalize_recipient
from application.sessions import QueuedMessageResult, SendingState, SessionsApplication
from domain.values import MessageStatus, session_uuid
from projections.messages import OUTBOUND, MessagePage, MessageRow, MessagesView
from projections.readmodels import ReadModels
from projections.status import SessionRow

log = logging.getLogger(__name__)
SESSION = "/sessions/{session_id:str}"
MAX_PAGE = 200
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",
        description=(
            "Makes a retried request safe: the same key (for the same text and recipient) "
            "answers the message the first request queued instead of queueing another"
        ),
    ),
]


def quota_headers(state: SendingState) -> dict[str, str]:
    """``X-Messages-Limit-Hour``/``-Day`` (the session's quotas) and
    ``X-Messages-Remaining-Hour``/``-Day``: how many more messages queued now would still go
    within the window (the quota, less the messages sent in it, less those waiting in the
    queue), never below 0; none for a quota the session does not have."""
    headers: dict[str, str] = {}
    settings, quota = state.settings, state.quota
    for name, limit, remaining in (
        ("Hour", settings.per_hour, quota.remaining_hour),
        ("Day", settings.per_day, quota.remaining_day),
    ):
        if limit is not None and remaining is not None:
            headers[f"X-Messages-Limit-{name}"] = str(limit)
            headers[f"X-Messages-Remaining-{name}"] = str(max(0, remaining - state.queued))
    return headers


async def _holds(
    sessions: SessionsApplication, session_id: str, rows: list[MessageRow]
) -> dict[str, datetime]:
    """When the session's quotas let each of its queued `rows` go (only those held back),
    from its recorded sends and queue; nothing read when none of `rows` is queued."""
    if not any(row.status == MessageStatus.QUEUED for row in rows):
        return {}
    try:
        state = await call(sending_state, sessions, session_id)
    except SessionNotFound:
        return {}
    return state.holds


class MessagesController(Controller):
    tags = ["messages"]  # noqa: RUF012 - Litestar reads it as a class attribute
    security = API_KEY_SECURITY
    dependencies = {"access": Provide(provide_access)}  # noqa: RUF012

    @post(
        SESSION + "/messages",
        status_code=202,
        responses=problems(400, 401, 404, 409, 413, 422, 429, 503),
        operation_id="sendMessage",
    )
    async def send_message(
        self,
        access: NamedDependency[SessionAccess],
        data: JSONBody[SendMessageIn],
        *,
        sessions: Service[SessionsApplication],
        writes: Service[Writes],
        messages: Service[MessagesView],
        read_models: Service[ReadModels],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[MessageOut]:
        """Queue a text for sending. It goes out in order once the session is connected
        (at once if it is), paced; follow its status with GET. While the session is
        disconnected, stopped or pairing, it waits in the queue; over the session's hour or
        day quota it waits too, and says when it goes (`nextAttemptAt`). For each quota the
        session has, `X-Messages-Limit-Hour`/`-Day` give it and `X-Messages-Remaining-Hour`/
        `-Day` how many more queued now would go within its window. Once recorded, the
        answer is 202 even if the views lag (then a GET may briefly not find it)."""
        try:
            to = normalize_recipient(data.to)
        except InvalidPhone as error:
            raise ProblemError(422, "invalid-recipient", str(error)) from None
        session_id = access.session.session_id
        result = await call(
            sessions.send_message, session_id, to, data.text, idempotency_key, access.actor
        )
        row = await self._row_once_visible(writes, messages, result)
        session = read_models.session(session_id) or access.session
        if row is not None:
            return self._answer(row, data.text, session, result)
        # Recorded, but the messages view has not caught up in time: the answer is built from
        # what was recorded, so that the client has the message id and does not send again.
        now = datetime.now(UTC)
        queued = MessageRow(
            message_id=result.message_id,
            session_id=session_id,
            direction=OUTBOUND,
            status=result.status,
            to=to,
            idempotency_key=idempotency_key,
            created_at=result.queued_at or now,
            updated_at=result.queued_at or now,
            version=0,
            position=result.position or 0,
        )
        return self._answer(queued, data.text, session, result)

    @staticmethod
    async def _row_once_visible(
        writes: Writes, messages: MessagesView, result: QueuedMessageResult
    ) -> MessageRow | None:
        """The message's row once the views have it (read-your-writes), or None if they do
        not catch up within the write wait."""
        position = result.position
        if position is None:  # replayed from the session: its row may still be on its way
            position = await call(writes.app.recorder.max_notification_id) or 0
        try:
            await writes.settle(position)
        except ProblemError:
            return None
        if not await writes.reached(
            lambda: messages.max_tracking_id(writes.app.name) or 0, position
        ):
            return None
        return await call(messages.get_message, result.message_id)

    @staticmethod
    def _answer(
        row: MessageRow, text: str, session: SessionRow, result: QueuedMessageResult
    ) -> Response[MessageOut]:
        headers = {"Location": f"/sessions/{row.session_id}/messages/{row.message_id}"}
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        sending = result.sending
        holds = sending.holds if sending is not None else None
        if sending is not None:
            headers.update(quota_headers(sending))
        out = message_out(row, text, session, holds)
        return Response(out, status_code=202, headers=headers)

    @get(
        SESSION + "/messages/{message_id:str}",
        responses=problems(400, 401, 404, 429, 503),
        operation_id="getMessage",
    )
    async def get_message(
        self,
        access: NamedDependency[SessionAccess],
        message_id: MessageId,
        *,
        messages: Service[MessagesView],
        message_texts: Service[MessageTexts],
        sessions: Service[SessionsApplication],
    ) -> MessageOut:
        """One message of the session, with its text and where it is."""
        row = await call(messages.get_message, message_id)
        if row is None or row.session_id != access.session.session_id:
            raise ProblemError(404, "message-not-found", f"the session has no message {message_id}")
        texts = await call(message_texts, session_uuid(row.session_id), [row.version])
        holds = await _holds(sessions, row.session_id, [row])
        return message_out(row, texts.get(row.version), access.session, holds)

    @get(
        SESSION + "/messages",
        responses=problems(400, 401, 404, 429, 503),
        operation_id="listMessages",
    )
    async def list_messages(
        self,
        access: NamedDependency[SessionAccess],
        *,
        messages: Service[MessagesView],
        message_texts: Service[MessageTexts],
        sessions: Service[SessionsApplication],
        direction: Annotated[
            Direction | None, QueryParameter(description="Only outbound or only inbound")
        ] = None,
        status: Annotated[
            MessageStatusValue | None, QueryParameter(description="Only messages in this status")
        ] = None,
        before: Annotated[
            int | None,
            QueryParameter(ge=1, description="Only messages older than this (a page's `next`)"),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)] = 50,
    ) -> MessagePageOut:
        """The session's messages, newest first, a page at a time."""
        session_id = access.session.session_id
        rows = await call(
            messages.list_messages,
            MessagePage(session_id, direction=direction, status=status, before=before, limit=limit),
        )
        texts = await call(message_texts, session_uuid(session_id), [row.version for row in rows])
        holds = await _holds(sessions, session_id, rows)
        items = [message_out(row, texts.get(row.version), access.session, holds) for row in rows]
        return MessagePageOut(items=items, next=rows[-1].position if len(rows) == limit else None)
