"""Request and response bodies: msgspec Structs, camelCase on the wire, unknown fields refused."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Self

import msgspec
from msgspec import Meta

from domain.proxy import MAX_PROXY_URL_LENGTH
from domain.values import MAX_NAME_LENGTH, MAX_REQUESTS_PER_MINUTE, MAX_TEXT_LENGTH
from domain.webhook import WebhookEventType

SessionId = Annotated[
    str, Meta(pattern=r"^sess_[0-9a-f]{32}$", examples=["sess_6f1c0d6c2b3a4e5f8a9b0c1d2e3f4a5b"])
]
KeyId = Annotated[str, Meta(pattern=r"^key_[0-9a-f]{16}$", examples=["key_0123456789abcdef"])]
RequestsPerMinute = Annotated[int, Meta(ge=1, le=MAX_REQUESTS_PER_MINUTE)]
Label = Annotated[str, Meta(min_length=1, max_length=64)]
LABEL_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
LabelPart = Annotated[str, Meta(pattern=f"^{LABEL_PART}$")]
LABEL_FILTER_PATTERN = f"^{LABEL_PART}:{LABEL_PART}$"
LabelFilter = Annotated[str, Meta(pattern=LABEL_FILTER_PATTERN)]
StatusValue = Literal["connecting", "connected", "disconnected", "expired"]
Health = Literal["healthy", "degraded", "starting", "unhealthy", "stopped"]
#: An uptime figure (see `projections.uptime`): a percentage, null with no time in service.
Percentage = Annotated[float, Meta(ge=0, le=100)]
UPTIME = (
    "Uptime as a percentage from 0 to 100, rounded to two decimals: the share of the time in "
    "service (meant to be running, from the session's first link on; stopped time counts "
    "neither way) during which the session was connected; null with no time in service"
)


class Body(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """Base of every request body."""


class Out(msgspec.Struct, rename="camel"):
    """Base of every response body."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any], **values: Any) -> Self:
        """The answer made of a stored row whose keys are named as its fields, but for the
        fields given in `values`."""
        fields = {name: row[name] for name in cls.__struct_fields__ if name not in values}
        return cls(**fields, **values)

    @classmethod
    def of(cls, source: object, **values: Any) -> Self:
        """The answer made of a view's row whose attributes are named as its fields, but for
        the fields given in `values`."""
        fields = {
            name: getattr(source, name) for name in cls.__struct_fields__ if name not in values
        }
        return cls(**fields, **values)


class RateLimitIn(Body):
    requests_per_minute: RequestsPerMinute | None


ProxyUrl = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_PROXY_URL_LENGTH,
        description=(
            "socks5://, http:// or https://, then optional user:password@, a host and a port; "
            "the password is never shown again (answers show `user:***@`)"
        ),
        examples=["socks5://user:password@proxy.example.com:1080"],
    ),
]


class ProxyIn(Body):
    url: ProxyUrl


class ProxyOut(Out):
    session_id: str
    url: Annotated[
        str | None,
        Meta(
            description="The proxy with its password masked (socks5://user:***@host:port); "
            "null: WhatsApp is dialled directly"
        ),
    ]


class CreateSessionIn(Body):
    name: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            description="Trimmed of surrounding whitespace; then printable characters only",
        ),
    ]
    labels: Annotated[dict[LabelPart, LabelPart], Meta(max_length=16)] = {}
    rate_limit: RateLimitIn | None = None
    proxy: ProxyIn | None = None


class CreateKeyIn(Body):
    label: Label = "default"


class RateLimitOut(Out):
    requests_per_minute: int
    is_default: bool


class QrOut(Out):
    session_id: str
    code: str
    expires_at: datetime
    attempt: int
    max_attempts: int


class QrSummaryOut(Out):
    expires_at: datetime
    attempt: int
    max_attempts: int


class SessionOut(Out):
    session_id: str
    name: str
    labels: dict[str, str]
    status: StatusValue
    reason: str | None
    detail: str | None
    retry_attempt: int
    next_retry_at: datetime | None
    stopped: bool
    health: Health
    created_at: datetime
    updated_at: datetime
    connected_at: datetime | None
    phone_jid: str | None
    push_name: str | None
    qr: QrSummaryOut | None
    rate_limit: RateLimitOut


Phone = Annotated[
    str,
    Meta(
        min_length=7,
        max_length=32,
        pattern=r"^\+?[1-9][0-9 ().-]{5,30}$",
        description=(
            "The phone's number in international form: + and country code, then digits "
            "(spaces, dots, dashes and brackets are ignored)"
        ),
        examples=["+14155550123"],
    ),
]


class PairCodeIn(Body):
    phone: Phone


class PairCodeOut(Out):
    session_id: str
    phone: str
    code: str


class BanIn(Body):
    seconds: Annotated[int, Meta(ge=1, le=86_400)] = 60


class KeepAliveIn(Body):
    healthy: bool


class KeyCreatedOut(Out):
    key_id: str
    key: str
    prefix: str
    label: str


class CreatedSessionOut(Out):
    session_id: str
    name: str
    labels: dict[str, str]
    status: StatusValue
    rate_limit: RateLimitOut
    api_key: KeyCreatedOut
    proxy: Annotated[
        str | None,
        Meta(description="The session's proxy, its password masked; null: none"),
    ] = None


class SessionListOut(Out):
    items: list[SessionOut]
    count: int


class MetricsOut(Out):
    messages_sent: int
    messages_received: int
    uptime: Annotated[
        Percentage | None,
        Meta(description=UPTIME + ", over the current UTC day and the 29 days before it"),
    ]
    messages_delivered: int
    messages_read: int
    messages_failed: int
    queue_depth: int  # outbound messages waiting to be sent


class StatusOut(Out):
    session_id: str
    status: StatusValue
    connected_at: datetime | None
    health: Health
    metrics: MetricsOut
    reason: str | None
    detail: str | None
    retry_attempt: int
    next_retry_at: datetime | None
    qr_expires_at: datetime | None
    last_activity_at: datetime | None
    updated_at: datetime


class KeyOut(Out):
    key_id: str
    prefix: str
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    active: bool


class KeyListOut(Out):
    items: list[KeyOut]
    count: int


class HealthOut(Out):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
    #: Things an operator should know that do not make the server unready.
    warnings: list[str] = []


class ProblemOut(msgspec.Struct):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str


class EventOut(Out):
    """One recorded event: what happened, when, in which version of the session, with its
    data (API key hashes, QR codes and message text redacted)."""

    session_id: str | None  # null for an event of a webhook endpoint (see webhookId)
    version: int
    type: str
    timestamp: datetime
    data: dict[str, Any]
    position: int | None = None
    webhook_id: str | None = None


class EventPageOut(Out):
    items: list[EventOut]
    next: int | None  # pass as `after` for the next page; null at the end


class UptimeBucketOut(Out):
    start: datetime
    end: datetime
    running_seconds: Annotated[
        float, Meta(description="Seconds in service: meant to run, from the first link on")
    ]
    connected_seconds: float
    uptime: Annotated[Percentage | None, Meta(description=UPTIME + ", over the bucket")]


class UptimeSeriesOut(Out):
    session_id: str
    start: datetime
    end: datetime
    bucket: Literal["hour", "day"]
    uptime: Annotated[Percentage | None, Meta(description=UPTIME + ", over the whole window")]
    items: list[UptimeBucketOut]


Recipient = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        description="A phone number in international format, or a user or group JID",
        examples=["+14155550123", "14155550123@s.whatsapp.net"],
    ),
]
MessageText = Annotated[str, Meta(min_length=1, max_length=MAX_TEXT_LENGTH)]
MessageStatusValue = Literal["queued", "sent", "delivered", "read", "failed", "received"]
Direction = Literal["outbound", "inbound"]
MessageId = Annotated[str, Meta(pattern=r"^msg_[0-9a-f]{32}$")]


class SendMessageIn(Body):
    to: Recipient
    text: MessageText


class MessageOut(Out):
    message_id: str
    session_id: str
    direction: Direction
    status: MessageStatusValue
    text: str | None  # null only if its event could not be read
    to: str | None  # outbound
    sender: str | None  # inbound
    chat: str | None  # inbound: the sender, or a group
    push_name: str | None  # inbound
    whatsapp_id: str | None
    idempotency_key: str | None
    reason: str | None  # failed: rejected | send_failed | session_deleted
    detail: str | None
    created_at: datetime  # queued, or received
    sent_at: datetime | None  # outbound: sent; inbound: when the sender sent it
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    updated_at: datetime


class MessagePageOut(Out):
    items: list[MessageOut]
    next: int | None  # pass as `before` for the next (older) page; null at the end


class InboundIn(Body):
    sender: Recipient
    text: MessageText


class AckIn(Body):
    message_id: MessageId
    status: Literal["delivered", "read"]


WebhookUrl = Annotated[
    str, Meta(min_length=1, max_length=2048, examples=["https://example.com/hooks/whatsapp"])
]


class WebhookIn(Body):
    url: WebhookUrl
    events: Annotated[list[WebhookEventType], Meta(min_length=1, max_length=12)]
    session_id: SessionId | None = None


class WebhookChangeIn(Body):
    url: WebhookUrl | None = None
    events: Annotated[list[WebhookEventType], Meta(min_length=1, max_length=12)] | None = None
    enabled: bool | None = None


class WebhookOut(Out):
    webhook_id: str
    url: str
    events: list[str]
    session_id: str | None  # null: every session's events (an admin's endpoint)
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None  # the first failure since the last success
    created_at: datetime
    updated_at: datetime


class WebhookCreatedOut(WebhookOut):
    secret: str  # shown only now: verify signatures with it (Standard Webhooks)


class WebhookListOut(Out):
    items: list[WebhookOut]
    count: int


class RotateSecretIn(Body):
    grace_seconds: Annotated[int, Meta(ge=0, le=7 * 86_400)] = 86_400


class RotatedSecretOut(Out):
    webhook_id: str
    secret: str
    previous_secret_valid_until: datetime


class AttemptOut(Out):
    attempt: int
    at: datetime
    status_code: int | None
    duration_ms: float
    error: str | None
    response: str | None  # the start of the answer (1 KB at most)


class DeliveryOut(Out):
    delivery_id: str
    webhook_id: str
    event_id: str  # the webhook-id header: the same on every try and replay
    event_type: str
    session_id: str
    status: Literal["pending", "delivered", "dead", "cancelled"]
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None
    replay: bool
    attempt_log: list[AttemptOut]

    @classmethod
    def from_row(cls, row: Mapping[str, Any], **values: Any) -> Self:
        """The delivery, its next try shown while it is pending only."""
        return super().from_row(
            row,
            next_attempt_at=row["next_attempt_at"] if row["status"] == "pending" else None,
            attempt_log=[AttemptOut.from_row(attempt) for attempt in row["attempt_log"]],
            **values,
        )


class DeliveryPageOut(Out):
    items: list[DeliveryOut]
    next: str | None  # pass as `before` for the next (older) page


class ReplayIn(Body):
    from_: Annotated[
        datetime, Meta(tz=True, description="start of the window (included), with a UTC offset")
    ] = msgspec.field(name="from")
    to: Annotated[
        datetime, Meta(tz=True, description="end of the window (excluded), with a UTC offset")
    ]
    after: (
        Annotated[
            str,
            Meta(max_length=32, description="the `next` of the previous call, to go on"),
        ]
        | None
    ) = None


class ReplayOut(Out):
    webhook_id: str
    enqueued: int
    #: Where the window goes on (send it as `after`), or null when it is done.
    next: str | None = None
