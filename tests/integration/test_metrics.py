"""`GET /metrics`: Prometheus text with sessions by status and health, reconnects and the lag
of each view, parsed with prometheus_client's own parser."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Api
from tests.integration.steps import connected_session, eventually, simulate


@pytest.fixture
def settings_overrides() -> dict[str, str]:
    return {"SESSIOND_RETRY_BASE": "0.2", "SESSIOND_RETRY_CAP": "0.5"}


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_sessions_reconnects_and_view_lag(api: Api) -> None:
    flaky = await connected_session(api, "Flaky")
    await connected_session(api, "Steady")
    await api.create_session("New")
    stopped = await api.create_session("Stopped")
    await api.client.post(f"/sessions/{stopped['sessionId']}/stop", headers=api.key(stopped))
    await simulate(api, flaky, "drop")

    async def reconnected() -> Any:
        samples = await scrape(api)
        connected = samples[("sessiond_sessions", (("status", "connected"),))]
        return samples if connected == 2 and samples[("sessiond_reconnects_total", ())] else None

    samples = await eventually(reconnected)
    assert samples[("sessiond_sessions", (("status", "disconnected"),))] == 1  # the stopped one
    assert samples[("sessiond_sessions_health", (("health", "stopped"),))] == 1
    assert samples[("sessiond_sessions_health", (("health", "healthy"),))] == 2
    assert samples[("sessiond_reconnects_total", ())] == 1
    outbound_sent = (("direction", "outbound"), ("status", "sent"))
    assert samples[("sessiond_messages_total", outbound_sent)] == 0
    lags = {
        dict(labels)["projection"]: value
        for (name, labels), value in samples.items()
        if name == "sessiond_projection_lag_events"
    }
    assert set(lags) == {
        "session_status",
        "api_keys",
        "gateway",
        "uptime",
        "messages",
        "webhooks",
    }
    assert all(value >= 0 for value in lags.values())


async def test_metrics_count_messages_by_direction_and_status_and_queue_depths(api: Api) -> None:
    linked = await connected_session(api, "Linked")
    waiting = await api.create_session("Waiting")
    for n in range(3):
        response = await api.client.post(
            f"/sessions/{waiting['sessionId']}/messages",
            json={"to": "+14155550123", "text": f"later {n}"},
            headers=api.key(waiting),
        )
        assert response.status_code == 202
    for to in ("+14155550123", "0123456@s.whatsapp.net"):
        await api.client.post(
            f"/sessions/{linked['sessionId']}/messages",
            json={"to": to, "text": "now"},
            headers=api.key(linked),
        )
    await simulate(api, linked, "inbound", sender="+4915112345678", text="hello")

    async def settled() -> Any:
        samples = await scrape(api)
        outbound = [
            samples[("sessiond_messages_total", (("direction", "outbound"), ("status", s)))]
            for s in ("sent", "failed")
        ]
        return samples if outbound == [1, 1] else None

    samples = await eventually(settled)

    def count(direction: str, status: str) -> float:
        return float(
            samples[("sessiond_messages_total", (("direction", direction), ("status", status)))]
        )

    assert count("outbound", "failed") == 1
    assert count("inbound", "received") == 1
    assert count("outbound", "read") == 0
    assert samples[("sessiond_message_queue_depth", ())] == 3
    assert samples[("sessiond_message_queue_depth_max", ())] == 3
