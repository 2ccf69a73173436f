"""The neonize gateway: the `WhatsAppGateway` port on neonize 0.5.2's sync `NewClient`.

neonize wraps whatsmeow (Go) in a shared library. The adapter is four modules:
`infra.whatsapp.loading` (importing neonize, the client class, the gate into Go),
`infra.whatsapp.devicestore` (whatsmeow's store: its DSN, its upgrade, device lookups, its
PgBouncer), `infra.whatsapp.mapping` (what neonize reports, in sessiond's words) and this one
(the clients' lives and the reports). The hazards it is built around, all verified on 0.5.2
(see ``research/neonize.md``):

- **Go panics abort the whole process.** `get_me()` on a client that is not connected, or
  resuming a JID the store does not hold, kills every session. So the adapter never calls Go
  for a client that has not reported `Connected` (send, logout), takes the device JID and push
  name from the `Device` event neonize delivers first (``client.me``), and looks the JID up in
  the store (our own SQL, not Go) before resuming it.
- **`connect()` blocks for the client's whole life**, so each client runs on a daemon thread
  of its own; it returns only after `stop()`. whatsmeow emits no Python event when the QR codes
  run out: the status arrives on neonize's private login-status callback, which the
  `SessionClient` subclass overrides (``_NewClient__onLoginStatus``, name-mangled: re-check on
  every upgrade). After a QR timeout, a logout, a replaced stream or a ban the client is
  useless and would block for ever, so the adapter stops it (from another thread: Go is
  calling us on its own thread then).
- **Handlers run on Go's thread and hold it up**: they only put a report on a queue; one
  dispatcher thread per gateway makes the `GatewayEvents` calls, so a slow recording never
  blocks whatsmeow. neonize holds bound methods *weakly* (they vanish silently when their
  object is collected), so handlers are closures. Handlers must be registered before
  `connect()`, which sends the subscribed event codes to Go.
- **One client per Go key.** A client's Go key is its `uuid`, and for a resumed device it is
  forced to the JID's user part (``user:device``), so a restart reuses it. Each `NewClient`
  registers a GC finalizer that calls Go's ``Stop(uuid)``: an old client collected after a
  new one with the same key started would stop the new one. The adapter stops old clients
  itself and detaches their finalizer. Every start gets a new generation; reports of an
  older generation (a stopped or restarted client) are dropped by the dispatcher.
- **Messages.** Only texts written to the account are reported (not our own sends echoed back,
  status updates, edits, media without a caption), and only the receipts a recipient's device
  sends for what we sent (delivered, read). whatsmeow's send errors reach Python as text only,
  so `send_text` tells a refused recipient from a failure that may pass by their wording
  (`RECIPIENT_REFUSALS`: re-check on every upgrade).
- **neonize's client maps have no lock.** Go keeps its clients, stop functions and event
  channels in plain maps, written when a client starts (`Neonize`) and stops (`Stop`): two
  starts at once abort the process ("concurrent map writes", seen with 20 clients starting
  together). `GoEntry` lets one client at a time into that phase.
- **Every start opens a store that is never closed** (a Go connection pool, one connection
  kept for ever): the store is reached through the worker's PgBouncer
  (`infra.whatsapp.devicestore`), and a session whose last start could not reach WhatsApp is
  started again in Go only once `LinkCheck` finds WhatsApp's first hop answering; until then each
  retry reports the check's answer. A start that failed in the store (lib/pq's or whatsmeow's
  store errors) is reported as `store_unavailable`, not as WhatsApp being unreachable.
- **The silence watchdog's active check** (`ping`) asks WhatsApp's server for the account's
  block list (neonize's ``get_blocklist``: whatsmeow sends an IQ ``get`` in the ``blocklist``
  namespace and waits for the server's answer, every time, nothing cached). It changes
  nothing; a presence would (``available`` stops the phone's notifications) and is sent with
  no answer to wait for, and whatsmeow's own keepalive ping is not exposed. Go waits up to
  75 s for the answer: the call runs on a thread of its own and `ping` waits its `timeout`.
- **Proxies.** whatsmeow dials through the proxy given to `connect()` (neonize's
  ``ProxySettings``; ``set_proxy_address`` needs a client Go already holds, which it does only
  once `connect()` runs). Without one, Go's HTTP transport takes ``HTTPS_PROXY`` from the
  environment, and with a SOCKS5 one it *still* does: it would dial the environment's proxy
  through the session's. So Go is loaded without the proxy variables (it copies the
  environment when the library loads) and every client gets its proxy explicitly: the
  session's own, else the environment's for WhatsApp's host (`LinkCheck.default_proxy`, Go's
  rules), else none. A start that fails to reach the session's own proxy is reported as
  ``proxy_unreachable``; messages never carry its password.
- **Importing neonize configures the root logger** (`logging.basicConfig` at INFO with a
  handler of its own): `import_neonize()` imports it lazily and puts the root logger back.
- **The store.** whatsmeow's tables live in a schema of the service's PostgreSQL database
  (``search_path=whatsmeow``; only one such schema per database works), reached through
  lib/pq with its own DSN syntax (`store_dsn_from_url`). Its schema upgrade races when run
  concurrently on a fresh store: `prepare_store` runs it once at boot, under an advisory
  lock. Devices are looked up and deleted with SQL (Go's listing opens a new connection pool
  per call and never closes it: the upgrade goes through the pooler too).

Known limit, read in neonize's Go source and not verifiable offline: once a pairing client's
QR loop ends without a scan (timeout, or a stop), neonize's Go call waits for a device ID
that never comes, so `connect()` may never return; it runs that call on a *non-daemon*
thread, which would then hold up interpreter exit (a worker should end with `os._exit`).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from application.errors import (
    ConcurrentChange,
    GatewayError,
    NotConnected,
    NotPairing,
)
from application.ports import Disconnection, GatewayEvents, SentMessage, WhatsAppGateway
from domain.proxy import hide_password, parse_proxy_url
from domain.values import Reason
from infra.whatsapp.devicestore import (
    DeviceStorePool,
    delete_device,
    device_stored,
)
from infra.whatsapp.link import LinkCheck
from infra.whatsapp.loading import (
    GO_ENTRY,
    Neonize,
    default_factory,
    import_neonize,
    spawn_daemon,
)
from infra.whatsapp.mapping import (
    RECEIPT_TIME_UNIT,
    Clock,
    enum_name,
    inbound_message,
    instant,
    receipt_status,
    send_error,
    start_failure_reason,
)

log = logging.getLogger(__name__)

#: How long `stop` waits for a report being delivered, so none arrives after it returns.
DELIVERY_BARRIER_SECONDS = 2.0

Spawn = Callable[[Callable[[], None], str], None]
ClientFactory = Callable[..., Any]
Deliver = Callable[[GatewayEvents], object]


# -- neonize, imported lazily ------------------------------------------------------------------


# -- the store ---------------------------------------------------------------------------------


# -- messages ----------------------------------------------------------------------------------


# -- the gateway -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Link:
    """One client of one session, from `start` until it is stopped or replaced."""

    session_id: UUID
    generation: int
    client: Any
    device_jid: str | None
    pairing: bool  # a new device: shows QR codes until scanned
    qr_count: int = 0
    connected: bool = False
    ended: bool = False  # final report made or stop requested: report nothing more
    stopped: bool = False  # client.stop() called (or skipped for good)
    entered: bool = False  # the client's start was handed to Go
    passed: threading.Event | None = None  # set once Go has answered the start
    proxy: str | None = None  # the session's own proxy (full URL), if it has one

    @property
    def proxy_password(self) -> str:
        return parse_proxy_url(self.proxy).password if self.proxy else ""


@dataclass(frozen=True)
class _Report:
    session_id: UUID
    generation: int
    deliver: Deliver
    # A message or a receipt: whatsmeow has already acknowledged it to WhatsApp, so it is
    # recorded whichever client (even one stopped or replaced since) reported it, and a
    # recording that fails is tried again (a repeat is recognised by WhatsApp's id).
    fact: bool = False


#: Pauses before recording a message or receipt again after a failure (then it is logged).
FACT_RETRY_PAUSES = (0.2, 1.0, 3.0)


class NeonizeGateway(WhatsAppGateway):
    """WhatsApp through neonize: one `NewClient` (and one thread) per running session."""

    def __init__(
        self,
        store_dsn: str,
        *,
        client_factory: ClientFactory | None = None,
        spawn: Spawn | None = None,
        clock: Clock | None = None,
        first_timeout: float = 60.0,
        next_timeout: float = 20.0,
        max_codes: int = 6,
        link_check: LinkCheck | None = None,
        pool: DeviceStorePool | None = None,
    ) -> None:
        self.store_dsn = store_dsn
        self.first_timeout = first_timeout
        self.next_timeout = next_timeout
        self.max_codes = max_codes
        self._factory: ClientFactory = client_factory or default_factory
        self._spawn: Spawn = spawn or spawn_daemon
        self._clock: Clock = clock or (lambda: datetime.now(UTC))
        self._events: GatewayEvents | None = None
        self._links: dict[UUID, _Link] = {}
        self._generations = itertools.count(1)
        # _control serialises start/stop/logout; _lock guards _links and the links' flags and
        # is never held while calling Go or the events; neonize's handlers take only _lock.
        self._control = threading.RLock()
        self._lock = threading.RLock()
        self._delivery = threading.RLock()  # held while a report is delivered
        self._queue: queue.Queue[_Report | threading.Event | None] = queue.Queue()
        self._dispatcher: threading.Thread | None = None
        self._link_check = link_check or LinkCheck()
        self._pool = pool  # closed with the gateway
        self._entry = GO_ENTRY
        # Sessions whose last start in Go could not reach WhatsApp: checked before the next.
        self._unreachable: set[UUID] = set()

    # -- the port ----------------------------------------------------------------------------

    def bind(self, events: GatewayEvents) -> None:
        self._events = events
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="neonize-dispatcher", daemon=True
                )
                self._dispatcher.start()

    def start(self, session_id: UUID, device_jid: str | None, proxy: str | None = None) -> None:
        if self._events is None:
            raise RuntimeError("bind() the gateway before starting sessions")
        with self._control:
            self._stop_link(self._detach(session_id))  # starting a running session restarts it
            if device_jid:
                client = self._resumable_client(session_id, device_jid)
                if client is None:
                    return
            generation = next(self._generations)
            if not device_jid:  # a fresh Go key per pairing: no old finalizer can hit it
                client = self._factory(
                    self.store_dsn, uuid=f"{session_id.hex}-{generation}", new_device=True
                )
            link = _Link(session_id, generation, client, device_jid, pairing=not device_jid)
            link.proxy = proxy
            self._attach(link)
            with self._lock:
                self._links[session_id] = link
            self._spawn(lambda: self._run(link), f"neonize-{session_id.hex[:12]}")

    def _resumable_client(self, session_id: UUID, device_jid: str) -> Any | None:
        """A client resuming `device_jid`, or None (reported) when the store lacks it: Go
        would abort the whole process on a JID it cannot find."""
        try:
            stored = device_stored(self.store_dsn, device_jid)
        except Exception as exc:  # the store is down: retry later, keep the device
            log.warning("cannot look device %s up in the store: %s", device_jid, exc)
            detail = f"the device store failed: {exc}"
            self._report_ended(session_id, Reason.STORE_UNAVAILABLE, detail)
            return None
        if not stored:
            detail = f"device {device_jid} is not in the store (unlinked or logged out)"
            self._report_ended(session_id, Reason.DEVICE_UNLINKED, detail)
            return None
        # neonize's own form (as it lists stored devices): "user:device" in JID.User; Go's
        # GetDevice finds it, and the client's Go key becomes "user:device".
        user, _, server = device_jid.rpartition("@")
        return self._factory(self.store_dsn, jid=import_neonize().build_jid(user, server))

    def stop(self, session_id: UUID) -> None:
        with self._control:
            self._stop_link(self._detach(session_id))

    def logout(self, session_id: UUID, device_jid: str | None) -> None:
        self._unreachable.discard(session_id)
        with self._control:
            link = self._detach(session_id)
            jid = device_jid
            if link is not None:
                jid = jid or link.device_jid
                if link.connected:
                    try:
                        link.client.logout()  # Go: only ever for a connected client
                    except Exception as exc:  # unlink it anyway: drop it from the store
                        log.warning("logout of session %s failed: %s", session_id, exc)
                    else:
                        jid = None  # whatsmeow deleted the device from its store itself
                self._stop_link(link)
            if jid:
                try:
                    delete_device(self.store_dsn, jid)
                except Exception:
                    log.exception("cannot delete device %s from the store", jid)

    def pair_phone(self, session_id: UUID, phone: str) -> str:
        with self._lock:
            link = self._links.get(session_id)
            pairing = link is not None and not link.ended and link.pairing and link.qr_count > 0
        if link is None or not pairing:
            raise NotPairing("the session is not showing QR codes")
        try:
            code = link.client.PairPhone(phone, True, import_neonize().client_name.LINUX)
        except Exception as exc:
            log.warning("WhatsApp refused the pairing code of %s: %s", session_id, exc)
            raise GatewayError("WhatsApp refused the pairing code; try again") from exc
        return str(code)

    def _connected_link(self, session_id: UUID) -> _Link:
        """The session's link if its client is connected (never call into Go otherwise)."""
        with self._lock:
            link = self._links.get(session_id)
            connected = link is not None and not link.ended and link.connected
        if link is None or not connected:
            raise NotConnected("the session is not connected")
        return link

    def send_text(self, session_id: UUID, to: str, text: str) -> SentMessage:
        link = self._connected_link(session_id)
        nz = import_neonize()
        recipient = _recipient(nz, to)
        try:
            # A Message, not a str: neonize would scan a str for @mentions, and for each
            # "@...@g.us" token make a network call.
            response = link.client.send_message(recipient, nz.message(conversation=text))
        except nz.neonize_error as exc:
            raise send_error(str(exc)) from exc
        except Exception as exc:
            raise GatewayError(f"WhatsApp did not take the message: {exc}") from exc
        timestamp = (
            datetime.fromtimestamp(response.Timestamp, UTC) if response.Timestamp else self._clock()
        )
        return SentMessage(message_id=str(response.ID), timestamp=timestamp)

    def send_chat_presence(self, session_id: UUID, to: str, *, composing: bool) -> None:
        link = self._connected_link(session_id)
        nz = import_neonize()
        state = (
            nz.chat_presence.CHAT_PRESENCE_COMPOSING
            if composing
            else (nz.chat_presence.CHAT_PRESENCE_PAUSED)
        )
        try:
            link.client.send_chat_presence(
                _recipient(nz, to), state, nz.chat_presence_media.CHAT_PRESENCE_MEDIA_TEXT
            )
        except Exception as exc:
            raise GatewayError(f"WhatsApp did not take the chat presence: {exc}") from exc

    def ping(self, session_id: UUID, timeout: float) -> None:
        with self._lock:
            link = self._links.get(session_id)
            connected = link is not None and not link.ended and link.connected
        if link is None or not connected:
            raise NotConnected("the session is not connected")  # Go is never asked then
        outcome: list[BaseException | None] = []
        answered = threading.Event()
        client = link.client

        def ask() -> None:
            try:
                client.get_blocklist()  # an IQ round trip to WhatsApp's server
            except BaseException as exc:  # handed to the waiting caller, whatever it is
                outcome.append(exc)
            else:
                outcome.append(None)
            finally:
                answered.set()

        self._spawn(ask, f"neonize-ping-{session_id.hex[:12]}")
        if not answered.wait(timeout):
            raise GatewayError(f"WhatsApp did not answer the check within {timeout:g} s")
        error = outcome[0]
        if error is not None:
            detail = hide_password(str(error) or type(error).__name__, link.proxy_password)
            raise GatewayError(f"WhatsApp did not answer the check: {detail}") from error

    def running(self) -> set[UUID]:
        with self._lock:
            return {sid for sid, link in self._links.items() if not link.ended}

    def stop_all(self) -> None:
        with self._control:
            with self._lock:
                links = list(self._links.values())
                self._links.clear()
                for link in links:
                    link.ended = True
            self._barrier()
            for link in links:
                self._stop_client(link)

    def close(self) -> None:
        self.stop_all()
        with self._lock:
            dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            self._queue.put(None)
            if dispatcher is not threading.current_thread():
                dispatcher.join(timeout=5)
        if self._pool is not None:
            self._pool.close()

    # -- for tests and diagnostics ------------------------------------------------------------

    def client_of(self, session_id: UUID) -> Any | None:
        """The neonize client of the session's current link, if any."""
        with self._lock:
            link = self._links.get(session_id)
            return link.client if link is not None else None

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every report queued so far has been delivered; False on timeout."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    # -- the client's thread ----------------------------------------------------------------

    def _run(self, link: _Link) -> None:
        """Run the client's blocking `connect()`; report why it ended if we did not end it.
        A session whose last start could not reach WhatsApp goes to Go only once the link
        check passes (each start leaves a store behind in Go)."""
        sid = link.session_id
        try:
            if sid in self._unreachable:
                why = self._link_check.diagnose(link.proxy)
                if why is not None:
                    own = link.proxy is not None and why.at_proxy
                    reason = Reason.PROXY_UNREACHABLE if own else Reason.WHATSAPP_UNREACHABLE
                    detail = hide_password(why.detail, link.proxy_password)
                    self._final(link, Disconnection(reason.value, detail))
                    return
            passed = self._entry.enter()
            with self._lock:
                go = not link.ended
                link.entered, link.passed = go, passed
            if not go:
                passed.set()  # stopped while waiting: never handed to Go
                return
            try:
                link.client.connect(self._proxy_settings(link))
            finally:
                passed.set()
        except Exception as exc:
            # e.g. "failed to dial whatsapp web websocket: ... network is unreachable", or
            # "failed to upgrade database: ... pq: sorry, too many clients already"
            detail = hide_password(str(exc) or type(exc).__name__, link.proxy_password)
            reason = start_failure_reason(detail, own_proxy=link.proxy is not None)
            if reason in (Reason.WHATSAPP_UNREACHABLE, Reason.PROXY_UNREACHABLE):
                self._unreachable.add(sid)
            else:
                self._unreachable.discard(sid)
            self._final(link, Disconnection(reason.value, detail))
        else:
            stopped = "the client stopped by itself"
            self._final(link, Disconnection(Reason.CONNECTION_LOST.value, stopped))
        finally:
            link.connected = False
            self._stop_client(link)

    def _proxy_settings(self, link: _Link) -> Any | None:
        """What `connect()` is given: the session's proxy, else the environment's (Go was
        loaded without it: see the module's docstring), else None (a direct dial)."""
        address = link.proxy or self._link_check.default_proxy()
        if address is None:
            return None
        return import_neonize().proxy_settings(proxy_address=address)

    # -- neonize's callbacks (on Go's thread: enqueue only) ---------------------------------

    def _attach(self, link: _Link) -> None:
        """Register the handlers of `link`'s client (closures: neonize holds methods weakly)."""
        client = link.client
        client.event.qr(_answered(link, self._qr_handler(link)))
        on_status = self._login_status_handler(link)

        def on_login_status(status: str) -> None:
            if link.passed is not None:
                link.passed.set()
            on_status(status)

        client.on_login_status = on_login_status
        handlers = (
            self._link_handlers(link) | self._ending_handlers(link) | self._message_handlers(link)
        )
        for event_type, handler in handlers.items():
            client.event(event_type)(_answered(link, handler))

    def _qr_handler(self, link: _Link) -> Callable[[Any, bytes], None]:
        sid = link.session_id

        def on_qr(_client: Any, data: bytes) -> None:
            if link.ended or not link.pairing:
                return
            link.qr_count += 1
            attempt = link.qr_count
            # whatsmeow does not pass the codes' lifetime: 60 s for the first, then 20 s
            lifetime = self.first_timeout if attempt == 1 else self.next_timeout
            expires_at = self._clock() + timedelta(seconds=lifetime)
            code = data.decode("utf-8", "replace")
            top = max(self.max_codes, attempt)  # the server chooses how many codes it sends
            self._report(link, lambda e: e.qr_issued(sid, code, expires_at, attempt, top))

        return on_qr

    def _login_status_handler(self, link: _Link) -> Callable[[str], None]:
        sid = link.session_id

        def on_login_status(status: str) -> None:
            if status == "success":
                link.pairing = False  # PairSuccess: the Device and Connected events follow
            elif status == "timeout":  # the codes ran out (or the link dropped while pairing)
                if self._end(link):
                    self._report(link, lambda e: e.qr_exhausted(sid))
                    self._stop_later(link)  # else connect() blocks for ever
            elif status == "err-client-outdated":
                self._final(link, Disconnection(Reason.CLIENT_OUTDATED.value, status), stop=True)
            elif status:  # "err-scanned-without-multidevice", "err-unexpected-state", "error"
                self._final(link, Disconnection(Reason.PAIRING_FAILED.value, status), stop=True)

        return on_login_status

    def _link_handlers(self, link: _Link) -> dict[Any, Callable[[Any, Any], None]]:
        nz = import_neonize()
        ev, pb = nz.events, nz.pb
        sid = link.session_id

        def on_pair_status(_client: Any, event: Any) -> None:
            if event.Status == pb.PairStatus.ERROR:
                failed = Disconnection(Reason.PAIRING_FAILED.value, event.Error or "pairing failed")
                self._final(link, failed, stop=True)
            elif event.HasField("ID") and event.ID.User:
                link.pairing = False
                link.device_jid = nz.jid_to_string(event.ID)

        def on_connected(client: Any, _event: Any) -> None:
            # ConnectedEv has no JID: neonize delivers a Device event (code 0) first, which it
            # keeps as `client.me`. Never get_me(): Go aborts the process on some paths.
            me = client.me
            jid = link.device_jid or ""
            push_name = ""
            if me is not None:
                push_name = me.PushName
                if me.HasField("JID") and me.JID.User:
                    jid = nz.jid_to_string(me.JID)
            link.device_jid = jid or link.device_jid
            link.pairing = False
            link.connected = True
            self._unreachable.discard(sid)
            if not link.ended:
                self._report(link, lambda e: e.connected(sid, jid, push_name))

        def lost(reason: Reason, describe: Callable[[Any], str]) -> Callable[[Any, Any], None]:
            def handler(_client: Any, event: Any) -> None:
                link.connected = False
                if not link.ended:
                    detail = describe(event)
                    lost = Disconnection(reason.value, detail)
                    self._report(link, lambda e: e.disconnected(sid, lost))

            return handler

        def keepalive(healthy: bool) -> Callable[[Any, Any], None]:
            def handler(_client: Any, _event: Any) -> None:
                if not link.ended:
                    self._report(link, lambda e: e.keepalive(sid, healthy))

            return handler

        return {
            ev.PairStatusEv: on_pair_status,
            ev.ConnectedEv: on_connected,
            # only when the server closes the socket; whatsmeow reconnects by itself
            ev.DisconnectedEv: lost(Reason.CONNECTION_LOST, lambda _: "the server closed it"),
            # unknown failure reasons only (the known ones come as LoggedOut or TemporaryBan)
            ev.ConnectFailureEv: lost(
                Reason.CONNECT_FAILURE,
                lambda e: f"{enum_name(pb.ConnectFailureReason, e.Reason)}: {e.Message}",
            ),
            ev.KeepAliveTimeoutEv: keepalive(False),
            ev.KeepAliveRestoredEv: keepalive(True),
        }

    def _message_handlers(self, link: _Link) -> dict[Any, Callable[[Any, Any], None]]:
        """Texts received and receipts of what was sent. The event is mapped by the
        dispatcher (Go's thread only enqueues it), which logs a mapping that fails."""
        nz = import_neonize()
        ev, pb = nz.events, nz.pb
        sid = link.session_id

        def on_message(_client: Any, event: Any) -> None:
            def deliver(events: GatewayEvents) -> None:
                message = inbound_message(nz, event, self._clock)
                if message is not None:
                    events.message_received(sid, message)

            self._report(link, deliver, fact=True)

        def on_receipt(_client: Any, event: Any) -> None:
            def deliver(events: GatewayEvents) -> None:
                status = receipt_status(pb, event)
                if status is not None:
                    at = instant(event.Timestamp, RECEIPT_TIME_UNIT, self._clock)
                    events.message_status(sid, list(event.MessageIDs), status, at)

            self._report(link, deliver, fact=True)

        return {ev.MessageEv: on_message, ev.ReceiptEv: on_receipt}

    def _ending_handlers(self, link: _Link) -> dict[Any, Callable[[Any, Any], None]]:
        """Events after which the client is useless: report, then stop it."""
        nz = import_neonize()
        ev, pb = nz.events, nz.pb

        def banned(event: Any) -> Disconnection:
            until = self._clock() + timedelta(seconds=max(event.Expire, 0))
            code = enum_name(pb.TemporaryBan.TempBanReason, event.Code)
            return Disconnection(Reason.TEMPORARILY_BANNED.value, code, until)

        endings: dict[Any, Callable[[Any], Disconnection]] = {
            ev.LoggedOutEv: lambda e: Disconnection(
                Reason.LOGGED_OUT.value, enum_name(pb.ConnectFailureReason, e.Reason)
            ),
            ev.StreamReplacedEv: lambda _: Disconnection(
                Reason.STREAM_REPLACED.value, "connected elsewhere"
            ),
            ev.TemporaryBanEv: banned,
            ev.ClientOutdatedEv: lambda _: Disconnection(
                Reason.CLIENT_OUTDATED.value, "client too old"
            ),
        }

        def ending(describe: Callable[[Any], Disconnection]) -> Callable[[Any, Any], None]:
            def handler(_client: Any, event: Any) -> None:
                self._final(link, describe(event), stop=True)

            return handler

        return {event_type: ending(describe) for event_type, describe in endings.items()}

    # -- reports -------------------------------------------------------------------------------

    def _report(self, link: _Link, deliver: Deliver, *, fact: bool = False) -> None:
        self._queue.put(_Report(link.session_id, link.generation, deliver, fact))

    def _end(self, link: _Link) -> bool:
        """Mark `link` ended; True for the one caller that ended it."""
        with self._lock:
            if link.ended:
                return False
            link.ended = True
            return True

    def _final(self, link: _Link, disconnection: Disconnection, *, stop: bool = False) -> None:
        """Report the link's last word (once), and stop its client if `stop`."""
        if not self._end(link):
            return
        link.connected = False
        sid = link.session_id
        self._report(link, lambda e: e.disconnected(sid, disconnection))
        if stop:
            self._stop_later(link)

    def _report_ended(self, session_id: UUID, reason: Reason, detail: str) -> None:
        """Report that a session could not start at all (it then has no client)."""
        link = _Link(session_id, next(self._generations), None, None, pairing=False, ended=True)
        link.stopped = True
        with self._lock:
            self._links[session_id] = link  # so that the report is current
        ended = Disconnection(reason.value, detail)
        self._report(link, lambda e: e.disconnected(session_id, ended))

    def _dispatch(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            with self._delivery:
                events = self._events
                if events is None or not (item.fact or self._is_current(item)):
                    continue  # from a client that was stopped or replaced since
                self._deliver(item, events)

    def _deliver(self, item: _Report, events: GatewayEvents) -> None:
        """Record a report. A message or receipt is tried again after any failure; a report
        about the link only after losing a race with another writer of the session, and
        only while its link is still the session's current one."""
        for pause in (*FACT_RETRY_PAUSES, None):
            try:
                item.deliver(events)
            except ConcurrentChange:
                if pause is None or not (item.fact or self._is_current(item)):
                    log.exception("recording a gateway report for %s failed", item.session_id)
                    return
                log.warning("the session %s changed meanwhile; trying again", item.session_id)
                time.sleep(pause)
            except Exception:
                if pause is None or not item.fact:
                    log.exception("recording a gateway report for %s failed", item.session_id)
                    return
                log.warning("recording a message of %s failed; trying again", item.session_id)
                time.sleep(pause)
            else:
                return

    def _is_current(self, item: _Report) -> bool:
        with self._lock:
            link = self._links.get(item.session_id)
            return link is not None and link.generation == item.generation

    def _barrier(self) -> None:
        """Wait (briefly) for a report being delivered, so none arrives after we return."""
        if self._delivery.acquire(timeout=DELIVERY_BARRIER_SECONDS):
            self._delivery.release()
        else:
            log.warning("a gateway report is taking more than %ss", DELIVERY_BARRIER_SECONDS)

    # -- stopping -----------------------------------------------------------------------------

    def _detach(self, session_id: UUID) -> _Link | None:
        """Take the session's link out (nothing more of it is reported) and end it."""
        with self._lock:
            link = self._links.pop(session_id, None)
            if link is not None:
                link.ended = True
            return link

    def _stop_link(self, link: _Link | None) -> None:
        if link is not None:
            self._barrier()
            self._stop_client(link)

    def _stop_later(self, link: _Link) -> None:
        # We are on Go's thread, inside its callback: stop from another thread.
        self._spawn(lambda: self._stop_client(link), f"neonize-stop-{link.session_id.hex[:12]}")

    def _stop_client(self, link: _Link) -> None:
        """Stop `link`'s client once (Go's Stop is safe on a client that never connected)."""
        with self._lock:
            if link.stopped or link.client is None:
                return
            link.stopped = True
            entered = link.entered
            key = link.client.uuid
            # Go knows clients by key only: never stop a newer client that reuses it.
            reused = any(
                other is not link
                and not other.stopped
                and other.client is not None
                and other.client.uuid == key
                for other in self._links.values()
            )
        try:
            if entered and not reused:  # Go never saw a client that was not entered
                with self._entry.exclusive():
                    link.client.stop()
        except Exception:
            log.exception("stopping the client of session %s failed", link.session_id)
        finalizer = getattr(link.client, "_stop_finalizer", None)
        if finalizer is not None:
            finalizer.detach()  # its Stop(uuid) at GC time could hit a newer client


def _recipient(nz: Neonize, to: str) -> Any:
    """The JID `to` (``user@server``, or a bare number) as neonize takes it."""
    user, at, server = to.rpartition("@")
    return nz.build_jid(user, server) if at else nz.build_jid(to.lstrip("+"))


def _answered(link: _Link, handler: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """`handler`, which first notes that Go has answered the link's start (its maps are
    written once it calls back)."""

    def wrapped(client: Any, event: Any) -> None:
        if link.passed is not None:
            link.passed.set()
        handler(client, event)

    return wrapped
