"""Request bodies decoded strictly, so that every kind of bad body is the client's error.

Litestar decodes a JSON body to plain values, then converts them to the handler's type in lax
mode, where the string ``"10"`` passes for the integer ``10``. Here the plain values are
converted in strict mode: a wrong type is a 422 naming the field. JSON Schema counts ``10.0``
as an integer, so integral numbers written with a fraction are taken as integers. Bytes that
are not UTF-8 and nesting deeper than the interpreter allows, which msgspec reports with
exceptions Litestar does not expect (a 500), are malformed JSON (a 400).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import State
from litestar.exceptions import SerializationException, ValidationException


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
