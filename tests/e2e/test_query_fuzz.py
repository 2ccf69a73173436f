"""Every query parameter of every route, fuzzed with hypothesis on a real server: 0 answers of
500.

Driven from the served OpenAPI document: each operation that takes query parameters is called
with the right kind of key (the admin key where the route is the admin's, else the key of the
session it names) and real ids, so the handlers are really reached; each parameter is left
out, valid for its schema (dates near now, so that some answers are 200), or hostile (edge
dates, offsets beyond a day, no offset, numbers beyond 64 bits, text, repeated). The
dashboard's list (signed in) is fuzzed the same way. Each operation must answer 200 at least
once, and a refusal is always a 4xx problem.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from tests.e2e.conftest import ADMIN, Sessiond, create_session, key_of
from tests.e2e.steps import signed_in

EXAMPLES = 150  # per operation
HOSTILE = [
    "",
    " ",
    "0",
    "-1",
    "-0",
    "1.5",
    "1e309",
    "NaN",
    "Infinity",
    "9" * 20,
    "-" + "9" * 30,
    "0x10",
    "true",
    "null",
    "[]",
    "{}",
    "%00",
    "\x00",
    "é",
    "sess_" + "0" * 32,
    "0001-01-01",
    "9999-12-31",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00",
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00-23:59",
    "9999-12-31T23:59:59.999999Z",
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59+23:59",
    "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00+99:99",
    "2026-01-01T00:00:00-00:00",
    "2026-02-30T00:00:00Z",
    "2026-12-31T23:59:60Z",
    "10000-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z",
    "2026-01-01T00:00:00.1234567890Z",
    "1733300000",
    "-62135596800",
    "253402300800",
    "now",
]
OFFSETS = [UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12, minutes=-30))]


def _merged(schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null alternative of a ``oneOf`` with the bounds written beside it."""
    options = [o for o in schema.get("oneOf", [schema]) if o.get("type") != "null"]
    merged = {**schema, **(options[0] if options else {})}
    merged.pop("oneOf", None)
    return merged


def dates_near(now: datetime) -> SearchStrategy[str]:
    """Instants around the test (the session's life), with an offset."""
    instants = st.datetimes(
        min_value=(now - timedelta(days=40)).replace(tzinfo=None),
        max_value=(now + timedelta(days=2)).replace(tzinfo=None),
    )
    offsets = st.sampled_from(OFFSETS)
    stamped = st.builds(
        lambda d, z: d.replace(tzinfo=UTC).astimezone(z).isoformat(), instants, offsets
    )
    return st.one_of(stamped, st.just(now.isoformat()))


def valid(schema: dict[str, Any], now: datetime) -> SearchStrategy[Any]:
    """Values the parameter's schema allows."""
    merged = _merged(schema)
    kind = merged.get("type")
    if "enum" in merged:
        return st.sampled_from([v for v in merged["enum"] if v is not None])
    if kind == "integer":
        low, high = merged.get("minimum"), merged.get("maximum")
        return st.integers(
            min_value=None if low is None else int(low),
            max_value=None if high is None else int(high),
        ).map(str)
    if kind == "string" and merged.get("format") == "date-time":
        return dates_near(now)
    if kind == "string" and "pattern" in merged:
        return st.from_regex(merged["pattern"], fullmatch=True)
    if kind == "string":
        return st.text(max_size=int(merged.get("maxLength", 64)))
    if kind == "array":
        return st.lists(valid(merged["items"], now), max_size=3)
    raise AssertionError(f"a query parameter of an unknown kind: {schema}")


def hostile() -> SearchStrategy[Any]:
    one = st.one_of(
        st.sampled_from(HOSTILE),
        st.text(max_size=30),
        st.integers(min_value=-(2**80), max_value=2**80).map(str),
    )
    return st.one_of(one, st.lists(one, min_size=2, max_size=3))


def queries(parameters: list[dict[str, Any]], now: datetime) -> SearchStrategy[dict[str, Any]]:
    """Each parameter left out, valid or hostile."""
    fields = {
        p["name"]: st.one_of(st.none(), valid(p.get("schema", {}), now), hostile())
        for p in parameters
    }
    return st.fixed_dictionaries(fields).map(
        lambda chosen: {k: v for k, v in chosen.items() if v is not None}
    )


def fuzz(
    client: httpx.Client,
    path: str,
    headers: Mapping[str, str],
    strategy: SearchStrategy[Any],
    *,
    stream: bool = False,
) -> Counter[int]:
    """Send every example; return how many answers of each status; fail on a 500. A `stream`
    (Server-Sent Events, never ending) is closed once its answer began."""
    seen: Counter[int] = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(params=strategy)
    def one(params: dict[str, Any]) -> None:
        text = ""
        if stream:
            with client.stream("GET", path, params=params, headers=headers) as answer:
                if answer.status_code == 200:
                    assert answer.headers["content-type"].startswith("text/event-stream")
                    assert next(answer.iter_bytes()).startswith(b":")
                else:
                    text = answer.read().decode(errors="replace")
        else:
            answer = client.get(path, params=params, headers=headers)
            text = answer.text
        seen[answer.status_code] += 1
        where = f"GET {path} {params!r}: {answer.status_code} {text[:300]}"
        assert answer.status_code < 500, where
        if answer.status_code >= 400 and not path.startswith("/dashboard"):
            assert answer.headers["content-type"].startswith("application/problem+json"), where

    one()
    return seen


def test_no_query_parameter_of_any_route_gets_a_500(
    start: Callable[..., Sessiond], sessiond_env: dict[str, str]
) -> None:
    server = start("serve", sessiond_env)
    with server.client() as client:
        document = client.get("/schema/openapi.json").json()
        created = create_session(client, "Fuzzed", rateLimit={"requestsPerMinute": 100_000})
        sid = created["sessionId"]
        key = key_of(created)
        scanned = client.post(f"/simulator/sessions/{sid}/scan", headers=ADMIN)
        for _ in range(100):  # the worker picks the session up within a tick or two
            if scanned.status_code == 200:
                break
            scanned = client.post(f"/simulator/sessions/{sid}/scan", headers=ADMIN)
        assert scanned.status_code == 200, scanned.text
        queued = client.post(
            f"/sessions/{sid}/messages", json={"to": "+14155550123", "text": "hi"}, headers=key
        )
        assert queued.status_code == 202, queued.text
        webhook = client.post(
            "/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["session.stopped"]},
            headers=key,
        )
        assert webhook.status_code == 201, webhook.text
        rule = client.post("/alerts/rules", json={"condition": "silent"}, headers=key)
        assert rule.status_code == 201, rule.text
        ids = {
            "session_id": sid,
            "webhook_id": webhook.json()["webhookId"],
            "rule_id": rule.json()["ruleId"],
        }
        now = datetime.now(UTC)

        fuzzed: dict[str, Counter[int]] = {}
        for path, item in document["paths"].items():
            for method, operation in item.items():
                parameters = [p for p in operation.get("parameters", []) if p["in"] == "query"]
                if method != "get" or not parameters:
                    continue
                # An admin-only route says so with its 403; the others take the session's key.
                headers = ADMIN if "403" in operation["responses"] else key
                url = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)
                stream = "text/event-stream" in operation["responses"]["200"]["content"]
                fuzzed[path] = fuzz(client, url, headers, queries(parameters, now), stream=stream)

    dashboard = signed_in(server)
    page = {"name": "page", "schema": {"type": "integer", "minimum": 1, "maximum": 100_000}}
    status = {
        "name": "status",
        "schema": {"type": "string", "enum": ["all", "connected", "stopped", "expired"]},
    }
    try:
        fuzzed["/dashboard/"] = fuzz(dashboard, "/dashboard/", {}, queries([page, status], now))
    finally:
        dashboard.close()

    # Check every operation with query parameters was fuzzed, and each reached its handler.
    assert {
        "/sessions",
        "/sessions/{session_id}",
        "/sessions/{session_id}/messages",
        "/sessions/{session_id}/events",
        "/sessions/{session_id}/uptime",
        "/events",
        "/events/stream",
        "/sessions/{session_id}/events/stream",
        "/webhooks/{webhook_id}/deliveries",
        "/dashboard/",
    } <= fuzzed.keys()
    for path, statuses in fuzzed.items():
        assert statuses[200] > 0, (path, statuses)
        assert sum(statuses.values()) >= EXAMPLES, (path, statuses)
    assert server.process.poll() is None
    assert "Traceback" not in server.log_path.read_text(errors="replace")
    print({path: dict(statuses) for path, statuses in fuzzed.items()})
