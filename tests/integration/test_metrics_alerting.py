"""sessiond's real `/metrics` against the shipped Prometheus rules and Grafana dashboard: every
metric and label value they query exists in a scrape; webhook endpoints disabled or failing
are counted from PostgreSQL; and a scrape taken with sessions restricted, banned, out of QR
codes, rate-limited and an endpoint disabled, fed to `promtool test rules` as input series,
fires exactly the alerts those states call for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import ADMIN, Api
from tests.integration.steps import connected_session, disabled_webhook, eventually, simulate
from tests.promtool import RULES, Sample, check_alerts, expected, samples_of, value
from tests.receiver import Answer, Receiver

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "sessiond.json"
#: Series Prometheus makes itself, not sessiond.
PROMETHEUS_OWN = {"up", "ALERTS"}
#: A selector in PromQL: a metric name and its label matchers in braces.
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {
        "SESSIOND_WEBHOOKS_ALLOW_PRIVATE": "only",
        "SESSIOND_WEBHOOK_RETRY_SCALE": "0.0001",
        "SESSIOND_WEBHOOK_TIMEOUT": "0.5",
        "SESSIOND_QR_FIRST_TIMEOUT": "3",
        "SESSIOND_QR_NEXT_TIMEOUT": "1",
        "SESSIOND_QR_MAX_CODES": "2",
    }


async def scrape(api: Api) -> list[Sample]:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    return samples_of(response.text)


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    """The queries of every panel, and of the variables (`label_values(metric, label)`)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Each metric an expression reads, with its label matchers."""
    found = [(name, MATCHER.findall(body)) for name, body in SELECTOR.findall(expr)]
    # Names without braces too (matchers, strings and ranges taken out first).
    bare = re.sub(r'\{[^}]*\}|\[[^]]*\]|"[^"]*"', " ", expr)
    found += [(word, []) for word in re.findall(r"\bsessiond_[A-Za-z0-9_]+\b", bare)]
    return found


def assert_exists(samples: list[Sample], exprs: list[str]) -> set[str]:
    names = {name for name, _, _ in samples}
    used: set[str] = set()
    for expr in exprs:
        for name, matchers in selectors(expr):
            if name in PROMETHEUS_OWN:
                continue
            used.add(name)
            assert name in names, f"{name} (in {expr!r}) is not in sessiond's /metrics"
            for label, op, wanted in matchers:
                if op == "=" and label != "job":
                    values = {got.get(label) for n, got, _ in samples if n == name}
                    assert wanted in values, f'{name}{{{label}="{wanted}"}}: only {values}'
    return used


async def test_every_metric_and_label_the_rules_and_the_dashboard_query_exists(api: Api) -> None:
    await connected_session(api, "Steady")
    samples = await scrape(api)
    used_by_rules = assert_exists(samples, rule_exprs())
    used_by_dashboard = assert_exists(samples, dashboard_exprs())
    # Check: the rules use the new figures, and the dashboard shows every sessiond metric.
    assert {
        "sessiond_sessions_down_longer_than",
        "sessiond_webhook_endpoint_failing_seconds_max",
        "sessiond_webhook_endpoints",
        "sessiond_session_requests_limited_total",
        "sessiond_session_requests_near_limit_total",
        "sessiond_messages_total",
    } <= used_by_rules
    assert used_by_dashboard == {name for name, _, _ in samples if name.startswith("sessiond_")}
    # A name that is not there is caught (the check is not vacuous).
    with pytest.raises(AssertionError):
        assert_exists(samples, ['max(sessiond_sessions_gone{status="connected"})'])
    with pytest.raises(AssertionError):
        assert_exists(samples, ['max(sessiond_sessions{status="asleep"})'])


def test_the_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
    assert any("ALERTS{" in expr for expr in dashboard_exprs())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


async def test_webhook_endpoints_disabled_and_failing_are_counted(api: Api, hook: Receiver) -> None:
    hook.default = Answer(503)
    failing = await register(api, hook.url + "/failing")
    await api.create_session("Tried")

    async def failing_counted() -> Any:
        samples = await scrape(api)
        return samples if value(samples, "sessiond_webhook_endpoints_failing") == 1 else None

    samples = await eventually(failing_counted)
    assert value(samples, "sessiond_webhook_endpoints", state="enabled") == 1
    assert value(samples, "sessiond_webhook_endpoints", state="disabled") == 0

    async def aged() -> Any:
        samples = await scrape(api)
        return samples if value(samples, "sessiond_webhook_endpoint_failing_seconds_max") else None

    await eventually(aged)
    # Check: an operator disables it: it is disabled, and no longer counted as failing.
    response = await api.client.patch(
        f"/webhooks/{failing['webhookId']}", json={"enabled": False}, headers=ADMIN
    )
    assert response.status_code == 200, response.text

    async def disabled() -> Any:
        samples = await scrape(api)
        gone = value(samples, "sessiond_webhook_endpoints", state="disabled") == 1
        return samples if gone else None

    samples = await eventually(disabled)
    assert value(samples, "sessiond_webhook_endpoints_failing") == 0
    assert value(samples, "sessiond_webhook_endpoint_failing_seconds_max") == 0


async def register(api: Api, url: str) -> dict[str, Any]:
    response = await api.client.post(
        "/webhooks", json={"url": url, "events": ["session.created"]}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# -- a real scrape through promtool -----------------------------------------------------------


async def test_a_real_scrape_fires_the_alerts_its_states_call_for(
    api: Api, hook: Receiver, tmp_path: Path
) -> None:
    limited = await connected_session(api, "Limited")
    put = await api.client.put(
        f"/sessions/{limited['sessionId']}/rate-limit",
        json={"requestsPerMinute": 2},
        headers=ADMIN,
    )
    assert put.status_code == 200, put.text
    logged_out = await connected_session(api, "Logged out")
    banned = await connected_session(api, "Banned")
    hook.default = Answer(410)
    gone = await register(api, hook.url + "/gone")  # after those sessions' session.created
    before = await scrape(api)
    assert value(before, "sessiond_webhook_endpoints", state="disabled") == 0

    # Check: the states that must fire, each made by the simulator or a client.
    await simulate(api, logged_out, "logout")
    await simulate(api, banned, "ban", seconds=3600)
    await api.create_session("Never scanned")  # its QR codes run out
    await disabled_webhook(api, gone["webhookId"])  # the 410 to that session.created
    answers = [
        (await api.client.get(f"/sessions/{limited['sessionId']}", headers=api.key(limited)))
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 429]

    async def settled() -> Any:
        samples = await scrape(api)
        states = [
            value(samples, "sessiond_sessions_restricted", kind="logged_out"),
            value(samples, "sessiond_sessions_restricted", kind="temporarily_banned"),
            value(samples, "sessiond_sessions", status="expired") >= 1,
            value(samples, "sessiond_webhook_endpoints", state="disabled"),
        ]
        return samples if states == [1, 1, True, 1] else None

    after = await eventually(settled)
    assert value(after, "sessiond_session_requests_limited_total") >= 1
    assert value(after, "sessiond_session_requests_near_limit_total") >= 1

    expired = value(after, "sessiond_sessions", status="expired")
    firing = {
        "SessiondSessionRestricted": [expected("SessiondSessionRestricted", 1, kind="logged_out")],
        "SessiondSessionTemporarilyBanned": [
            expected("SessiondSessionTemporarilyBanned", 1, kind="temporarily_banned")
        ],
        "SessiondQRCodesExpired": [expected("SessiondQRCodesExpired", expired)],
        "SessiondWebhookEndpointDisabled": [expected("SessiondWebhookEndpointDisabled", 0)],
        "SessiondSessionRequestsRateLimited": [expected("SessiondSessionRequestsRateLimited", 0)],
        "SessiondSessionRequestsNearLimit": [expected("SessiondSessionRequestsNearLimit", 0)],
    }
    quiet = [
        "SessiondSessionDisconnected",  # down for seconds, not 15 minutes
        "SessiondSessionDisconnectedLong",
        "SessiondSessionSilent",
        "SessiondSessionKeepalivesFailing",
        "SessiondQueueDepthHigh",
        "SessiondMessagesFailing",
        "SessiondWebhookEndpointFailing",  # the disabled endpoint no longer counts
        "SessiondDown",
        "SessiondProjectionLagHigh",
    ]
    check_alerts(tmp_path, before, after, firing, quiet)
