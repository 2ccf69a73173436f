"""The audit key, the checkpoints that sign the chain's head with it, and the verification of
the chain (all of it for `sessiond audit verify`, the tail since the last checkpoint for
`GET /audit/verify`)."""

from __future__ import annotations

import base64
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from application.audit import (
    Break,
    ChainedEvent,
    ChainWalk,
    Checkpoint,
    Head,
    Verified,
    checkpoint_due,
    checkpoint_message,
    walk,
)
from infra.postgres.audit import KEY, AuditStore
from infra.postgres.connect import connect
from infra.settings import signing_key_bytes

log = logging.getLogger(__name__)


class AuditKeyError(Exception):
    """The configured audit key cannot be used with this database."""


def check_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is the Ed25519 signature of `message` by `public_key`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class AuditKey:
    """The audit key's public half and, where this process may sign, its private half."""

    public: bytes
    private: Ed25519PrivateKey | None

    def sign(self, message: bytes) -> bytes:
        if self.private is None:
            raise AuditKeyError(
                "this process has no audit signing key: set SESSIOND_AUDIT_SIGNING_KEY"
            )
        return self.private.sign(message)

    @property
    def public_base64(self) -> str:
        return base64.b64encode(self.public).decode()

    @property
    def public_pem(self) -> str:
        key = Ed25519PublicKey.from_public_bytes(self.public)
        return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def audit_key_refusal(stored_public: bytes | None, configured: str | None) -> str | None:
    """Why the configured key cannot sign for a database whose checkpoints are signed by
    `stored_public` (None: it can, or none is configured)."""
    if configured is None or stored_public is None:
        return None
    private = Ed25519PrivateKey.from_private_bytes(signing_key_bytes(configured))
    if _raw_public(private) == stored_public:
        return None
    return (
        "SESSIOND_AUDIT_SIGNING_KEY is not the key this database's audit checkpoints are "
        f"signed with (its public key is {base64.b64encode(stored_public).decode()}); set "
        f"that key, or delete the row of the table {KEY} to sign with a new one from now on "
        "(the checkpoints signed before are then reported as signed by another key)"
    )


def check_configured_key(database_url: str, configured: str | None) -> str | None:
    """`audit_key_refusal` for the database at `database_url` (checked once at start-up,
    before any process of the command builds its roles)."""
    if configured is None:
        return None
    with connect(database_url, application_name="sessiond-migrate") as conn:
        row = conn.execute("SELECT public_key FROM sessiond_audit_key WHERE id = 1").fetchone()
    return audit_key_refusal(None if row is None else bytes(row[0]), configured)


def load_audit_key(store: AuditStore, configured: str | None) -> AuditKey:
    """The configured key (SESSIOND_AUDIT_SIGNING_KEY), or the one sessiond keeps in the
    database, generated and printed once on the first start without one.

    Configuring the key removes the generated copy from the database. A configured key other
    than the one this database's checkpoints are signed with is refused (`AuditKeyError`).
    """
    stored = store.stored_key()
    if configured is not None:
        private = Ed25519PrivateKey.from_private_bytes(signing_key_bytes(configured))
        public = _raw_public(private)
        refusal = audit_key_refusal(None if stored is None else stored[0], configured)
        if refusal is not None:
            raise AuditKeyError(refusal)
        if stored != (public, None):
            store.store_configured_key(public)
        return AuditKey(public, private)
    if stored is None:
        private = Ed25519PrivateKey.generate()
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        if store.store_generated_key(_raw_public(private), raw):
            print(
                "sessiond: generated the audit signing key; it is shown only now, store it "
                "(and set it: until then it is kept in the database):\n"
                f"  SESSIOND_AUDIT_SIGNING_KEY={base64.b64encode(raw).decode()}",
                file=sys.stderr,
                flush=True,
            )
            return AuditKey(_raw_public(private), private)
        stored = store.stored_key()
        assert stored is not None
    public, raw_private = stored
    return AuditKey(
        public, None if raw_private is None else Ed25519PrivateKey.from_private_bytes(raw_private)
    )


def sign_head(store: AuditStore, key: AuditKey, head: Head | None = None) -> Checkpoint | None:
    """Sign the chain's end `head` (witnessed now if not given) and record it; None if it is
    signed already."""
    if head is None:
        head = store.witness()
    if head.events == 0:
        return None
    signed_at = store.now()
    checkpoint = Checkpoint(
        position=head.position,
        events=head.events,
        hash=head.hash,
        signed_at=signed_at,
        public_key=key.public,
        signature=key.sign(checkpoint_message(head.position, head.events, head.hash, signed_at)),
    )
    return checkpoint if store.add_checkpoint(checkpoint) else None


class Checkpointer:
    """Signs the head once `every_events` events are unsigned, and whenever an unsigned event
    has waited `interval` seconds; checks every `tick` seconds. Several processes may run one:
    a head is signed once (the checkpoint's position is unique)."""

    def __init__(
        self, store: AuditStore, key: AuditKey, *, every_events: int, interval: float, tick: float
    ) -> None:
        self.store = store
        self.key = key
        self.every_events = every_events
        self.interval = interval
        self.tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-checkpoints", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def check_once(self) -> Checkpoint | None:
        """Witness the chain's end and sign it if a checkpoint is due; the checkpoint
        recorded, if any."""
        head = self.store.witness()
        last = self.store.last_checkpoint()
        oldest = self.store.recorded_after(last.position if last else 0)
        if not checkpoint_due(
            head,
            last,
            oldest,
            self.store.now(),
            every_events=self.every_events,
            interval=self.interval,
        ):
            return None
        checkpoint = sign_head(self.store, self.key, head)
        if checkpoint is not None:
            log.info(
                "audit checkpoint: %d events up to position %d signed",
                checkpoint.events,
                checkpoint.position,
            )
        return checkpoint

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.check_once()
            except Exception as error:  # the database is away: try again next tick
                log.warning("audit checkpoint failed: %s: %s", type(error).__name__, error)


def verify_chain(
    store: AuditStore,
    public_key: bytes,
    *,
    progress: Callable[[int], None] = lambda _: None,
    head: Head | None = None,
) -> Break | Verified:
    """Walk the whole log from its first event up to its end `head` (witnessed first if not
    given; events recorded meanwhile are left for the next check); `progress` is told how
    many events each page held."""
    if head is None:
        head = store.witness()
    end = head.position
    chain = ChainWalk(public_key, check_signature)

    def events() -> Iterator[ChainedEvent]:
        for page in store.events(0, until=end):
            yield from page
            progress(len(page))

    checkpoints = [c for c in store.checkpoints() if c.position <= end]
    return walk(events(), checkpoints, head, chain)


def verify_tail(store: AuditStore, public_key: bytes) -> Break | Verified:
    """Walk the log from its last checkpoint (whose signature and hash are checked first)
    up to its end witnessed first."""
    head = store.witness()
    end = head.position
    last = store.last_checkpoint(end)
    if last is None:
        return verify_chain(store, public_key, head=head)
    chain = ChainWalk(
        public_key, check_signature, previous=last.hash, position=last.position, events=last.events
    )
    if chain.checkpoint(last) is not None:
        return chain.finish(head)
    if store.hash_at(last.position) != last.hash:
        return chain.fail(
            last.position, "the event here differs from the signed checkpoint (rewritten history)"
        )

    def events() -> Iterator[ChainedEvent]:
        for page in store.events(last.position, until=end):
            yield from page

    return walk(events(), (), head, chain)
