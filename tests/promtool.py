"""Feeding sessiond's real `/metrics` to Debian's `promtool`: scrapes parsed into samples,
turned into a unit test of `deploy/prometheus/alerts.yml` (input series, the alerts expected
with their rendered annotations) and run with `promtool test rules`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
#: One sample: its name, labels and value.
Sample = tuple[str, dict[str, str], float]
#: When the alerts are looked at: the series show `before` until 5 minutes, then `after`.
EVAL_TIME = "30m"


def samples_of(text: str) -> list[Sample]:
    """The samples of a Prometheus exposition text."""
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The value of the one sample with that name and exactly those labels."""
    (found,) = [v for n, got, v in samples if n == name and got == labels]
    return found


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool (a missing promtool fails the test: `make prometheus` installs it)."""
    found = shutil.which("promtool")
    assert found is not None, "promtool is missing: run `make prometheus` (Debian's prometheus)"
    return subprocess.run(
        [found, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def _go_value(number: float) -> str:
    """A float as Go's templates print it (enough for the values used here)."""
    number = float(number)
    return str(int(number)) if number.is_integer() else repr(number)


def _render(template: str, number: float, labels: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if expr == "$value":
            return _go_value(number)
        if expr.startswith("$labels."):
            return labels[expr.removeprefix("$labels.")]
        raise AssertionError(f"no renderer for {expr}")

    return re.sub(r"\{\{(.*?)\}\}", one, template)


def expected(alert: str, number: float, **labels: str) -> dict[str, Any]:
    """An alert promtool must find firing: its labels (those of the rule, the job's and
    `labels`) and its annotations rendered with `number` as `$value`."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (rule,) = [r for group in groups for r in group["rules"] if r["alert"] == alert]
    return {
        "exp_labels": {"job": "sessiond", **rule["labels"], **labels},
        "exp_annotations": {
            key: _render(text, number, labels) for key, text in rule["annotations"].items()
        },
    }


def input_series(before: list[Sample], after: list[Sample]) -> list[dict[str, str]]:
    """Each sample of `after` as a series scraped every minute from a process of job
    `sessiond`: the value of `before` for 5 minutes, then that of `after`; a counter goes on
    growing each minute by what it grew between the two scrapes. Plus `up` at 1."""
    earlier = {(name, tuple(sorted(labels.items()))): v for name, labels, v in before}
    series = [{"series": 'up{job="sessiond",instance="test"}', "values": "1x40"}]
    for name, labels, now in after:
        was = earlier.get((name, tuple(sorted(labels.items()))), 0.0)
        step = now - was if name.endswith("_total") else 0.0
        values = [was] * 5 + [now + step * n for n in range(36)]
        matchers = ",".join(
            f'{k}="{v}"' for k, v in {"job": "sessiond", "instance": "test", **labels}.items()
        )
        series.append({"series": f"{name}{{{matchers}}}", "values": " ".join(map(str, values))})
    return series


def check_alerts(
    tmp_path: Path,
    before: list[Sample],
    after: list[Sample],
    firing: dict[str, list[dict[str, Any]]],
    quiet: list[str],
) -> None:
    """Run `promtool test rules` on the two scrapes: at `EVAL_TIME` the alerts of `firing`
    fire, exactly as given, and those of `quiet` do not."""
    checks = [
        {"eval_time": EVAL_TIME, "alertname": name, "exp_alerts": alerts}
        for name, alerts in firing.items()
    ] + [{"eval_time": EVAL_TIME, "alertname": name, "exp_alerts": []} for name in quiet]
    test_file = tmp_path / "real_scrape_test.yml"
    test_file.write_text(
        json.dumps(  # JSON is YAML
            {
                "rule_files": [str(RULES)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": input_series(before, after),
                        "alert_rule_test": checks,
                    }
                ],
            }
        )
    )
    done = promtool("test", "rules", test_file)
    assert done.returncode == 0, done.stdout + done.stderr
