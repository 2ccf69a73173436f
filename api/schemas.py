"""Request and response bodies: msgspec Structs, camelCase on the wire, unknown fields refused."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, Self

import msgspec
from msgspec import UNSET, Meta, UnsetType

from domain.policy import MAX_PER_DAY, MAX_PER_HOUR, MAX_SEND_PAUSE
from domain.proxy import MAX_PROXY_URL_LENGTH
from domain.values import MAX_NAME_LENGTH, MAX_REQUESTS_PER_MINUTE, MAX_TEXT_LENGTH
from domain.webhook import EVENT_TYPES, WebhookEventType

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
#: Why a connected session is degraded: its keepalives fail, or nothing was heard for the
#: silence watchdog's period.
HealthReason = Annotated[
    Literal["keepalive_failing", "silent"],
    Meta(
        description=(
            "why the session is degraded: keepalive_failing (WhatsApp stopped answering its "
            "keepalives) or silent (connected, but nothing heard for SESSIOND_SILENCE_AFTER: "
            "the worker checks the link and recycles it if it does not answer)"
        )
    ),
]
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


SendPause = Annotated[float, Meta(ge=0, le=MAX_SEND_PAUSE)]
PerHour = Annotated[int, Meta(ge=1, le=MAX_PER_HOUR)]
PerDay = Annotated[int, Meta(ge=1, le=MAX_PER_DAY)]


class SendingIn(Body):
    """A session's own sending settings; a field left out follows the deployment's default
    (`SESSIOND_SEND_INTERVAL`, `…_SEND_JITTER`, `…_MESSAGES_PER_HOUR`, `…_MESSAGES_PER_DAY`,
    `…_SEND_TYPING`). `{}` goes back to the defaults for all of them."""

    interval_seconds: Annotated[
        SendPause | UnsetType,
        Meta(description="At least this many seconds between two messages"),
    ] = UNSET
    jitter_seconds: Annotated[
        SendPause | UnsetType,
        Meta(description="0 to this many seconds more, drawn at random for each gap"),
    ] = UNSET
    messages_per_hour: Annotated[
        PerHour | UnsetType | None,
        Meta(description="At most this many messages in any 60 minutes; null: no quota"),
    ] = UNSET
    messages_per_day: Annotated[
        PerDay | UnsetType | None,
        Meta(description="At most this many messages in any 24 hours; null: no quota"),
    ] = UNSET
    typing: Annotated[
        bool | UnsetType,
        Meta(description='Show "typing…" to the recipient before each message'),
    ] = UNSET

    def settings(self) -> dict[str, Any]:
        """The fields given, by their names in `domain.policy.SendingSettings`."""
        return {
            domain: value
            for wire, domain in SENDING_NAMES.items()
            if (value := getattr(self, wire)) is not UNSET
        }


#: `SendingIn`'s fields -> `domain.policy.SendingSettings`'s.
SENDING_NAMES = {
    "interval_seconds": "interval",
    "jitter_seconds": "jitter",
    "messages_per_hour": "per_hour",
    "messages_per_day": "per_day",
    "typing": "typing",
}


class SendingOut(Out):
    """How the session sends and where its quotas stand."""

    session_id: str
    interval_seconds: float
    jitter_seconds: float
    messages_per_hour: int | None
    messages_per_day: int | None
    typing: bool
    #: The fields the session set itself; the others follow the deployment's defaults.
    own: list[str]
    sent_last_hour: Annotated[
        int, Meta(description="Messages counted in the hour's window (by the minute)")
    ]
    sent_last_day: int
    remaining_hour: Annotated[int | None, Meta(description="null: no hour quota")]
    remaining_day: int | None
    queued: int
    next_send_at: Annotated[
        datetime | None,
        Meta(description="When the quotas let the queue's next message go; null: now"),
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
    sending: SendingIn | None = None


ScopeValue = Literal[
    "status:read",
    "messages:send",
    "messages:read",
    "session:control",
    "keys:manage",
    "webhooks:manage",
]
#: The longest time to live a key may be given (100 years); leave it out for no expiry.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600
SCOPES_DESCRIPTION = (
    "What the key may do; left out (or null): everything its session allows. A key with "
    "scopes can only create keys with scopes among its own."
)


class CreateKeyIn(Body):
    label: Label = "default"
    scopes: (
        Annotated[list[ScopeValue], Meta(min_length=1, description=SCOPES_DESCRIPTION)] | None
    ) = None
    expires_at: (
        Annotated[
            datetime,
            Meta(
                tz=True,
                description=(
                    "When the key stops working, with a UTC offset (in the future); left out "
                    "with `ttlSeconds` too: never. At most the creating key's own expiry"
                ),
            ),
        ]
        | None
    ) = None
    ttl_seconds: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_TTL_SECONDS,
                description="The key stops working this many seconds from now (or `expiresAt`)",
            ),
        ]
        | None
    ) = None


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
    restriction: RestrictionOut | None = None
    health_reason: HealthReason | None = None


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


class SilentIn(Body):
    #: Whether WhatsApp answers the silence watchdog's active check while the link is silent.
    answers_checks: bool = False


class KeyCreatedOut(Out):
    key_id: str
    key: str
    prefix: str
    label: str
    scopes: Annotated[list[ScopeValue] | None, Meta(description=SCOPES_DESCRIPTION)] = None
    expires_at: Annotated[datetime | None, Meta(description="null: never expires")] = None


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


RestrictionKind = Literal[
    "temporarily_banned", "logged_out", "device_unlinked", "stream_replaced", "client_outdated"
]


class RestrictionOut(Out):
    """WhatsApp restricts the session: its outbound queue is paused (nothing sent, nothing
    lost) until the restriction is lifted."""

    kind: Annotated[
        RestrictionKind,
        Meta(
            description=(
                "the reason that restricted it: temporarily_banned (resumes by itself at "
                "`until`), logged_out or device_unlinked (link it again: reconnect and scan), "
                "stream_replaced (close the other client, then reconnect), client_outdated "
                "(upgrade sessiond, then reconnect)"
            )
        ),
    ]
    until: Annotated[
        datetime | None,
        Meta(description="when a temporary ban ends; null: until someone acts"),
    ]
    detail: str | None
    since: datetime | None = None


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
    restriction: RestrictionOut | None = None
    health_reason: HealthReason | None = None
    #: When WhatsApp was last heard on the link (a message or receipt came in, keepalives
    #: recovered, the watchdog's check was answered, or a new connection was made).
    last_heard_at: datetime | None = None
    #: Since when the session is silent (health degraded, reason silent), if it is.
    silent_since: datetime | None = None


class KeyOut(Out):
    key_id: str
    prefix: str
    label: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    active: Annotated[bool, Meta(description="neither revoked nor past its expiry")]
    scopes: Annotated[list[ScopeValue] | None, Meta(description=SCOPES_DESCRIPTION)] = None
    expires_at: Annotated[datetime | None, Meta(description="null: never expires")] = None
    expired: Annotated[bool, Meta(description="past its expiry (401 everywhere)")] = False


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
    #: With ``scope-missing``: the scope the key lacks.
    required_scope: str | None = msgspec.field(default=None, name="requiredScope")


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
    # failed: rejected | send_failed | session_deleted | session_exported; queued while the
    # session is restricted: the restriction's kind (see `restriction`); queued while its
    # quotas hold it back: quota (see `next_attempt_at`)
    reason: str | None
    detail: str | None
    created_at: datetime  # queued, or received
    sent_at: datetime | None  # outbound: sent; inbound: when the sender sent it
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    updated_at: datetime
    #: A queued message of a restricted session: why it waits (the session's restriction).
    restriction: RestrictionOut | None = None
    #: A queued message its session's quotas hold back: when they let it go.
    next_attempt_at: datetime | None = None


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
    events: Annotated[list[WebhookEventType], Meta(min_length=1, max_length=len(EVENT_TYPES))]
    session_id: SessionId | None = None


class WebhookChangeIn(Body):
    url: WebhookUrl | None = None
    events: (
        Annotated[list[WebhookEventType], Meta(min_length=1, max_length=len(EVENT_TYPES))] | None
    ) = None
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


class AuditPublicKeyOut(Out):
    algorithm: Literal["Ed25519"]
    public_key: str  # base64 of the raw 32 bytes
    public_key_pem: str  # SubjectPublicKeyInfo, PEM


class AuditCheckpointOut(Out):
    position: int
    events: int
    hash: str  # hex
    signed_at: datetime


class AuditVerifyOut(Out, omit_defaults=True):
    verified: bool
    #: verified: the events checked, the position they reach, and where the check started
    events: int | None = None
    position: int | None = None
    verified_from: int | None = None
    last_checkpoint: AuditCheckpointOut | None = None
    #: not verified: the first broken position and what is wrong there
    broken_at: int | None = None
    problem: str | None = None
