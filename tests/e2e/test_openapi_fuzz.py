"""The OpenAPI document is truthful: schemathesis fuzzes a real server with its default checks.

Two runs against one `sessiond serve` on 127.0.0.1: one with a session key (its own session,
the admin-only routes answer 403), then one with the admin key (every route). Real session and
key ids are handed to the fuzzer through schemathesis dictionaries, so half of the generated
requests reach existing resources and the other half random ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.e2e.conftest import ADMIN, create_session, key_of

SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]  # the fuzzer installed with this Python
SEED = 20261125
MAX_EXAMPLES = 30
RUN_TIMEOUT = 240.0
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def _accepting(statuses: list[int], *paths: str) -> list[str]:
    """The config lines by which these operations may answer valid data with `statuses` (a
    4xx that no schema can foresee)."""
    expected = json.dumps([str(status) for status in statuses])
    return [
        line
        for path in paths
        for line in (
            "[[operations]]",
            f'include-path = "{path}"',
            "[operations.checks.positive_data_acceptance]",
            f"expected-statuses = {expected}",
        )
    ]


def _config(session_ids: list[str], key_ids: list[str]) -> str:
    """A schemathesis.toml that offers the real ids half of the time."""
    return "\n".join(
        [
            "[dictionaries.session_ids]",
            f"values = {json.dumps(session_ids)}",
            "[dictionaries.key_ids]",
            f"values = {json.dumps(key_ids)}",
            "[parameters]",
            '"path.session_id" = { dictionary = "session_ids", probability = 0.5 }',
            '"path.key_id" = { dictionary = "key_ids", probability = 0.5 }',
            # Whether a phone number exists in its country is beyond any JSON schema: the
            # schema gives its shape, phonenumbers decides, and 422 says why it refused.
            "[[operations]]",
            'include-path = "/sessions/{session_id}/pair-code"',
            "[operations.checks.positive_data_acceptance]",
            'expected-statuses = ["200", "401", "403", "404", "409", "422", "429", "503"]',
            # It asks the worker that runs the session, which may not answer in time (the
            # fuzzer stops and reconnects the session meanwhile): the documented 503
            # gateway-unavailable with Retry-After, by design, not a server error.
            "[operations.checks.not_a_server_error]",
            'expected-statuses = ["2xx", "3xx", "4xx", "503"]',
            # The same for a message's recipient (phonenumbers), a text of only spaces, and an
            # idempotency key sent again with another text (422 idempotency-key-reused).
            "[[operations]]",
            'include-path = "/sessions/{session_id}/messages"',
            "[operations.checks.positive_data_acceptance]",
            'expected-statuses = ["200", "202", "401", "403", "404", "409", "422", "429", "503"]',
            # An ack for a message of another session, or not sent yet (404, 409): beyond a
            # schema too; so is an inbound sender's phone number (422).
            *(
                line
                for action in ("ack", "inbound")
                for line in (
                    "[[operations]]",
                    f'include-path = "/simulator/sessions/{{session_id}}/{action}"',
                    "[operations.checks.positive_data_acceptance]",
                    'expected-statuses = ["200", "401", "403", "404", "409", "422", "502", "503"]',
                    "[operations.checks.not_a_server_error]",
                    'expected-statuses = ["2xx", "3xx", "4xx", "502", "503"]',
                )
            ),
            # A webhook's URL must be http(s) with a host, no credentials and no private
            # literal address; a replay's window must start before it ends.
            *_accepting(
                [200, 201, 202, 204, 401, 403, 404, 409, 422, 429, 503],
                "/webhooks",
                "/webhooks/{webhook_id}",
                "/webhooks/{webhook_id}/replay",
            ),
            # Whether a string is a proxy URL (a scheme, a host, a port in range) is decided by
            # the service, which says in a 422 what is wrong; at creation too.
            *_accepting([200, 201, 204, 401, 403, 404, 409, 422, 429, 503], "/sessions"),
            *_accepting(
                [200, 201, 204, 401, 403, 404, 409, 422, 429, 503], "/sessions/{session_id}/proxy"
            ),
            # A session's proxy is a setting of the session, not a resource of its own: once
            # cleared (DELETE), GET answers 200 with `"url": null`, as documented.
            "[operations.checks.use_after_free]",
            "enabled = false",
            # An alert rule's threshold, window and kind must fit its condition (a threshold
            # for disconnected, none for silent…): the service says which field in a 422.
            *_accepting(
                [200, 201, 204, 401, 403, 404, 409, 422, 429, 503],
                "/alerts/rules",
                "/alerts/rules/{rule_id}",
            ),
            # A new key's expiry must be in the future, and given one way (`expiresAt` or
            # `ttlSeconds`, not both): no schema says that either.
            *_accepting(
                [200, 201, 401, 403, 404, 409, 422, 429, 503], "/sessions/{session_id}/keys"
            ),
            # A window must start before it ends and fit 10,000 buckets: no schema says that.
            *_accepting([200, 400, 401, 404, 429, 503], "/sessions/{session_id}/uptime"),
            # The live event streams never end by themselves: schemathesis would wait for
            # each answer's end until its timeout. Their query parameters are fuzzed by
            # tests/e2e/test_query_fuzz.py, which reads a stream's first bytes and closes it.
            *(
                line
                for path in ("/events/stream", "/sessions/{session_id}/events/stream")
                for line in ("[[operations]]", f'include-path = "{path}"', "enabled = false")
            ),
            "",
        ]
    )


def _local_only_env() -> dict[str, str]:
    """This environment without proxies, so that every request goes straight to 127.0.0.1."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def run_schemathesis(
    url: str, key: str, session_ids: list[str], key_ids: list[str], workdir: Path
) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "schemathesis.toml"
    config.write_text(_config(session_ids, key_ids))
    args = [
        *SCHEMATHESIS,
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{url}/schema/openapi.json",
        "--url",
        url,
        "--header",
        f"x-api-key: {key}",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "2",
        "--request-timeout",
        "15",
        "--generation-database",
        "none",
    ]
    return subprocess.run(
        args,
        cwd=workdir,
        env=_local_only_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def _report(result: subprocess.CompletedProcess[str], server: Any) -> str:
    return (
        f"schemathesis exited with {result.returncode}\n{result.stdout[-30000:]}\n"
        f"{result.stderr[-5000:]}\n--- server log ---\n{server.log()}"
    )


def _summary(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stdout.splitlines()
    return "\n".join(line for line in lines if "generated" in line or "issues" in line)


def _assert_only_local(document: dict[str, Any]) -> None:
    """The document sends the fuzzer nowhere else: relative servers, no external references."""
    for server in document.get("servers", []):
        assert not urlsplit(server["url"]).netloc, server
    text = json.dumps(document)
    assert '"$ref": "http' not in text
    assert '"$ref": "//' not in text


@pytest.mark.timeout(600)
def test_schemathesis_finds_nothing_with_its_default_checks(
    start: Any, sessiond_env: dict[str, str], tmp_path: Path
) -> None:
    began = time.monotonic()
    # The fuzzer sends refused keys on purpose, far more than ten a minute.
    server = start("serve", {**sessiond_env, "SESSIOND_AUTH_FAILURE_LIMIT": "1000000"})
    with server.client() as client:
        document = client.get("/schema/openapi.json").json()
        _assert_only_local(document)
        assert document["components"]["securitySchemes"]["apiKey"] == {
            "type": "apiKey",
            "name": "x-api-key",
            "in": "header",
        }

        keyed = create_session(client, "Fuzzed with its own key")
        spare = client.post(f"/sessions/{keyed['sessionId']}/keys", headers=ADMIN)
        assert spare.status_code == 201, spare.text
        raised = client.put(
            f"/sessions/{keyed['sessionId']}/rate-limit",
            json={"requestsPerMinute": 100_000},
            headers=ADMIN,
        )
        assert raised.status_code == 200, raised.text

        sessions = [
            create_session(client, "Support"),
            create_session(client, "Sales", labels={"region": "eu", "team": "sales"}),
            create_session(client, "Ops", rateLimit={"requestsPerMinute": 50}),
        ]

    # With a session key: its own session, a spare key of it (never the key in use).
    by_key = run_schemathesis(
        server.url,
        key_of(keyed)["x-api-key"],
        [keyed["sessionId"]],
        [spare.json()["keyId"]],
        tmp_path / "session-key",
    )
    assert by_key.returncode == 0, _report(by_key, server)

    # With the admin key: every route, on sessions of their own.
    by_admin = run_schemathesis(
        server.url,
        ADMIN_KEY,
        [s["sessionId"] for s in sessions],
        [s["apiKey"]["keyId"] for s in sessions],
        tmp_path / "admin-key",
    )
    assert by_admin.returncode == 0, _report(by_admin, server)

    # Check the server is still healthy after the fuzzing.
    assert httpx.get(server.url + "/health/ready", timeout=30).status_code == 200
    print(
        f"\nsession key: {_summary(by_key)}\nadmin key: {_summary(by_admin)}\n"
        f"in {time.monotonic() - began:.1f} s"
    )
