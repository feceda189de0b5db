"""Time a full report over 200 synthetic run records (target: <= 10 s on 2 CPU cores).

    make bench-report        # or: python scripts/bench_report.py [--scenarios 4] [--repeat 1]

Records: S scenarios (T = 5 or 10, alternating) × 5 strategies (hat, ewc, sgd, lwf, joint) ×
seeds, plus a tagged HAT smax × c grid, 200 records in all; HAT records carry mask statistics.
The timed call is ``reports.cli.main`` in-process, reading the records from disk and writing
every file; numpy and the report modules are imported before timing (to build the records),
matplotlib's first import falls in the first repetition.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reports.synthetic import synthetic_records, write_records  # noqa: E402

N_RECORDS = 200
STRATEGIES = ("hat", "ewc", "sgd", "lwf", "joint")


def make_records(n_scenarios: int) -> list[dict]:
    """200 records: per scenario 5 strategies × seeds, the rest as HAT grid points."""
    scenarios = {f"bench-{i}": (5 if i % 2 == 0 else 10) for i in range(n_scenarios)}
    per_scenario = N_RECORDS // n_scenarios
    n_seeds = max(2, min(10, per_scenario // (2 * len(STRATEGIES))))
    recs = synthetic_records(scenarios, STRATEGIES, range(n_seeds), hat_stats=True)
    grid_left = N_RECORDS - len(recs)
    # fill the rest with a grid on the first scenario: smax × c points, 2 seeds each
    smaxs = [25.0, 50.0, 100.0, 200.0, 400.0, 800.0]
    cs = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 4.0]
    grid = synthetic_records({"bench-0": 5}, (), range(2), grid=(smaxs, cs))
    recs += grid[: max(grid_left, 0)]
    k = 100
    while len(recs) < N_RECORDS:  # top up with extra seeds of a baseline and joint
        recs += synthetic_records({"bench-1": 10}, ("sgd", "joint"), [k])
        k += 1
    return recs[:N_RECORDS]


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the figure workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=None, help="figure processes (default: all CPUs)")
    args = ap.parse_args()
    if not 1 <= args.scenarios <= N_RECORDS // 20:
        ap.error(f"--scenarios must be between 1 and {N_RECORDS // 20}, got {args.scenarios}")
    load0 = os.getloadavg()[0]
    records = make_records(args.scenarios)
    from reports.cli import main as report_main

    with tempfile.TemporaryDirectory() as tmp:
        write_records(tmp, records)
        n_scen = len({r["scenario"] for r in records})
        print(f"{len(records)} records, {n_scen} scenarios, in {tmp}/runs")
        times, cpus = [], []
        argv = ["--results", tmp, "--out", str(Path(tmp) / "report")]
        if args.jobs is not None:
            argv += ["--jobs", str(args.jobs)]
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), _cpu()
            rc = report_main(argv)
            times.append(time.perf_counter() - t0)
            cpus.append(_cpu() - c0)
            if rc != 0:
                print(f"report failed with exit code {rc}", file=sys.stderr)
                return rc
        n_files = sum(1 for p in (Path(tmp) / "report").rglob("*") if p.is_file())
    print(
        f"report over {len(records)} records: {min(times):.2f} s wall (best of {len(times)}; "
        f"first {times[0]:.2f} s incl. imports), {min(cpus):.2f} s CPU incl. workers, "
        f"{n_files} files; load average before/after: {load0:.2f}/{os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
