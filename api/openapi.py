"""What Litestar's generated OpenAPI document cannot say by itself, added once per app.

- Request bodies are described by msgspec's own JSON Schema of the body Structs: it is exactly
  what the decoder enforces (unknown fields refused, label patterns, at most 16 labels), where
  Litestar's generator drops those constraints.
- A session name carries the domain's rule (trimmed of surrounding whitespace, then printable
  characters only) as a pattern, so that a schema-valid name is one the service accepts.
- A body that may be left out (``data: ... = None``) is marked ``required: false``.
- An uptime is a number from 0 to 100, or null (the generator drops the bounds of a member
  of a union).
- Every operation that takes a key may answer 429: the throttle of failed authentications
  covers every route (`api.auth.failure_throttle`), not only those with a rate limit.
- Every operation that takes a key names the scope a session key needs for it
  (`api.scopes`): as ``x-required-scope``, in its security requirement's list (OpenAPI 3.1
  allows role names there for any scheme) and in its description; ``admin`` for the routes
  of the admin key alone. Each may answer 403 (a scope the key lacks, or the admin's route).

The document is built when the app is, so a route that cannot be described fails at start-up,
not on the first ``GET /schema/openapi.json``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    PathItem,
    RequestBody,
    Schema,
)
from litestar.routes import HTTPRoute

from api.schemas import Body
from api.scopes import ADMIN_ONLY, required_scope

REF_TEMPLATE = "#/components/schemas/{name}"

# (component, property): text fields whose domain rule is "trimmed, then printable".
PRINTABLE_TEXT_FIELDS = {("CreateSessionIn", "name")}
# (component, property): uptime figures, `api.schemas.Percentage | None`.
PERCENTAGE_FIELDS = {
    ("MetricsOut", "uptime"),
    ("UptimeBucketOut", "uptime"),
    ("UptimeSeriesOut", "uptime"),
}


#: What else a 403 of the operations needing a scope may mean.
FORBIDDEN_ALSO = {
    "keys:manage": (
        "; or the new key would have a scope or an expiry beyond the calling key's own "
        "(`key-exceeds-issuer`)"
    ),
}


@dataclass
class ScopedOperation(Operation):
    """An operation that names the scope a session key needs for it."""

    required_scope: str | None = field(default=None, metadata={"alias": "x-required-scope"})


@dataclass
class JsonSchema(Schema):
    """A component given as a ready JSON Schema document."""

    document: dict[str, Any] = field(default_factory=dict)

    def to_schema(self) -> dict[str, Any]:
        return self.document


def _char(code: int) -> str:
    # Escape only what is special inside a class in both Python's and ECMA-262's syntax.
    char = chr(code)
    return "\\" + char if char in "\\[]^-" else char


def _class(ranges: list[tuple[int, int]]) -> str:
    parts = (_char(low) if low == high else f"{_char(low)}-{_char(high)}" for low, high in ranges)
    return "[" + "".join(parts) + "]"


def _ranges(flags: bytes | bytearray) -> list[tuple[int, int]]:
    return [(m.start(), m.end() - 1) for m in re.finditer(rb"\x01+", flags)]


@cache
def printable_text_pattern() -> str:
    """A regular expression of `domain.values.clean_name`'s rule, for this Python's Unicode.

    The text, once trimmed of whitespace (``str.strip``), is not empty and every character is
    printable (``str.isprintable``). The only printable whitespace is the ASCII space, so the
    trimmed text is runs of printable non-space characters, spaces between them. Each character
    class appears once: fuzzers expand a class character by character.
    """
    printable = bytearray(map(str.isprintable, map(chr, range(0x110000))))
    printable[0x20] = 0
    visible = _class(_ranges(printable))
    blank = _class(_ranges(bytes(map(str.isspace, map(chr, range(0x110000))))))
    return f"^{blank}*(?: *{visible})+{blank}*$"


def _body_structs() -> list[type[Body]]:
    found: list[type[Body]] = []
    pending = list(Body.__subclasses__())
    while pending:
        struct = pending.pop()
        found.append(struct)
        pending.extend(struct.__subclasses__())
    return sorted(found, key=lambda struct: struct.__name__)


def request_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of every request body Struct, keyed by component name."""
    _, components = msgspec.json.schema_components(_body_structs(), ref_template=REF_TEMPLATE)
    for component, prop in PRINTABLE_TEXT_FIELDS:
        components[component]["properties"][prop]["pattern"] = printable_text_pattern()
    return components


def _operations(path_item: PathItem, methods: set[str]) -> list[Operation]:
    found = (getattr(path_item, method.lower(), None) for method in methods)
    return [operation for operation in found if isinstance(operation, Operation)]


def _bound_percentages(schemas: dict[str, Schema]) -> None:
    for component, prop in PERCENTAGE_FIELDS:
        properties = schemas[component].properties
        assert properties is not None
        described = properties[prop]
        assert isinstance(described, Schema)
        properties[prop] = Schema(
            one_of=[
                Schema(type=OpenAPIType.NUMBER, minimum=0, maximum=100),
                Schema(type=OpenAPIType.NULL),
            ],
            description=described.description,
        )


def complete_openapi(app: Litestar) -> None:
    """Build the app's OpenAPI document now, and add what the generator leaves out."""
    openapi = app.openapi_schema
    if openapi.components.schemas is not None:
        schemas = openapi.components.schemas
        for name, document in request_schemas().items():
            if name in schemas:
                schemas[name] = JsonSchema(document=document)
        _bound_percentages(schemas)
    _throttled_everywhere(openapi.paths or {})
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or openapi.paths is None:
            continue
        path_item = openapi.paths.get(route.path_format)
        if path_item is None:
            continue
        for handler in route.route_handlers:
            if handler.include_in_schema and handler.resolve_security():
                for method in handler.http_methods:
                    _name_scope(path_item, method, required_scope(handler))
            data = handler.parsed_fn_signature.parameters.get("data")
            if data is None or not data.has_default:
                continue
            for operation in _operations(path_item, set(handler.http_methods)):
                if isinstance(operation.request_body, RequestBody):
                    operation.request_body.required = False


def _throttled_everywhere(paths: dict[str, PathItem]) -> None:
    operations = [
        operation
        for item in paths.values()
        for operation in _operations(item, {"GET", "POST", "PUT", "PATCH", "DELETE"})
    ]
    template = next(
        (o.responses["429"] for o in operations if o.responses and "429" in o.responses), None
    )
    if template is None:
        return
    for operation in operations:
        if operation.security and operation.responses is not None:
            operation.responses.setdefault("429", copy.deepcopy(template))


def _name_scope(path_item: PathItem, method: str, scope: str) -> None:
    operation = getattr(path_item, method.lower(), None)
    if not isinstance(operation, Operation):
        return
    values = {f.name: getattr(operation, f.name) for f in fields(Operation)}
    scoped = ScopedOperation(**values, required_scope=scope)
    if scope == ADMIN_ONLY:
        said = "Needs the admin key: no session key may call it (scope `admin`)."
    else:
        said = (
            f"Needs the scope `{scope}` from a session key (the admin key, and a session key "
            "created without scopes, hold every scope)."
        )
    scoped.description = f"{operation.description}\n\n{said}" if operation.description else said
    scoped.security = [{name: [scope] for name in r} for r in operation.security or []]
    responses = scoped.responses
    unauthorized = responses.get("401") if responses is not None else None
    if responses is not None and isinstance(unauthorized, OpenAPIResponse):
        # The same problem+json body as the 401's.
        forbidden = copy.deepcopy(unauthorized)
        forbidden.description = (
            "The operation needs the admin key (`admin-only`), or a scope the key lacks "
            "(`scope-missing`: its `requiredScope` names it)" + FORBIDDEN_ALSO.get(scope, "")
        )
        responses["403"] = forbidden
    setattr(path_item, method.lower(), scoped)
