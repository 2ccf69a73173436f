"""Typed settings read once from ``SESSIOND_*`` environment variables.

A wrong setting raises `SettingsError` with one clear line; the CLI prints it and exits.
"""

from __future__ import annotations

import binascii
import ipaddress
import os
from base64 import b64decode
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from psycopg.conninfo import conninfo_to_dict

from domain.policy import MAX_PER_DAY, MAX_PER_HOUR, SendingSettings


class SettingsError(Exception):
    """A setting is missing or malformed."""


GATEWAYS = ("neonize", "simulator")
#: How much longer than SESSIOND_STALE_AFTER an API process that stopped refreshing is waited
#: for by a revocation (see `infra.postgres.viewcache`).
TRUST_MARGIN_SECONDS = 1.0


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str | None
    admin_key: str | None
    gateway: str
    redis_url: str | None
    default_requests_per_minute: int
    qr_first_timeout: float
    qr_next_timeout: float
    qr_max_codes: int
    simulator_phone_delay: float
    lease_ttl: float
    worker_tick: float
    restore_batch: int
    move_batch: int
    retry_base: float
    retry_cap: float
    gateway_call_timeout: float
    write_wait_timeout: float
    poll_interval: float
    stale_after: float
    max_body_bytes: int
    log_level: str
    send_interval: float = 1.0
    #: Seconds (0 to this) added at random to each gap between two messages of a session.
    send_jitter: float = 0.0
    #: Messages a session sends in any 60 minutes / 24 hours at most (None: no quota).
    messages_per_hour: int | None = None
    messages_per_day: int | None = None
    #: Show "typing…" to the recipient before each message.
    send_typing: bool = False
    #: Seconds without a word from WhatsApp after which a connected session is silent
    #: (0: the watchdog is off), and the longest wait for the answer to its active check.
    silence_after: float = 1800.0
    silence_check_timeout: float = 20.0
    #: Seconds between two evaluations of the alert rules (in the worker role).
    alerts_interval: float = 30.0
    cipher_key: str | None = None
    webhooks_allow_private: bool = False
    webhooks_private_only: bool = False
    webhook_retry_scale: float = 1.0
    webhook_concurrency: int = 64
    webhook_claim_hold: float = 60.0
    webhook_timeout: float = 10.0
    dashboard_secret: str | None = None
    dashboard_secure_cookie: bool = False
    device_store_connections: int = 4
    pgbouncer: str | None = None
    auth_failure_limit: int = 10
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_keys_per_session: int = 50
    max_webhooks_per_session: int = 10
    expensive_readers: int = 2
    expensive_reads_per_session: int = 1
    #: How much lower the reader processes' CPU priority is than their API process's (nice).
    reader_niceness: int = 10
    #: How much lower the CPU priority (nice) of `sessiond worker` and `sessiond projector`
    #: processes is than the API's: on a node whose cores are all busy (a reconnect storm),
    #: the API's reads are served first and the background work takes the rest.
    background_niceness: int = 0
    #: Seconds an expensive read beyond its session's cap is held before its 429 is answered.
    expensive_refusal_pause: float = 0.25
    log_format: str = "text"
    replay_max_events: int = 1000
    webhook_max_share: float = 0.25
    #: Seconds between the heartbeats of an idle event stream.
    stream_heartbeat: float = 15.0
    #: Events of the log each API process keeps for its event streams (the window).
    stream_buffer: int = 5000
    #: Event streams one session may hold open at once in one API process.
    max_streams_per_session: int = 10
    #: Where the session-bound connections go (LISTEN, advisory locks, a worker's identity)
    #: when SESSIOND_DATABASE_URL is a pooler in transaction mode (PgBouncer).
    direct_database_url: str | None = None
    #: The most connections of a process's pool (None: its roles' budget, `infra.bootstrap`).
    pool_max: int | None = None
    #: The Ed25519 private key (base64 of its 32 bytes) that signs the audit checkpoints
    #: (None: generated once, kept in the database, shown once).
    audit_signing_key: str | None = None
    #: A checkpoint once this many events are unsigned, and at least every so many seconds.
    audit_checkpoint_events: int = 1000
    audit_checkpoint_interval: float = 3600.0

    def sending_defaults(self) -> SendingSettings:
        """How sessions send unless they set their own (``PUT /sessions/{id}/sending``)."""
        return SendingSettings(
            interval=self.send_interval,
            jitter=self.send_jitter,
            per_hour=self.messages_per_hour,
            per_day=self.messages_per_day,
            typing=self.send_typing,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        private_targets = reader.choice(
            "WEBHOOKS_ALLOW_PRIVATE", "false", ("true", "false", "only")
        )
        readers = reader.integer("EXPENSIVE_READERS", 2, 1, 64)
        settings = cls(
            data_dir=Path(reader.text("DATA_DIR", "./var")),
            database_url=reader.optional("DATABASE_URL"),
            admin_key=reader.optional("ADMIN_KEY"),
            gateway=reader.choice("GATEWAY", "neonize", GATEWAYS),
            redis_url=reader.optional("REDIS_URL"),
            default_requests_per_minute=reader.integer("DEFAULT_RATE_LIMIT", 600, 1, 100_000),
            qr_first_timeout=reader.number("QR_FIRST_TIMEOUT", 60.0, 0.05, 600.0),
            qr_next_timeout=reader.number("QR_NEXT_TIMEOUT", 20.0, 0.05, 600.0),
            qr_max_codes=reader.integer("QR_MAX_CODES", 6, 1, 100),
            simulator_phone_delay=reader.number("SIMULATOR_PHONE_DELAY", 0.0, 0.0, 600.0),
            lease_ttl=reader.number("LEASE_TTL", 30.0, 1.0, 3600.0),
            worker_tick=reader.number("WORKER_TICK", 1.0, 0.05, 60.0),
            restore_batch=reader.integer("RESTORE_BATCH", 50, 1, 100_000),
            move_batch=reader.integer("MOVE_BATCH", 10, 1, 100_000),
            retry_base=reader.number("RETRY_BASE", 2.0, 0.01, 3600.0),
            retry_cap=reader.number("RETRY_CAP", 300.0, 0.1, 86_400.0),
            gateway_call_timeout=reader.number("GATEWAY_CALL_TIMEOUT", 5.0, 0.2, 120.0),
            write_wait_timeout=reader.number("WRITE_WAIT_TIMEOUT", 5.0, 0.1, 120.0),
            poll_interval=reader.number("POLL_INTERVAL", 1.0, 0.05, 60.0),
            stale_after=reader.number("STALE_AFTER", 3.0, 0.5, 60.0),
            max_body_bytes=reader.integer("MAX_BODY_BYTES", 65_536, 1_024, 16_777_216),
            log_level=reader.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=reader.choice("LOG_FORMAT", "text", ("text", "json")),
            send_interval=reader.number("SEND_INTERVAL", 1.0, 0.0, 60.0),
            send_jitter=reader.number("SEND_JITTER", 0.0, 0.0, 3600.0),
            messages_per_hour=reader.optional_integer("MESSAGES_PER_HOUR", 1, MAX_PER_HOUR),
            messages_per_day=reader.optional_integer("MESSAGES_PER_DAY", 1, MAX_PER_DAY),
            send_typing=reader.choice("SEND_TYPING", "false", ("true", "false")) == "true",
            silence_after=reader.number("SILENCE_AFTER", 1800.0, 0.0, 2_592_000.0),
            silence_check_timeout=reader.number("SILENCE_CHECK_TIMEOUT", 20.0, 0.5, 120.0),
            alerts_interval=reader.number("ALERTS_INTERVAL", 30.0, 0.1, 3600.0),
            cipher_key=reader.optional("CIPHER_KEY"),
            webhooks_allow_private=private_targets in ("true", "only"),
            webhooks_private_only=private_targets == "only",
            webhook_retry_scale=reader.number("WEBHOOK_RETRY_SCALE", 1.0, 0.0001, 100.0),
            webhook_concurrency=reader.integer("WEBHOOK_CONCURRENCY", 64, 1, 1000),
            webhook_claim_hold=reader.number("WEBHOOK_CLAIM_HOLD", 60.0, 0.5, 3600.0),
            webhook_timeout=reader.number("WEBHOOK_TIMEOUT", 10.0, 0.1, 120.0),
            dashboard_secret=reader.optional("DASHBOARD_SECRET"),
            dashboard_secure_cookie=reader.choice(
                "DASHBOARD_SECURE_COOKIE", "false", ("true", "false")
            )
            == "true",
            device_store_connections=reader.integer("DEVICE_STORE_CONNECTIONS", 4, 1, 100),
            pgbouncer=reader.optional("PGBOUNCER"),
            auth_failure_limit=reader.integer("AUTH_FAILURE_LIMIT", 10, 1, 1_000_000),
            trusted_proxies=networks("TRUSTED_PROXIES", reader.optional("TRUSTED_PROXIES")),
            max_keys_per_session=reader.integer("MAX_KEYS_PER_SESSION", 50, 1, 100_000),
            max_webhooks_per_session=reader.integer("MAX_WEBHOOKS_PER_SESSION", 10, 1, 10_000),
            expensive_readers=readers,
            # By default one session holds at most half the reader processes (and so half
            # the CPU they may take): the other half stays for everyone else's reads.
            expensive_reads_per_session=reader.integer(
                "EXPENSIVE_READS_PER_SESSION", max(1, readers // 2), 1, 64
            ),
            reader_niceness=reader.integer("READER_NICENESS", 10, 0, 19),
            background_niceness=reader.integer("BACKGROUND_NICENESS", 0, 0, 19),
            expensive_refusal_pause=reader.number("EXPENSIVE_REFUSAL_PAUSE", 0.25, 0.0, 1.0),
            replay_max_events=reader.integer("REPLAY_MAX_EVENTS", 1000, 1, 100_000),
            webhook_max_share=reader.number("WEBHOOK_MAX_SHARE", 0.25, 0.01, 1.0),
            stream_heartbeat=reader.number("STREAM_HEARTBEAT", 15.0, 0.05, 3600.0),
            stream_buffer=reader.integer("STREAM_BUFFER", 5000, 10, 1_000_000),
            max_streams_per_session=reader.integer("MAX_STREAMS_PER_SESSION", 10, 1, 10_000),
            direct_database_url=reader.optional("DIRECT_DATABASE_URL"),
            pool_max=(
                None
                if reader.optional("POOL_MAX") is None
                else reader.integer("POOL_MAX", 0, 1, 1000)
            ),
            audit_signing_key=reader.optional("AUDIT_SIGNING_KEY"),
            audit_checkpoint_events=reader.integer("AUDIT_CHECKPOINT_EVENTS", 1000, 1, 10_000_000),
            audit_checkpoint_interval=reader.number(
                "AUDIT_CHECKPOINT_INTERVAL", 3600.0, 0.05, 3600.0
            ),
        )
        check_revocation_timing(settings)
        if settings.cipher_key is not None:
            check_cipher_key(settings.cipher_key)
        if settings.audit_signing_key is not None:
            signing_key_bytes(settings.audit_signing_key)
        for name, url in (
            ("DATABASE_URL", settings.database_url),
            ("DIRECT_DATABASE_URL", settings.direct_database_url),
        ):
            if url is not None:
                try:
                    conninfo_to_dict(url)
                except Exception as error:
                    raise SettingsError(
                        f"SESSIOND_{name} is not a PostgreSQL URL: {error}"
                    ) from None
        if settings.direct_database_url is not None and settings.database_url is None:
            raise SettingsError(
                "SESSIOND_DIRECT_DATABASE_URL needs SESSIOND_DATABASE_URL (the embedded "
                "server is reached directly)"
            )
        if settings.admin_key is not None and len(settings.admin_key) < 16:
            raise SettingsError("SESSIOND_ADMIN_KEY must be at least 16 characters long")
        if settings.dashboard_secret is not None and len(settings.dashboard_secret) < 32:
            raise SettingsError("SESSIOND_DASHBOARD_SECRET must be at least 32 characters long")
        if settings.redis_url is not None and not settings.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise SettingsError("SESSIOND_REDIS_URL must start with redis://, rediss:// or unix://")
        return settings


def signing_key_bytes(value: str) -> bytes:
    """The 32 bytes of an Ed25519 private key given as base64; `SettingsError` otherwise."""
    try:
        raw = b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SettingsError(
            "SESSIOND_AUDIT_SIGNING_KEY must be the base64 of an Ed25519 private key's 32 "
            "bytes (sessiond prints one when it generates it)"
        )
    return raw


def check_revocation_timing(settings: Settings) -> None:
    """Refuse windows in which a revocation could not be confirmed or keys not be checked.

    A revocation answers only once every live API process holds it, or has stopped trusting
    its copy: an API process that stopped refreshing is waited for up to SESSIOND_STALE_AFTER
    (plus a margin), so the write wait must be longer, or every revocation would answer 503
    while one process is stuck. And a process refreshes at least every SESSIOND_POLL_INTERVAL,
    so a shorter window would make it refuse keys between two quiet refreshes.
    """
    if settings.stale_after + TRUST_MARGIN_SECONDS >= settings.write_wait_timeout:
        raise SettingsError(
            f"SESSIOND_STALE_AFTER={settings.stale_after:g} needs "
            f"SESSIOND_WRITE_WAIT_TIMEOUT > {settings.stale_after + TRUST_MARGIN_SECONDS:g} "
            f"(it is {settings.write_wait_timeout:g}): a revocation must be able to outwait "
            "an API process that stopped refreshing"
        )
    if settings.stale_after <= settings.poll_interval:
        raise SettingsError(
            f"SESSIOND_STALE_AFTER={settings.stale_after:g} must be longer than "
            f"SESSIOND_POLL_INTERVAL={settings.poll_interval:g}, or an idle API process "
            "refuses keys between two refreshes"
        )


def networks(
    name: str, raw: str | None
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated addresses or CIDR ranges (``10.0.0.0/8, ::1``)."""
    if raw is None:
        return ()
    found = []
    for part in raw.split(","):
        text = part.strip()
        if not text:
            continue
        try:
            found.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise SettingsError(
                f"SESSIOND_{name}: {text!r} is not an IP address or a CIDR range"
            ) from None
    return tuple(found)


_Number = TypeVar("_Number", int, float)


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def optional(self, name: str) -> str | None:
        value = self.env.get("SESSIOND_" + name, "").strip()
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in allowed:
            raise SettingsError(f"SESSIOND_{name}={value!r}: expected one of {', '.join(allowed)}")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        return self._bounded(name, default, (low, high), float, "a number")

    def optional_integer(self, name: str, low: int, high: int) -> int | None:
        """An integer within bounds, or None when the variable is unset."""
        if self.optional(name) is None:
            return None
        return self.integer(name, low, low, high)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        return self._bounded(name, default, (low, high), int, "a whole number")

    def _bounded(
        self,
        name: str,
        default: _Number,
        bounds: tuple[_Number, _Number],
        parse: Callable[[str], _Number],
        expected: str,
    ) -> _Number:
        """The variable parsed by `parse` (`expected` says what it wants), within `bounds`
        (inclusive), or `default` when it is unset."""
        raw = self.optional(name)
        if raw is None:
            return default
        try:
            value = parse(raw)
        except ValueError:
            raise SettingsError(f"SESSIOND_{name}={raw!r}: expected {expected}") from None
        low, high = bounds
        if not low <= value <= high:
            raise SettingsError(f"SESSIOND_{name}={raw!r}: expected between {low} and {high}")
        return value


CIPHER_TOPIC = "eventsourcing.cryptography:AESCipher"


def check_cipher_key(key: str) -> None:
    """Raise `SettingsError` unless `key` is an AES key (16, 24 or 32 bytes) in base64."""
    try:
        size = len(b64decode(key.encode(), validate=True))
    except (binascii.Error, ValueError):
        raise SettingsError(
            "SESSIOND_CIPHER_KEY is not base64; make one with `sessiond cipher-key`"
        ) from None
    if size not in (16, 24, 32):
        raise SettingsError(
            f"SESSIOND_CIPHER_KEY decodes to {size} bytes; an AES key is 16, 24 or 32 bytes "
            "(make one with `sessiond cipher-key`)"
        )


def eventsourcing_env(
    database_url: str,
    *,
    pool_size: int = 1,
    max_overflow: int = 4,
    cipher_key: str | None = None,
    application_name: str | None = None,
    prepared: bool = False,
) -> dict[str, str]:
    """The eventsourcing environment for PostgreSQL persistence at `database_url`.

    `application_name` names the pool's connections (in ``pg_stat_activity``). Statements are
    sent unprepared unless `prepared`: PgBouncer in transaction mode needs it (a statement
    prepared on one server connection is unknown to the next), and psycopg's cache of prepared
    statements can outlive a pipeline that failed (a save whose optimistic-concurrency check
    failed), after which every save on that connection fails with "prepared statement … does
    not exist" (seen under load once a process's pool is small).
    """
    info = conninfo_to_dict(database_url)
    return {
        # eventsourcing's PostgreSQL persistence, connections bounded (infra/postgres/connect.py).
        "PERSISTENCE_MODULE": "infra.postgres.connect:PostgresFactory",
        "POSTGRES_DBNAME": str(info.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(info.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(info.get("port") or "5432"),
        "POSTGRES_USER": str(info.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(info.get("password") or ""),
        "POSTGRES_LOCK_TIMEOUT": "5",
        # Also how long a pool makes a caller wait for a connection: no wait is unbounded.
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(max_overflow),
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "10",
        "APPLICATION_RECORDER_TOPIC": "infra.postgres.recorder:PollingApplicationRecorder",
        # Every table is created by the schema's migrations (infra/postgres/schema.py).
        "CREATE_TABLE": "n",
        **({"POSTGRES_APPLICATION_NAME": application_name} if application_name else {}),
        **({} if prepared else {"POSTGRES_PREPARED_STATEMENTS": "n"}),
        # With a key, every event and snapshot is stored encrypted (AES-GCM), message texts
        # included; everything that decodes events (views, history, export) decrypts them.
        **({"CIPHER_TOPIC": CIPHER_TOPIC, "CIPHER_KEY": cipher_key} if cipher_key else {}),
    }
