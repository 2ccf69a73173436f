"""Loading neonize: its Go library (without the environment's proxies), the client class
sessiond builds, and the one gate through which clients enter Go."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Neonize:
    """The parts of neonize the gateway uses (neonize is untyped: `Any` stops here)."""

    new_client: Any
    client_factory: Any
    events: Any  # the neonize.events module: the event classes and their codes
    pb: Any  # neonize.proto.Neonize_pb2
    message: Any  # waE2E Message
    jid_to_string: Callable[[Any], str]
    jid_to_non_ad: Callable[[Any], Any]  # a copy of the JID without its device part
    build_jid: Callable[..., Any]
    extract_text: Callable[[Any], str]  # a waE2E Message's text, or its media's caption
    client_name: Any
    neonize_error: type[Exception]
    send_message_error: type[Exception]  # what `send_message` raises (a `neonize_error`)
    session_client: Any  # `SessionClient`, defined once neonize is imported
    proxy_settings: Any  # `ProxySettings(proxy_address=...)`, what `connect()` takes
    chat_presence: Any  # `ChatPresence`: composing or paused, for `send_chat_presence`
    chat_presence_media: Any  # `ChatPresenceMedia`: text


_neonize: Neonize | None = None
_import_lock = threading.Lock()


#: What Go's HTTP transport reads from the environment to choose a proxy (x/net/http/httpproxy).
GO_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUEST_METHOD",
)


@contextmanager
def _without_proxy_environment() -> Iterator[None]:
    """Hide the proxy variables while Go loads (it copies the environment then), so that
    whatsmeow never adds the environment's proxy behind a session's own; the adapter passes
    the environment's proxy to the clients that have none (see the module's docstring)."""
    saved = {name: os.environ.pop(name) for name in GO_PROXY_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def import_neonize() -> Neonize:
    """Import neonize once and return what the gateway uses, leaving the root logger as it
    was (neonize's import calls `logging.basicConfig`, adding a handler and setting INFO)."""
    global _neonize  # noqa: PLW0603 - a process-wide, import-once cache
    with _import_lock:
        if _neonize is not None:
            return _neonize
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        try:
            with _without_proxy_environment():
                import neonize.events  # noqa: PLC0415
                from neonize.client import ClientFactory as GoClientFactory  # noqa: PLC0415
                from neonize.client import NewClient, ProxySettings  # noqa: PLC0415
                from neonize.exc import NeonizeError, SendMessageError  # noqa: PLC0415
                from neonize.proto import Neonize_pb2  # noqa: PLC0415
                from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message  # noqa: PLC0415
                from neonize.utils.enum import (  # noqa: PLC0415
                    ChatPresence,
                    ChatPresenceMedia,
                    ClientName,
                )
                from neonize.utils.jid import Jid2String, JIDToNonAD, build_jid  # noqa: PLC0415
                from neonize.utils.message import extract_text  # noqa: PLC0415
        finally:
            root.setLevel(level)
            root.handlers[:] = handlers
        # sessiond sends text only: neonize's warning that ffmpeg (for media) is missing,
        # logged at every connect, would only confuse an operator.
        logging.getLogger("neonize.utils.ffmpeg").setLevel(logging.ERROR)
        _neonize = Neonize(
            new_client=NewClient,
            client_factory=GoClientFactory,
            events=neonize.events,
            pb=Neonize_pb2,
            message=Message,
            jid_to_string=Jid2String,
            jid_to_non_ad=JIDToNonAD,
            build_jid=build_jid,
            extract_text=extract_text,
            client_name=ClientName,
            neonize_error=NeonizeError,
            send_message_error=SendMessageError,
            session_client=_define_session_client(NewClient),
            proxy_settings=ProxySettings,
            chat_presence=ChatPresence,
            chat_presence_media=ChatPresenceMedia,
        )
        return _neonize


def _define_session_client(new_client: Any) -> Any:
    class SessionClient(new_client):  # type: ignore[misc]
        """A `NewClient` that hands whatsmeow's login status to `on_login_status`.

        neonize 0.5.2 passes the QR channel's end states (``success``, ``timeout``,
        ``err-client-outdated``, ``err-scanned-without-multidevice``, ``error``...) to the
        private ``__onLoginStatus``, which only prints a pointer. `connect()` looks the
        callback up as ``self._NewClient__onLoginStatus`` (name mangling), so this override
        receives them; it is the only way to learn that the QR codes ran out.
        """

        on_login_status: Callable[[str], None] | None = None

        def _NewClient__onLoginStatus(self, uuid: int | None, status: int | None) -> None:  # noqa: N802
            text = ctypes.string_at(status).decode("utf-8", "replace") if status else ""
            callback = self.on_login_status
            if callback is not None:
                callback(text)

    return SessionClient


def session_client_class() -> Any:
    """The `NewClient` subclass the gateway builds; a `client_factory` must return one."""
    return import_neonize().session_client


def default_factory(
    store_dsn: str, *, jid: Any = None, uuid: str | None = None, new_device: bool = False
) -> Any:
    return session_client_class()(store_dsn, jid=jid, uuid=uuid, new_device=new_device)


def spawn_daemon(target: Callable[[], None], name: str) -> None:
    threading.Thread(target=target, name=name, daemon=True).start()


#: The longest a client start keeps the others out of Go (its map writes take milliseconds,
#: then it may wait on the network).
GO_ENTRY_HOLD = 0.25


class GoEntry:
    """One neonize client at a time in the phase where Go writes its unsynchronised maps.

    `enter` waits until the previous entrant has passed that phase (it sets its event when Go
    answers: the call returned, or a first callback came, or at most `hold` seconds), then
    returns the caller's own event, to set in turn.
    """

    def __init__(self, hold: float = GO_ENTRY_HOLD) -> None:
        self.hold = hold
        self._lock = threading.Lock()
        self._current: threading.Event | None = None

    def enter(self) -> threading.Event:
        with self._lock:
            previous = self._current
            if previous is not None:
                previous.wait(self.hold)
            self._current = threading.Event()
            return self._current

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Run a short Go call that writes the maps (``Stop``) alone."""
        passed = self.enter()
        try:
            yield
        finally:
            passed.set()


#: Go's maps are the process's: every gateway of the process shares the entry.
GO_ENTRY = GoEntry()
