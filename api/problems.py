"""Every error becomes an RFC 9457 ``application/problem+json`` answer, mapped in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from application.errors import (
    ApplicationError,
    ConcurrentChange,
    GatewayError,
    GatewayFailed,
    GatewayUnavailable,
    SessionNotFound,
    SimulatorError,
)
from domain.access import ExceedsIssuer
from domain.errors import (
    DomainError,
    IdempotencyKeyReused,
    InvalidTransition,
    InvalidValue,
    SessionIsDeleted,
    UnknownApiKey,
)

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
}


@dataclass
class ProblemError(Exception):
    """An error answered as problem+json; `code` makes the stable `type` URI."""

    status: int
    code: str
    detail: str
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def problem_type(code: str) -> str:
    return f"urn:sessiond:problem:{code}"


def problem_response(error: ProblemError, request: Request[Any, Any, Any]) -> Response[Any]:
    body: dict[str, Any] = {
        "type": problem_type(error.code),
        "title": _TITLES.get(error.status, "Error"),
        "status": error.status,
        "detail": error.detail,
        "instance": request.url.path,
        **error.extra,
    }
    return Response(body, status_code=error.status, media_type=PROBLEM_JSON, headers=error.headers)


def _domain_problem(error: DomainError) -> ProblemError:
    if isinstance(error, SessionIsDeleted):
        return ProblemError(404, "session-not-found", "no such session (it has been deleted)")
    if isinstance(error, UnknownApiKey):
        return ProblemError(404, error.code, str(error))
    if isinstance(error, ExceedsIssuer):
        return ProblemError(403, error.code, str(error))
    if isinstance(error, InvalidTransition):
        return ProblemError(409, error.code, str(error))
    if isinstance(error, (InvalidValue, IdempotencyKeyReused)):
        return ProblemError(422, error.code, str(error))
    return ProblemError(409, error.code, str(error))


def _http_problem(error: HTTPException, request: Request[Any, Any, Any]) -> ProblemError:
    status = error.status_code
    headers = {k: str(v) for k, v in (error.headers or {}).items()}
    if isinstance(error, ValidationException):
        return _validation_problem(error, request)
    if status == 400 and isinstance(error.__cause__, SerializationException):
        return ProblemError(
            400, "malformed-json", f"the request body is not valid JSON: {error.detail}"
        )
    if status == 405:
        allowed = headers.get("allow") or headers.get("Allow") or ""
        detail = f"{request.method} is not allowed on this path"
        return ProblemError(
            405, "method-not-allowed", f"{detail}; use {allowed}" if allowed else detail, headers
        )
    if status == 413:
        limit = request.app.request_max_body_size
        detail = "the request body is too large"
        if isinstance(limit, int):
            detail = f"the request body is larger than the {limit} bytes allowed"
        return ProblemError(413, "body-too-large", detail)
    if status == 404:
        return ProblemError(404, "not-found", f"no route matches {request.url.path}", headers)
    code = {
        400: "bad-request",
        401: "unauthorized",
        415: "unsupported-media-type",
    }.get(status, "http-error")
    return ProblemError(status, code, str(error.detail), headers)


def _wire_name(request: Request[Any, Any, Any], name: str) -> str:
    """A parameter's name as the client sends it (``asOf``), not the handler's (``as_of``)."""
    handler = request.scope.get("route_handler")
    found = handler.parsed_fn_signature.parameters.get(name) if handler is not None else None
    alias = getattr(getattr(found, "kwarg_definition", None), "name", None)
    return alias if isinstance(alias, str) else name


def _validation_problem(
    error: ValidationException, request: Request[Any, Any, Any]
) -> ProblemError:
    """A body that does not fit its schema is 422; a bad query or path parameter is 400."""
    items = [item for item in error.extra if isinstance(item, dict)] if error.extra else []
    if not items:
        return ProblemError(400, "invalid-parameter", str(error.detail))
    parts = []
    for item in items:
        where, message = item.get("key") or item.get("source") or "request", item.get("message")
        if item.get("source") == "query" and item.get("key"):
            where = _wire_name(request, item["key"])
        if item.get("source") == "body" and where == "data":
            if message == "'data'":  # the body was left out: there is no `data` to read
                parts.append("the request body is missing; send a JSON object")
                continue
            where = "body"
        parts.append(f"{where}: {message or 'not valid'}")
    detail = "; ".join(parts)
    if all(item.get("source") == "body" for item in items):
        return ProblemError(422, "invalid-request", detail)
    return ProblemError(400, "invalid-parameter", detail)


def handle_exception(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """The one exception handler of the app."""
    return problem_response(as_problem(request, error), request)


def as_problem(request: Request[Any, Any, Any], error: Exception) -> ProblemError:
    """The problem an error is answered with (the dashboard renders the same one as HTML)."""
    if isinstance(error, ProblemError):
        problem = error
    elif isinstance(error, DomainError):
        problem = _domain_problem(error)
    elif isinstance(error, SessionNotFound):
        problem = ProblemError(404, "session-not-found", "no such session")
    elif isinstance(error, (ConcurrentChange, SimulatorError, GatewayError)):
        problem = ProblemError(409, error.code, str(error))
    elif isinstance(error, GatewayFailed):
        # What failed is the worker's or a library's text: the log has it, never the client.
        log.error("the gateway worker failed on %s %s: %s", request.method, request.url.path, error)
        problem = ProblemError(
            502,
            error.code,
            "the gateway worker running the session failed doing this; it was logged",
        )
    elif isinstance(error, GatewayUnavailable):
        problem = ProblemError(503, error.code, str(error), {"Retry-After": "2"})
    elif isinstance(error, ApplicationError):
        problem = ProblemError(409, error.code, str(error))
    elif isinstance(error, HTTPException):
        problem = _http_problem(error, request)
    else:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        problem = ProblemError(500, "internal-error", "an unexpected error happened; it was logged")
    return problem
