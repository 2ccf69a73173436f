"""The Prometheus alerting rules (`deploy/prometheus/alerts.yml`) pass Debian's `promtool`:
`check rules`, and the unit tests of `alerts_test.yml` (`promtool test rules`), which show
every rule both firing and not firing. promtool comes with `make prometheus`; a machine
without it fails here (CI must run these)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.promtool import promtool

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULES_TEST = RULES_DIR / "alerts_test.yml"


def alert_names() -> set[str]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"]}


def test_the_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in done.stdout


def test_the_rules_unit_tests_pass() -> None:
    done = promtool("test", "rules", RULES_TEST)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_rule_is_tested_both_firing_and_not() -> None:
    tests: list[dict[str, Any]] = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in tests:
        for check in test["alert_rule_test"]:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == alert_names()
    assert quiet == alert_names()


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    # The tests are not vacuous: a threshold moved makes them fail.
    text = RULES.read_text()
    broken = text.replace("sessiond_message_queue_depth_max) > 100", "x) > 100")
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts_test.yml").write_text(RULES_TEST.read_text())
    done = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert done.returncode != 0
    assert "SessiondQueueDepthHigh" in done.stdout + done.stderr
