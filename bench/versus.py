"""One benchmark run on two trees in the same session, alternately, with the ratio of each figure.

To check that a change slows nothing, run the benchmark on the baseline tree (e.g. the main
branch's worktree, with its own ``.venv``) and on this tree, in turns (baseline first), and
compare the medians of their headline figures. Each benchmark already compares itself with a
baseline of its own measured in the same run (raw commits, ``/ping``, commands without the
gateway); those in-run ratios are the figures least moved by the machine's load.

    .venv/bin/python bench/versus.py --baseline /work/main --rounds 2 \
        status_read -- --duration 3 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchutil import median, print_table

HERE = Path(__file__).resolve().parents[1]
#: Per benchmark: (label, path in its JSON result, whether higher is better).
FIGURES: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {
    "command_throughput": [
        ("commands/s, 1 writer", ("writers", "1", "commands_per_s"), True),
        ("commands/s, 8 writers", ("writers", "8", "commands_per_s"), True),
        ("ratio to raw commits, 1 writer", ("writers", "1", "ratio"), True),
        ("ratio to raw commits, 8 writers", ("writers", "8", "ratio"), True),
    ],
    "status_read": [
        ("status req/s", ("status", "rps"), True),
        ("status p99 ms", ("status", "p99_ms"), False),
        ("ratio status / ping", ("ratio",), True),
    ],
    "noisy_neighbour": [
        ("B status p99 ms, A noisy", ("status", "noisy", "p99_ms"), False),
        ("B status p50 ms, A noisy", ("status", "noisy", "p50_ms"), False),
        ("B status p99 ms, A quiet", ("status", "quiet", "p99_ms"), False),
        ("B webhook p99 ratio noisy/quiet", ("webhook_ratio",), False),
        ("A's refusals (429/409) a second", ("a_refused_per_s",), False),
        ("A's expensive reads served a second", ("a_served_per_s",), True),
    ],
    "gateway_storm": [
        ("storm: all connected visible, s", ("storm_s",), False),
        ("storm: drops visible, s", ("drops_visible_s",), False),
        ("baseline: 3N events visible, s", ("baseline_s",), False),
        ("ratio storm / baseline", ("ratio",), False),
        ("KB per idle session", ("kb_per_session",), False),
    ],
}


def figure(result: dict[str, Any], path: tuple[str, ...]) -> float:
    found: Any = result
    for part in path:
        found = found[part]
    return float(found)


def run_once(tree: Path, bench: str, extra: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [
            str(tree / ".venv" / "bin" / "python"),
            str(tree / "bench" / f"{bench}.py"),
            *extra,
            "--json-out",
            out.name,
        ]
        print(f"$ (cd {tree} && PYTHONPATH={tree} {' '.join(command[1:])})", flush=True)
        # The tree's own code first: a venv shared by several trees (worktrees) has the
        # project installed in editable mode from one of them, which a script run from
        # bench/ would otherwise import, whatever tree it belongs to.
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(
            command, cwd=tree, env=env, check=False, capture_output=True, text=True
        )
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{bench} failed in {tree} ({done.returncode})")
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
    if not result.get("valid", True):
        print(f"warning: {bench} in {tree} reported an invalid run", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, type=Path, help="the other tree")
    parser.add_argument("--rounds", type=int, default=1, help="runs on each tree, alternating")
    parser.add_argument("bench", choices=sorted(FIGURES))
    parser.add_argument("extra", nargs="*", help="the benchmark's own options (after --)")
    args = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "subject": []}
    for _ in range(args.rounds):
        runs["baseline"].append(run_once(args.baseline.resolve(), args.bench, args.extra))
        runs["subject"].append(run_once(HERE, args.bench, args.extra))
    rows = []
    for name, path, higher_is_better in FIGURES[args.bench]:
        base = median([figure(r, path) for r in runs["baseline"]])
        subject = median([figure(r, path) for r in runs["subject"]])
        ratio = subject / base if base else float("nan")
        better = "higher" if higher_is_better else "lower"
        each = " | ".join(
            ", ".join(f"{figure(r, path):,.2f}" for r in runs[side])
            for side in ("baseline", "subject")
        )
        rows.append([name, f"{base:,.2f}", f"{subject:,.2f}", f"{ratio:.2f}", better, each])
    print(
        f"\n{args.bench}: {args.baseline} (baseline) vs {HERE} (subject), medians of "
        f"{args.rounds} run(s) each, alternating"
    )
    print_table(
        ["figure", "baseline", "subject", "subject/baseline", "better", "each run (base | subj)"],
        rows,
        align="lrrrll",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
