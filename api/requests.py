"""Request bodies decoded strictly, so that every kind of bad body is the client's error.

Litestar decodes a JSON body to plain values, then converts them to the handler's type in lax
mode, where the string ``"10"`` passes for the integer ``10``. Here the plain values are
converted in strict mode: a wrong type is a 422 naming the field. JSON Schema counts ``10.0``
as an integer, so integral numbers written with a fraction are taken as integers. Bytes that
are not UTF-8 and nesting deeper than the interpreter allows, which msgspec reports with
exceptions Litestar does not expect (a 500), are malformed JSON (a 400).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import SerializationException, ValidationException
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

#: How much of a body left unread by an early answer (401, 404, 413, 429...) is read and
#: thrown away before that answer is sent, and for how long at most.
DRAIN_BYTES = 8 * 1024 * 1024
DRAIN_SECONDS = 5.0


def _field(path: str) -> str:
    """``$.rateLimit.requestsPerMinute`` as ``rateLimit.requestsPerMinute``; ``$`` as ``body``."""
    path = path.replace("`", "")
    key, _, container = path.partition(" in ")
    if container:  # a key of a mapping, e.g. "key in $.labels"
        return f"{_field(container)} ({key})"
    return path.removeprefix("$").removeprefix(".") or "body"


def invalid_body(error: msgspec.ValidationError) -> ValidationException:
    message, _, path = str(error).partition(" - at ")
    return ValidationException(
        detail="the request body is not valid",
        extra=[{"message": message, "key": _field(path or "$"), "source": "body"}],
    )


def _integral(value: Any) -> Any:
    """The decoded JSON with every float that has no fraction (``10.0``) as an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


class JsonRequest(Request[Any, Any, State]):
    """A request whose JSON body is converted to the handler's ``data`` type, strictly."""

    def _body_type(self) -> Any:
        data = self.route_handler.parsed_fn_signature.parameters.get("data")
        return None if data is None else data.annotation

    async def json(self) -> Any:
        body_type = self._body_type()
        try:
            if body_type is None:
                return await super().json()
            value = msgspec.json.decode(await self.body() or b"null")
            return msgspec.convert(_integral(value), type=body_type, strict=True)
        except msgspec.ValidationError as error:
            raise invalid_body(error) from error
        except msgspec.DecodeError as error:
            raise SerializationException(str(error)) from error
        except UnicodeDecodeError as error:
            raise SerializationException(f"it is not UTF-8 ({error.reason})") from error
        except RecursionError as error:
            raise SerializationException("it is nested too deeply") from error


def _sends_body(scope: Scope) -> bool:
    """Whether the request comes with a body that the client sends without waiting for us."""
    sends = False
    for name, value in scope["headers"]:
        if name == b"expect":
            return False  # ``100-continue``: nothing comes until the body is read
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            sends = True
    return sends


async def _drain(receive: Receive) -> bool:
    """Read and drop the rest of the body: True once it is all read, False past the bounds."""
    left = DRAIN_BYTES
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while left >= 0:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return True
                left -= len(message.get("body", b""))
    except TimeoutError:
        pass
    return False


def read_unread_bodies(app: ASGIApp) -> ASGIApp:
    """Read what is left of a request's body before its answer is sent.

    An answer given before the body is read (a refused key, an unknown path, a body over the
    limit) would otherwise leave the rest of the body unread when the connection closes, and
    a TCP connection closed with unread data is reset: the client, still writing or not yet
    reading, loses the answer ("server disconnected without sending a response"). Up to
    `DRAIN_BYTES` in `DRAIN_SECONDS` are read and dropped (never kept); past that the answer
    closes the connection (``connection: close``).
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or not _sends_body(scope):
            await app(scope, receive, send)
            return
        done = False

        async def tracked() -> ReceiveMessage:  # done once the body's last part is read
            nonlocal done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        async def answer(message: Message) -> None:
            nonlocal done
            if message["type"] == "http.response.start" and not done:
                done = True
                if not await _drain(receive):
                    headers = [*message.get("headers", ()), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        await app(scope, tracked, answer)

    return wrapped
