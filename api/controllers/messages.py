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
from application.phones import InvalidPhone, normalize_recipient
from application.sessions import QueuedMessageResult, SessionsApplication
from domain.values import session_uuid
from projections.messages import OUTBOUND, MessagePage, MessageRow, MessagesView

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
        idempotency_key: IdempotencyKey = None,
    ) -> Response[MessageOut]:
        """Queue a text for sending. It goes out in order once the session is connected
        (at once if it is), paced; follow its status with GET. While the session is
        disconnected, stopped or pairing, it waits in the queue. Once recorded, the answer is
        202 even if the views lag (then a GET may briefly not find it)."""
        try:
            to = normalize_recipient(data.to)
        except InvalidPhone as error:
            raise ProblemError(422, "invalid-recipient", str(error)) from None
        session_id = access.session.session_id
        result = await call(
            sessions.send_message, session_id, to, data.text, idempotency_key, access.actor
        )
        row = await self._row_once_visible(writes, messages, result)
        if row is not None:
            return self._answer(row, data.text, replayed=result.replayed)
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
        return self._answer(queued, data.text, replayed=result.replayed)

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
    def _answer(row: MessageRow, text: str, *, replayed: bool) -> Response[MessageOut]:
        headers = {"Location": f"/sessions/{row.session_id}/messages/{row.message_id}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(message_out(row, text), status_code=202, headers=headers)

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
    ) -> MessageOut:
        """One message of the session, with its text and where it is."""
        row = await call(messages.get_message, message_id)
        if row is None or row.session_id != access.session.session_id:
            raise ProblemError(404, "message-not-found", f"the session has no message {message_id}")
        texts = await call(message_texts, session_uuid(row.session_id), [row.version])
        return message_out(row, texts.get(row.version))

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
        items = [message_out(row, texts.get(row.version)) for row in rows]
        return MessagePageOut(items=items, next=rows[-1].position if len(rows) == limit else None)
