"""Command line of the report (``python -m reports``): the paper's tables and figures,
regenerated from run records.

    python -m reports [--results results] [--out results/report] [--from-wandb ENTITY/PROJECT]

Exit status: 0 when the report was written, 2 on a user error (no records, W&B unreachable),
reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from .records import ReportError, load_records


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reports",
        description="Forgetting-ratio tables and figures of the HAT paper from run records.",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=Path("results"),
        help="results folder holding runs/*.json (default: results)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <results>/report)"
    )
    p.add_argument(
        "--from-wandb",
        metavar="ENTITY/PROJECT",
        default=None,
        help="read the run records from a W&B project instead of --results",
    )
    p.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="confidence level of the intervals (default: 0.95)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes drawing the figures (default: the CPUs available)",
    )
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _fmt(x: float, spec: str) -> str:
    return "n/a" if x != x else format(x, spec)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = args.out if args.out is not None else args.results / "report"
    if not 0.0 < args.confidence < 1.0:
        print(f"error: --confidence must be in (0, 1), got {args.confidence}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _one_line_warning
        try:
            if args.from_wandb:
                from .wandb_source import load_wandb_records

                records = load_wandb_records(args.from_wandb)
                where = f"W&B project {args.from_wandb}"
            else:
                records = load_records(args.results)
                where = str(args.results / "runs")
            if not records:
                raise ReportError(
                    f"no run records found in {where}; produce some with e.g. "
                    "`python -m benchmark run --scenario split-digits --strategies hat,joint "
                    "--seeds 0,1,2`"
                )
        except ReportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    from .build import build_report  # matplotlib is imported only when there is work

    result = build_report(records, out, confidence=args.confidence, workers=args.jobs)
    print(f"report of {len(records)} run records from {where} ({time.perf_counter() - t0:.1f} s)")
    for scenario, rep in result.reports.items():
        line = f"  {scenario}: T={rep.n_tasks}, " + ", ".join(
            f"{s}×{len(rep.seeds[s])}" for s in rep.strategies
        )
        if rep.reduction:
            r = rep.reduction[-1]
            line += (
                f"; ρ≤{r['t']} hat {_fmt(r['rho_hat'], '.3f')} vs "
                f"{r['best_baseline'] or 'n/a'} {_fmt(r['rho_baseline'], '.3f')}"
                f" (reduction {_fmt(r['reduction_pct'], '.1f')} %)"
            )
        print(line)
    for scenario, m in result.missing:
        print(f"missing: {scenario}: {m.line()}")
    for scenario, rep in result.reports.items():
        for note in rep.notes:
            print(f"note: {scenario}: {note}")
    by_dir: dict[Path, list[str]] = {}
    for p in result.files:
        by_dir.setdefault(p.parent, []).append(p.name)
    for d, names in by_dir.items():
        print(f"  {d}/: {' '.join(names)}")
    print(f"index: {result.index}")
    return 0
