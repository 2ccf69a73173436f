"""Run every benchmark (each in its own process) and print a short summary table.

    .venv/bin/python bench/run_all.py [--duration 5] [--rounds 3]

The options are passed on to each benchmark. Exits non-zero when a benchmark failed or its run
was invalid (non-2xx answers, errors, a broken event store), never because a target was missed.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchutil import exit_on_termination, print_table, verdict

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "status_read.py",
    "command_throughput.py",
    "audit_chain.py",
    "gateway_storm.py",
    "uptime_series.py",
    "inbound_ingestion.py",
    "rebuild.py",
    "webhook_delivery.py",
    "dashboard_list.py",
    "neonize_clients.py",
    "scale_10k.py",
    "noisy_neighbour.py",
    "expensive_reads_lag.py",
)
#: Extra options of one benchmark: the 10,000-session run takes several minutes on 2 cores,
#: so `make bench` runs it with 1,000 (run `bench/scale_10k.py` alone for the full figure).
EXTRA_OPTIONS = {"scale_10k.py": ["--sessions", "1000"]}


def run(script: str, options: list[str], workdir: Path) -> tuple[int, dict[str, Any] | None]:
    out = workdir / (script + ".json")
    extra = EXTRA_OPTIONS.get(script, [])
    args = [sys.executable, str(HERE / script), *options, *extra, "--json-out", str(out)]
    print(f"\n=== {script} ===", flush=True)
    started = time.monotonic()
    process = subprocess.Popen(args)  # our own script, fixed arguments
    try:
        code = process.wait(timeout=1800)
    finally:
        if process.poll() is None:  # interrupted: let it clean up (server, database) first
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    print(f"=== {script}: exit {code} after {time.monotonic() - started:.0f} s ===", flush=True)
    result = json.loads(out.read_text()) if out.exists() else None
    return code, result


def failed(what: str) -> list[str]:
    """The row of a benchmark that gave no result."""
    return [what, "-", "-", "-", "-", "FAILED"]


def invalid_mark(result: dict[str, Any]) -> str:
    """What a row's verdict says of a run whose figures cannot be trusted."""
    return "" if result["valid"] else " INVALID"


def audit_chain_rows(chain: dict[str, Any] | None) -> list[list[str]]:
    if chain is None:
        return [failed("commands with the audit chain vs without")]
    return [
        [
            f"commands with the audit chain vs without, {writers} writer(s)",
            f"{figures['chain_off_commands_per_s']:,.0f}",
            f"{figures['chain_on_commands_per_s']:,.0f}",
            f"{figures['ratio']:.3f}",
            f"≥ {chain['target_ratio']}",
            verdict(figures["ratio"] >= chain["target_ratio"]) + invalid_mark(chain),
        ]
        for writers, figures in chain["writers"].items()
    ]


def summary_rows(results: dict[str, dict[str, Any] | None]) -> list[list[str]]:
    rows: list[list[str]] = []
    status = results.get("status_read.py")
    if status is None:
        rows.append(failed("status read vs /ping"))
    else:
        ping, subject = status["ping"], status["status"]
        ok = status["ratio_met"] and status["p99_met"]
        rows.append(
            [
                "status read vs /ping (req/s)",
                f"{ping['rps']:,.0f}",
                f"{subject['rps']:,.0f}",
                f"{status['ratio']:.2f}",
                "≥ 0.5, p99 < 10 ms",
                f"{verdict(ok)} (p99 {subject['p99_ms']:.1f} ms)" + invalid_mark(status),
            ]
        )
    commands = results.get("command_throughput.py")
    if commands is None:
        rows.append(failed("commands vs insert commits"))
    else:
        for writers, figures in commands["writers"].items():
            target = writers == "8"
            rows.append(
                [
                    f"commands vs insert commits, {writers} writer(s)",
                    f"{figures['baseline_commits_per_s']:,.0f}",
                    f"{figures['commands_per_s']:,.0f}",
                    f"{figures['ratio']:.2f}",
                    "≥ 0.5" if target else "-",
                    (verdict(figures["ratio"] >= 0.5) if target else "")
                    + ("" if commands["verified"] else " ORDERING BROKEN"),
                ]
            )
    rows += audit_chain_rows(results.get("audit_chain.py"))
    storm = results.get("gateway_storm.py")
    if storm is None:
        rows.append(failed("gateway storm"))
    else:
        invalid = invalid_mark(storm)
        rows.append(
            [
                f"worker memory per idle session ({storm['sessions']:,} sessions)",
                f"{storm['rss_empty_kb'] / 1024:,.1f} MB at 0",
                f"{storm['kb_per_session']:,.1f} KB",
                "-",
                "< 50 KB",
                verdict(storm["memory_met"]) + invalid,
            ]
        )
        rows.append(
            [
                "reconnect storm visible vs same events via the app (s)",
                f"{storm['baseline_s']:.2f}",
                f"{storm['storm_s']:.2f}",
                f"{storm['ratio']:.2f}",
                "< 10 s",
                verdict(storm["storm_met"]) + invalid,
            ]
        )
    uptime = results.get("uptime_series.py")
    if uptime is None:
        rows.append(failed("uptime series vs status read"))
    else:
        for key, label in (("hour", "by hour (8,760 buckets)"), ("day", "by day")):
            rows.append(
                [
                    f"uptime series, a year {label}, p99 vs status (ms)",
                    f"{uptime['status']['p99_ms']:.1f}",
                    f"{uptime[key]['p99_ms']:.1f}",
                    f"{uptime['ratio_p99_' + key]:.1f}",
                    "-",
                    f"p50 {uptime[key]['p50_ms']:.1f} ms" + invalid_mark(uptime),
                ]
            )
    return rows + _issue_4_rows(results)


def _issue_4_rows(results: dict[str, dict[str, Any] | None]) -> list[list[str]]:
    rows: list[list[str]] = []
    ingestion = results.get("inbound_ingestion.py")
    if ingestion is None:
        rows.append(failed("inbound ingestion vs raw saves"))
    else:
        rows.append(
            [
                "inbound messages visible in status vs raw saves (/s)",
                f"{ingestion['raw_per_s']:,.0f}",
                f"{ingestion['visible_per_s']:,.0f}",
                f"{ingestion['ratio']:.2f}",
                "-",
                f"recorded {ingestion['recorded_per_s']:,.0f}/s",
            ]
        )
    rebuild = results.get("rebuild.py")
    if rebuild is None:
        rows.append(failed("status view rebuild vs raw decoded read"))
    else:
        rows.append(
            [
                f"status view rebuild vs raw decoded read, {rebuild['events']:,} events (ev/s)",
                f"{rebuild['read_events_per_s']:,.0f}",
                f"{rebuild['rebuild_events_per_s']:,.0f}",
                f"{rebuild['ratio']:.2f}",
                "≥ 0.35, 1M well < 60 s",
                f"{verdict(rebuild['ratio_met'] and rebuild['time_met'])} "
                f"({rebuild['seconds_per_million']:.1f} s per million)" + invalid_mark(rebuild),
            ]
        )
    return (
        rows
        + _webhook_rows(results)
        + _dashboard_rows(results)
        + _client_rows(results)
        + _scale_rows(results)
        + _noisy_rows(results)
        + _lag_rows(results)
    )


def _scale_rows(results: dict[str, dict[str, Any] | None]) -> list[list[str]]:
    scale = results.get("scale_10k.py")
    if scale is None:
        return [failed("sessions on one node (2 workers, projector, API)")]
    n = f"{scale['sessions']:,}"
    invalid = invalid_mark(scale)
    memory = ", ".join(f"{m['kb_per_session']:.1f}" for m in scale["memory"])
    storm, startup = scale["storm"], scale["startup"]
    return [
        [f"{n} sessions, 2 workers: memory per idle session", "-", f"{memory} KB", "-", "-", ""],
        [
            f"{n} sessions: reconnect storm, all visible connected (s)",
            "-",
            f"{storm['seconds']:.1f}",
            "-",
            "< 30 s",
            verdict(scale["storm_met"]) + invalid,
        ],
        [
            f"{n} sessions: GET /status p99 quiet vs during the storm (ms)",
            f"{scale['status_quiet']['p99_ms']:.1f}",
            f"{storm['status']['p99_ms']:.1f}",
            "-",
            "< 20 ms",
            verdict(scale["status_p99_met"]) + invalid,
        ],
        [
            f"{n} sessions: dashboard list p99 (ms)",
            "-",
            f"{scale['dashboard']['p99_ms']:.1f}",
            "-",
            "< 100 ms",
            verdict(scale["dashboard_p99_met"]) + invalid,
        ],
        [
            f"{n} sessions: 2 workers start and restore them all (s)",
            "-",
            f"{startup['seconds']:.1f}",
            "-",
            "< 60 s",
            verdict(scale["startup_met"]) + invalid,
        ],
    ]


def _noisy_rows(results: dict[str, dict[str, Any] | None]) -> list[list[str]]:
    noisy = results.get("noisy_neighbour.py")
    if noisy is None:
        return [failed("noisy neighbour: tenant B with A quiet vs noisy")]
    invalid = invalid_mark(noisy)
    status, webhook = noisy["status"], noisy["webhook"]
    return [
        [
            f"tenant B's status p99, A quiet vs A noisy ({noisy['connections']} conns) (ms)",
            f"{status['quiet']['p99_ms']:.1f}",
            f"{status['noisy']['p99_ms']:.1f}",
            f"{noisy['status_ratio']:.2f}",
            "noisy p99 < 10 ms",
            verdict(noisy["status_met"]) + invalid,
        ],
        [
            "tenant B's webhook p99, A quiet vs A noisy (ms)",
            f"{webhook['quiet']['p99_ms']:,.0f}",
            f"{webhook['noisy']['p99_ms']:,.0f}",
            f"{noisy['webhook_ratio']:.2f}",
            "≤ 2x quiet",
            verdict(noisy["webhook_met"]) + invalid,
        ],
    ]


def _lag_rows(results: dict[str, dict[str, Any] | None]) -> list[list[str]]:
    lag = results.get("expensive_reads_lag.py")
    if lag is None:
        return [failed("event-loop lag, expensive reads on threads vs processes")]
    threads, processes = lag["figures"]["threads"], lag["figures"]["processes"]
    return [
        [
            "event-loop lag p99 under 8 clients' expensive reads: threads vs processes (ms)",
            f"{threads['p99_ms']:.1f}",
            f"{processes['p99_ms']:.1f}",
            f"{processes['p99_ms'] / threads['p99_ms']:.2f}" if threads["p99_ms"] else "-",
            "-",
            f"idle loop p99 {lag['figures']['idle']['p99_ms']:.1f} ms" + invalid_mark(lag),
        ]
    ]


def _client_rows(results: dict[str, dict[str, Any] | None]) -> list[list[str]]:
    clients = results.get("neonize_clients.py")
    if clients is None:
        return [failed("real neonize clients, offline")]
    largest = clients["rows"][-1]
    return [
        [
            f"real neonize client, offline, {largest['clients']:,} in one worker (all in)",
            f"{clients['base_all_kb'] / 1024:,.0f} MB at 0",
            f"{largest['all_kb']:,.0f} KB each",
            "-",
            "< 5 MB",
            f"{verdict(clients['target_met'])} ({largest['connections_total']:.0f} connections, "
            f"{largest['cpu_core_share']:.0%} of a core idle-retrying)" + invalid_mark(clients),
        ]
    ]


def _dashboard_rows(results: dict[str, dict[str, Any] | None]) -> list[list[str]]:
    dashboard = results.get("dashboard_list.py")
    if dashboard is None:
        return [failed("dashboard list vs JSON list")]
    page, listed = dashboard["page"], dashboard["json_list"]
    return [
        [
            f"dashboard list page, {dashboard['sessions']:,} sessions, vs JSON list (req/s)",
            f"{listed['rps']:,.0f}",
            f"{page['rps']:,.0f}",
            f"{dashboard['ratio_page_json']:.2f}",
            "p99 < 100 ms",
            f"{verdict(dashboard['p99_met'])} (p50 {page['p50_ms']:.1f} ms, "
            f"p99 {page['p99_ms']:.1f} ms at {dashboard['connections']} connections)"
            + invalid_mark(dashboard),
        ]
    ]


def _webhook_rows(results: dict[str, dict[str, Any] | None]) -> list[list[str]]:
    webhooks = results.get("webhook_delivery.py")
    if webhooks is None:
        return [failed("webhook deliveries vs raw POSTs")]
    invalid = invalid_mark(webhooks)
    rows = []
    for workers, figures in webhooks["workers"].items():
        target = workers == "4"
        rows.append(
            [
                f"webhook deliveries vs raw POSTs, {workers} worker(s) (/s)",
                f"{webhooks['raw_per_s']:,.0f}",
                f"{figures['deliveries_per_s']:,.0f}",
                f"{figures['ratio']:.2f}",
                "≥ 500/s, p99 < 250 ms" if target else "-",
                (
                    verdict(webhooks["throughput_met"] and webhooks["latency_met"]) + " "
                    if target
                    else ""
                )
                + f"(p50 {figures['p50_ms']:,.0f} ms, p99 {figures['p99_ms']:,.0f} ms at "
                f"{figures['offered_per_s']:,.0f}/s)" + invalid,
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, help="seconds per round")
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args(argv)
    options: list[str] = []
    if args.duration is not None:
        options += ["--duration", str(args.duration)]
    if args.rounds is not None:
        options += ["--rounds", str(args.rounds)]
    exit_on_termination()
    codes: dict[str, int] = {}
    results: dict[str, dict[str, Any] | None] = {}
    with tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        for script in BENCHMARKS:
            codes[script], results[script] = run(script, options, Path(tmp))
    print("\nSummary (medians of interleaved rounds; ratio = subject / baseline, same run)")
    print_table(
        ["benchmark", "baseline", "subject", "ratio", "target", "verdict"],
        summary_rows(results),
        align="lrrrll",
    )
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
