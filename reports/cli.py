"""Command line of the report (``python -m reports``): the paper's tables and figures,
regenerated from run records.

    python -m reports [--results results] [--out results/report] [--from-wandb ENTITY/PROJECT]
                      [--targets configs/paper/targets.csv]

Exit status: 0 when the report was written, 2 on a user error (no records, W&B unreachable,
an ``--out`` that is a file or not writable, ``--jobs`` below 1, a bad option or ``--targets``
file), reported as one line on stderr; the output folder is checked before anything is written.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import metrics
from .io import WriteError
from .load import ReportError, load_records
from .targets import line as target_line
from .targets import load_targets
from .text import warning_line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would add the usage)
        raise ReportError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    p.add_argument(
        "--targets",
        type=Path,
        default=None,
        metavar="CSV",
        help="check published numbers against the records (e.g. configs/paper/targets.csv): "
        "one line per target, and targets.md/targets.csv in the report",
    )
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(warning_line(message), file=sys.stderr if file is None else file)


def _runs(rep) -> str:
    """``T=<n>, <strategy>×<seeds> (+<n> diverged), ...`` of a scenario's tables."""
    return f"T={rep.n_tasks}, " + ", ".join(
        [f"{s}×{len(rep.seeds[s])}" + (f" (+{len(rep.diverged[s])} diverged)"
                                      if rep.diverged.get(s) else "")
         for s in rep.strategies]
        + [f"{s}: every run diverged" for s in rep.only_diverged()])


def _fmt(x: float, spec: str) -> str:
    return "n/a" if x != x else format(x, spec)


def _reduction(r: dict) -> str:
    if r.get("measure") == "difference":
        return (f"Δ|ρ| {_fmt(r['reduction_abs'], '+.3f')}: the baseline's |ρ| is below "
                f"{metrics.REDUCTION_MIN_BASELINE:g}, a percentage of it is not meaningful")
    return f"reduction {_fmt(r['reduction_pct'], '.1f')} %"


def main(argv: Sequence[str] | None = None) -> int:
    from .build import check_output

    try:
        args = _parser().parse_args(argv)
        out = args.out if args.out is not None else args.results / "report"
        if not 0.0 < args.confidence < 1.0:
            raise ReportError(f"--confidence must be in (0, 1), got {args.confidence}")
        if args.jobs is not None and args.jobs < 1:
            raise ReportError(f"invalid --jobs {args.jobs}: give a number of processes >= 1")
        if (args.results.exists() and not args.results.is_dir()
                and (not args.from_wandb or args.out is None)):
            raise ReportError(f"--results {args.results} is a file; give the folder that holds "
                              "runs/ (e.g. --results results)")
        check_output(out)
        targets = load_targets(args.targets) if args.targets is not None else None
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
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
            check_output(out, sorted({r["scenario"] for r in records}))
        except ReportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    from .build import build_report  # matplotlib is imported only when there is work

    try:
        result = build_report(records, out, confidence=args.confidence, workers=args.jobs,
                              targets=targets)
    except WriteError as e:  # names the file and the cause already
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up, or a file of the report is a folder
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: cannot write the report to {out}{where}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    print(f"report of {len(records)} run records from {where} ({time.perf_counter() - t0:.1f} s)")
    for scenario, rep in result.reports.items():
        if rep.strategies or rep.only_diverged() or rep.class_il is None:
            line = f"  {scenario}: {_runs(rep)}"
            if rep.reduction:
                r = rep.reduction[-1]
                line += (
                    f"; ρ≤{r['t']} hat {_fmt(r['rho_hat'], '.3f')} vs "
                    f"{r['best_baseline'] or 'n/a'} {_fmt(r['rho_baseline'], '.3f')}"
                    f" ({_reduction(r)})"
                )
            print(line)
        if rep.class_il is not None:
            print(f"  {scenario} (class-incremental): {_runs(rep.class_il)}")
    for scenario, d in result.duplicates:
        print(f"duplicate: {scenario}: {d.line()}")
    for scenario, m in result.missing:
        print(f"missing: {scenario}: {m.line()}")
    for scenario, rep in result.reports.items():
        for note in rep.notes:
            print(f"note: {scenario}: {note}")
    if result.targets:
        print(f"targets of {args.targets}:")
        for r in result.targets:
            print(f"  {target_line(r)}")
    by_dir: dict[Path, list[str]] = {}
    for p in result.files:
        by_dir.setdefault(p.parent, []).append(p.name)
    for d, names in by_dir.items():
        print(f"  {d}/: {' '.join(names)}")
    print(f"index: {result.index}")
    from .render import terminal_headline

    for rep in result.reports.values():
        text = terminal_headline(rep)
        if text:
            print(text)
    print(f"page: {result.page}")
    return 0
