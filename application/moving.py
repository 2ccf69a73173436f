"""Moving a linked session to another deployment: what an export file holds, recording the
export at the source, and creating the session from the file at the destination.

The file (encrypted by `infra.cli.session`) holds the session's settings (name, labels, rate
limit, proxy, its own webhook endpoints with their secrets) and its device's credentials as
the deployment's device store keeps them; never its API keys. At the source the export is
recorded (`Session.SessionExported`): the session stops for good and is never resumed there.
At the destination the session is created as `Session.SessionImported`, which resumes the
device on its first start. Its id is derived from the export's id, so the event store itself
refuses a second import of the same export (the id is taken), atomically.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4, uuid5

import msgspec
from eventsourcing.persistence import IntegrityError

from application.errors import ApplicationError, SessionNotFound
from application.keys import SESSION_KEY_KIND, generate_key
from application.sessions import IssuedKey, SessionsApplication
from application.webhooks import SECRET_PREFIX, webhook_uuid
from domain.errors import DomainError, InvalidValue, SessionWasExported
from domain.proxy import parse_proxy_url
from domain.session import Session
from domain.values import check_labels, clean_name, public_session_id, session_uuid
from domain.webhook import (
    WebhookEndpoint,
    check_endpoint_cap,
    check_events,
    check_url,
    public_webhook_id,
)

#: What the file's content says it is, and the version of its layout this sessiond writes and
#: reads (a later layout gets a new number; an older sessiond refuses it).
FORMAT = "sessiond-session-export"
VERSION = 1
EXPORT_ID_PREFIX = "exp_"
#: Imported sessions' ids are uuid5(this, export id): one session per export, per deployment.
IMPORT_NAMESPACE = UUID("6f1f3c52-3d0e-4c55-9a51-2f7a64c0e5d1")
IMPORTED_KEY_LABEL = "imported"


class MoveRefused(ApplicationError):
    """An export or an import that cannot be done; its message says why, in one line."""

    code = "move-refused"


class AlreadyImported(MoveRefused):
    code = "already-imported"


class DeviceAlreadyStored(MoveRefused):
    code = "device-already-stored"


# -- the file's content ---------------------------------------------------------------------


class WebhookSetting(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    url: str
    events: list[str]
    enabled: bool
    secret: str  # receivers keep verifying signatures with it


class SessionSettings(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    name: str
    labels: dict[str, str]
    requests_per_minute: int | None
    proxy: str | None  # the full URL, password included
    webhooks: list[WebhookSetting]


class DeviceCredentials(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    """A linked device as a device store keeps it: `gateway` names the store's kind
    (``neonize``: whatsmeow's tables, `tables` their rows; ``simulator``: the JID alone)."""

    gateway: str
    jid: str
    push_name: str
    store_version: list[int] | None  # whatsmeow's schema (version, compat)
    tables: dict[str, list[dict[str, Any]]]


class SessionExport(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    format: str
    version: int
    export_id: str
    exported_at: datetime
    source_session_id: str
    settings: SessionSettings
    device: DeviceCredentials


def encode_export(document: SessionExport) -> bytes:
    return msgspec.json.encode(document)


def decode_export(data: bytes) -> SessionExport:
    """The document in `data`; `MoveRefused` if it is not one this sessiond reads."""
    try:
        head = msgspec.json.decode(data, type=dict[str, Any])
    except msgspec.DecodeError as error:
        raise MoveRefused(f"the export's content is not JSON ({error})") from None
    if head.get("format") != FORMAT:
        raise MoveRefused("the content is not a sessiond session export")
    if head.get("version") != VERSION:
        raise MoveRefused(
            f"the export's format is version {head.get('version')!r}; this sessiond reads "
            f"version {VERSION}"
        )
    try:
        return msgspec.json.decode(data, type=SessionExport)
    except msgspec.ValidationError as error:
        raise MoveRefused(f"the export's content is malformed: {error}") from None


# -- the device store -------------------------------------------------------------------------


class DeviceStore(ABC):
    """Where the deployment's gateway keeps linked devices (whatsmeow's tables, or the
    simulator's list)."""

    gateway: str

    @abstractmethod
    def holds(self, jid: str) -> bool:
        """Whether the store holds device `jid`."""

    @abstractmethod
    def read(self, jid: str, push_name: str) -> DeviceCredentials:
        """Everything the store keeps of device `jid` (`MoveRefused` if it holds none)."""

    @abstractmethod
    def write(self, device: DeviceCredentials) -> None:
        """Store `device`, all or nothing: `DeviceAlreadyStored` if the store holds its JID,
        `MoveRefused` if its rows do not fit this store."""

    @abstractmethod
    def remove(self, jid: str) -> None:
        """Forget device `jid` (what `write` stored), here only: WhatsApp is not told."""


# -- the commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedExport:
    """The export recorded at the source: `again` when it was recorded before (the file is
    written again with the same id, so only one import of either copy is possible)."""

    export_id: str
    exported_at: datetime
    again: bool
    position: int | None


@dataclass(frozen=True)
class ImportedSession:
    session_id: str
    first_key: IssuedKey
    jid: str
    webhook_ids: list[str]
    position: int


def imported_session_uuid(export_id: str) -> UUID:
    return uuid5(IMPORT_NAMESPACE, export_id)


class SessionMoves:
    """Export and import of sessions on one deployment's application."""

    def __init__(
        self,
        app: SessionsApplication,
        *,
        endpoints_of: Callable[[str], list[str]],
        refuse_webhook_url: Callable[[str], str | None] = lambda _url: None,
    ) -> None:
        """`endpoints_of(session_id)`: the webhook ids of a session's own endpoints;
        `refuse_webhook_url(url)`: why this deployment would refuse an endpoint (None: it
        takes it)."""
        self.app = app
        self.endpoints_of = endpoints_of
        self.refuse_webhook_url = refuse_webhook_url

    # -- at the source --------------------------------------------------------------------

    def exportable(self, session_id: str) -> Session:
        """The session, if it can be exported (or was, and can be written again)."""
        session = self.app.get_session(session_id)
        if session.exported_as is None and not session.jid:
            reason = f", {session.reason}" if session.reason else ""
            raise MoveRefused(
                f"session {session_id} has no linked device (it is {session.status}{reason}): "
                "there is nothing to move; link it first"
            )
        return session

    def record_export(self, session_id: str, actor: str) -> RecordedExport:
        """Record the export (the session stops here for good), or find the one recorded."""
        session = self.exportable(session_id)
        if session.exported_as is not None and session.exported_at is not None:
            return RecordedExport(session.exported_as, session.exported_at, True, None)
        export_id = EXPORT_ID_PREFIX + uuid4().hex
        exported_at = datetime.now(UTC)
        try:
            position = self.app.export(session_id, export_id, exported_at, actor)
        except SessionWasExported:  # another export of it was recorded meanwhile: that one
            session = self.app.get_session(session_id)
            assert session.exported_as is not None
            assert session.exported_at is not None
            return RecordedExport(session.exported_as, session.exported_at, True, None)
        return RecordedExport(export_id, exported_at, False, position)

    def document(
        self, session_id: str, recorded: RecordedExport, device: DeviceCredentials
    ) -> SessionExport:
        """The export file's content: the session's settings as they are now, and `device`."""
        session = self.app.load(session_id)
        proxy = session.proxy
        webhooks = []
        for webhook_id in self.endpoints_of(session_id):
            endpoint: Any = self.app.repository.get(webhook_uuid(webhook_id))
            if isinstance(endpoint, WebhookEndpoint) and not endpoint.deleted:
                hook = WebhookSetting(
                    endpoint.url, list(endpoint.events), endpoint.enabled, endpoint.secret
                )
                webhooks.append(hook)
        settings = SessionSettings(
            name=session.name,
            labels=dict(session.labels),
            requests_per_minute=session.requests_per_minute,
            proxy=proxy.url if proxy is not None else None,
            webhooks=webhooks,
        )
        return SessionExport(
            format=FORMAT,
            version=VERSION,
            export_id=recorded.export_id,
            exported_at=recorded.exported_at,
            source_session_id=public_session_id(session.id),
            settings=settings,
            device=device,
        )

    # -- at the destination ---------------------------------------------------------------

    def check_not_imported(self, export_id: str) -> None:
        """`AlreadyImported` if this deployment already imported that export."""
        uuid = imported_session_uuid(export_id)
        try:
            session = self.app.load(uuid)
        except SessionNotFound:
            return
        raise AlreadyImported(
            f"export {export_id} was already imported here, as session "
            f"{public_session_id(uuid)}{' (since deleted)' if session.is_deleted else ''}; "
            "an export is imported once"
        )

    def import_session(
        self, document: SessionExport, store: DeviceStore, actor: str
    ) -> ImportedSession:
        """Create the session of `document` and store its device, or change nothing
        (`MoveRefused` says why)."""
        if document.device.gateway != store.gateway:
            raise MoveRefused(
                f"the export holds a device of the {document.device.gateway} gateway; this "
                f"deployment runs the {store.gateway} gateway (SESSIOND_GATEWAY)"
            )
        self.check_not_imported(document.export_id)
        session, endpoints, new_key = self._build(document, actor)
        if store.holds(document.device.jid):
            raise DeviceAlreadyStored(
                f"the device {document.device.jid} is already in this deployment's device "
                "store (a session here holds it: delete that session first)"
            )
        store.write(document.device)
        try:
            recordings = self.app.save(session, *endpoints)
        except IntegrityError:  # the same export, imported at the same moment by another
            store.remove(document.device.jid)
            self.check_not_imported(document.export_id)
            raise
        except BaseException:
            store.remove(document.device.jid)
            raise
        position = recordings[-1].notification.id if recordings else 0
        key = IssuedKey(new_key.key_id, new_key.key, new_key.prefix, IMPORTED_KEY_LABEL, position)
        hooks = [public_webhook_id(endpoint.id) for endpoint in endpoints]
        return ImportedSession(
            public_session_id(session.id), key, document.device.jid, hooks, position
        )

    def _build(
        self, document: SessionExport, actor: str
    ) -> tuple[Session, list[WebhookEndpoint], Any]:
        """The session and its endpoints, not saved; `MoveRefused` for a setting refused here."""
        settings = document.settings
        try:
            session_uuid(document.source_session_id)
            session = Session.imported(
                id=imported_session_uuid(document.export_id),
                name=clean_name(settings.name),
                labels=check_labels(settings.labels),
                actor=actor,
                jid=document.device.jid,
                push_name=document.device.push_name,
                export_id=document.export_id,
                source_session_id=document.source_session_id,
                exported_at=document.exported_at,
            )
            if settings.requests_per_minute is not None:
                session.set_rate_limit(settings.requests_per_minute, actor)
            if settings.proxy is not None:
                session.set_proxy(parse_proxy_url(settings.proxy), actor)
            new_key = generate_key(SESSION_KEY_KIND)
            session.issue_key(
                new_key.key_id, new_key.prefix, new_key.key_hash, IMPORTED_KEY_LABEL, actor
            )
            if settings.webhooks:
                check_endpoint_cap(len(settings.webhooks) - 1, self.app.caps.webhooks)
            endpoints = [self._endpoint(session, hook, actor) for hook in settings.webhooks]
        except (DomainError, MoveRefused) as error:
            raise MoveRefused(f"this deployment refuses the export's settings: {error}") from None
        return session, endpoints, new_key

    def _endpoint(self, session: Session, hook: WebhookSetting, actor: str) -> WebhookEndpoint:
        url = check_url(hook.url)
        if not hook.secret.startswith(SECRET_PREFIX):
            raise InvalidValue(f"webhook {url}: its secret is not a Standard Webhooks secret")
        refusal = self.refuse_webhook_url(url)
        if refusal is not None:
            raise MoveRefused(f"webhook {url}: {refusal}")
        endpoint = WebhookEndpoint(
            id=uuid4(),
            url=url,
            events=check_events(hook.events),
            session_id=public_session_id(session.id),
            secret=hook.secret,
            actor=actor,
        )
        if not hook.enabled:
            endpoint.change(url, endpoint.events, False, actor)
        return endpoint
