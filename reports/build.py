"""Write the whole report: every table and figure per scenario, and ``index.md``.

Layout under ``out``::

    index.md                          links and captions, missing pieces with their commands
    <scenario>/rho_table.{md,tex,csv} Table 1: ρ≤2 and ρ≤T per strategy, HAT reduction
    <scenario>/rho_reduction.csv      HAT's reduction of forgetting vs the best baseline
    <scenario>/rho_vs_t.{png,pdf,csv} ρ≤t against t with CI bands
    <scenario>/acc_matrix_<strategy>.png
    <scenario>/summary.{md,csv}       final accuracy, BWT, forgetting, FWT, intransigence,
                                      task-agnostic accuracy, time per task, peak memory
    <scenario>/cost.{png,pdf,csv}     final accuracy against training time and peak memory,
                                      per method (not joint/single), when one has both
    <scenario>/robustness.{png,md,csv}   when a HAT smax × c grid exists
    <scenario>/capacity.png, compression.{png,md,csv}   when HAT mask statistics exist
    <scenario>/compression_alone.{png,md,csv}   when tasks were trained alone (scenario.task)
    <scenario>/monitoring.{png,csv}   when HAT records have per-epoch hat_used/hat_reuse
    <scenario>/hyperparameters.{md,csv}  per strategy: hyperparameters and whether selected
    <scenario>/sensitivity.{png,pdf,csv} validation criterion over each search space, when a
                                      record has a selection or grid records valid_accuracy

Files of these names left over from an earlier report that this run does not produce are
removed, so ``index.md`` and the folder agree. :func:`check_output` says, before anything is
written, whether ``out`` can hold the report.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import figures, render
from .records import ReportError
from .tables import Duplicate, Missing, ScenarioReport, compute_report

__all__ = ["BuildResult", "build_report", "check_output", "default_workers", "safe_name"]

_OWNED = (
    "rho_table.*",
    "rho_reduction.csv",
    "rho_vs_t.*",
    "acc_matrix_*.png",
    "summary.*",
    "cost.*",
    "robustness.*",
    "capacity.png",
    "compression.*",
    "compression_alone.*",
    "monitoring.*",
    "hyperparameters.*",
    "sensitivity.*",
)


def safe_name(name: str) -> str:
    """A file-name-safe version of a scenario or strategy name."""
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", name).strip("._") or "_"


@dataclass
class BuildResult:
    out: Path
    reports: dict[str, ScenarioReport]
    files: list[Path] = field(default_factory=list)
    missing: list[tuple[str, Missing]] = field(default_factory=list)
    duplicates: list[tuple[str, Duplicate]] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.out / "index.md"


def _scenario_files(
    rep: ScenarioReport, d: Path, jobs: list[tuple[Callable, tuple]]
) -> list[tuple[Path, str]]:
    """Write one scenario's text files and queue its figures on ``jobs`` (function, args);
    returns (path, caption) pairs of everything, figures included."""
    items: list[tuple[Path, str]] = []
    conf = f"{rep.confidence:.0%}"

    def text(name: str, content: str, caption: str) -> None:
        items.append((render.write_text(d / name, content), caption))

    def figure(fn: Callable, args: tuple, captions: dict[str, str]) -> None:
        jobs.append((fn, args))
        items.extend((d / name, cap) for name, cap in captions.items())

    if rep.rho:
        cols = " and ".join(f"t = {t}" for t in rep.table_ts)
        text(
            "rho_table.md",
            render.rho_table_md(rep),
            f"Table 1: forgetting ratio ρ≤t at {cols} per strategy (mean ± {conf} CI over "
            "seeds), best in bold, with HAT's reduction of forgetting vs the best baseline",
        )
        text("rho_table.tex", render.rho_table_tex(rep), "Table 1 as LaTeX (booktabs)")
        text("rho_table.csv", render.rho_table_csv(rep), "Table 1 as CSV (plain numbers)")
        text(
            "rho_reduction.csv",
            render.reduction_csv(rep),
            "HAT's reduction of forgetting (%) against the best baseline, per t of Table 1",
        )
        figure(
            figures.plot_rho_vs_t,
            (rep.rho, rep.n_tasks, [d / "rho_vs_t.png", d / "rho_vs_t.pdf"]),
            {
                "rho_vs_t.png": f"forgetting ratio ρ≤t against t with {conf} CI bands; "
                "dashed: joint training (ρ = 0)",
                "rho_vs_t.pdf": "the same figure as PDF",
            },
        )
        text(
            "rho_vs_t.csv",
            render.rho_table_csv(rep, all_t=True),
            "data of the figure: ρ≤t for every t",
        )
    if rep.summary:
        text(
            "summary.md",
            render.summary_md(rep),
            f"final average accuracy, BWT, forgetting, FWT, intransigence, task-agnostic "
            f"accuracy, training time per task and peak memory per strategy (mean ± {conf} "
            "CI)",
        )
        text("summary.csv", render.summary_csv(rep), "the same as CSV (fractions)")
    if rep.cost_strategies():
        methods = {s: rep.summary[s] for s in rep.cost_strategies()}
        figure(
            figures.plot_cost,
            (methods, rep.scenario, [d / "cost.png", d / "cost.pdf"]),
            {
                "cost.png": f"cost: final average accuracy against training time per task and "
                f"peak memory, one marker per method with {conf} CI bars, to choose a method "
                "on cost as well as accuracy",
                "cost.pdf": "the same figure as PDF",
            },
        )
        text("cost.csv", render.cost_csv(rep),
             "data of the cost figure: final accuracy, seconds per task, peak memory (MB)")
    for s, m in rep.acc_mean.items():
        n = len(rep.seeds[s])
        name = f"acc_matrix_{safe_name(s)}.png"
        title = f"{rep.scenario}: {s} (mean over {n} seed{'s' if n != 1 else ''})"
        figure(
            figures.plot_acc_matrix,
            (m, title, d / name),
            {
                name: f"accuracy matrix of {s}: row t after training task t, column τ the "
                f"evaluated task, mean over {n} seed(s)"
            },
        )
    if rep.grid is not None:
        what = "ρ≤T" if rep.grid.metric == "rho" else "final accuracy (no joint records for ρ)"
        figure(
            figures.plot_grid,
            (rep.grid, rep.scenario, d / "robustness.png"),
            {"robustness.png": f"HAT robustness: {what} over the smax × c grid"},
        )
        text(
            "robustness.md",
            render.grid_md(rep.grid, rep.scenario),
            "the robustness grid as a table (mean ± CI)",
        )
        text("robustness.csv", render.grid_csv(rep.grid), "the robustness grid as CSV")
    if rep.capacity is not None:
        cap = rep.capacity
        figure(
            figures.plot_capacity,
            (cap, rep.scenario, d / "capacity.png"),
            {
                "capacity.png": "HAT capacity: fraction of each layer's units used per task, "
                "and how much of it earlier tasks already used"
            },
        )
        figure(
            figures.plot_compression,
            (cap, rep.scenario, d / "compression.png"),
            {"compression.png": "HAT compression: fraction of units and weights kept per task"},
        )
        text(
            "compression.md",
            render.compression_md(cap, rep.scenario),
            "HAT compression per task and layer as a table",
        )
        text("compression.csv", render.compression_csv(cap), "the compression table as CSV")
    if rep.compression is not None:
        comp = rep.compression
        figure(
            figures.plot_compression_alone,
            (comp, rep.scenario, d / "compression_alone.png"),
            {
                "compression_alone.png": "HAT compression, each task trained alone (the "
                "paper's compression experiment): fraction of the network's units and weights "
                "its binary mask keeps"
            },
        )
        text(
            "compression_alone.md",
            render.compression_alone_md(comp, rep.scenario),
            "compression per task trained alone, per layer and overall, as a table",
        )
        text("compression_alone.csv", render.compression_alone_csv(comp),
             "compression per task trained alone as CSV (fractions)")
    if rep.monitoring is not None:
        mon = rep.monitoring
        figure(
            figures.plot_monitoring,
            (mon, rep.scenario, d / "monitoring.png"),
            {
                "monitoring.png": "HAT monitoring: per layer, the fraction of units the task "
                "being trained uses (capacity) and the fraction of those reused from earlier "
                "tasks, epoch by epoch over the task sequence"
            },
        )
        text("monitoring.csv", render.monitoring_csv(mon),
             "data of the monitoring figure: task, epoch, layer, used, reuse, seeds")
    if rep.hyperparameters:
        text(
            "hyperparameters.md",
            render.hyperparameters_md(rep),
            "hyperparameters each strategy ran with, and their source: selected on validation "
            "data (preset, seeds, epochs, criterion value) or defaults / set by hand",
        )
        text("hyperparameters.csv", render.hyperparameters_csv(rep),
             "the hyperparameter table as CSV (one column per hyperparameter)")
    if rep.sensitivity:
        figure(
            figures.plot_sensitivity,
            (rep.sensitivity, rep.scenario, [d / "sensitivity.png", d / "sensitivity.pdf"]),
            {
                "sensitivity.png": "hyperparameter sensitivity: per strategy, the validation "
                "criterion (mean validation accuracy over all tasks after the last task) over "
                "its whole search space, the chosen point marked; a flat panel is a method "
                "robust to its hyperparameters",
                "sensitivity.pdf": "the same figure as PDF",
            },
        )
        text("sensitivity.csv", render.sensitivity_csv(rep.sensitivity),
             "data of the sensitivity figure: one row per point (strategy, params, value, "
             "chosen, source, n_seeds)")
    return items


def _writable_folder(d: Path, out: Path) -> None:
    """``d`` is a folder this process can write into, or (when absent) the nearest existing
    folder above it is; raises ReportError naming the problem. Creates nothing: the probe
    file is removed at once."""
    probe = d
    while not probe.exists() and not probe.is_symlink():
        probe = probe.parent
    if not probe.is_dir():
        what = "a file" if probe.exists() else "a broken link"
        raise ReportError(f"cannot write the report to {out}: {probe} is {what}, not a folder; "
                          "choose another --out")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".report-probe-", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ReportError(f"cannot write the report to {out}: {probe} is not writable "
                          f"({why}); choose another --out") from None


def check_output(out: str | Path, scenarios: list[str] | None = None) -> None:
    """Raise ReportError (one line) unless the report can be written under ``out``: ``out``
    and, for ``scenarios``, each ``out/<scenario>`` folder exist as writable folders or can
    be created, and ``index.md`` is not a folder. Writes nothing."""
    out = Path(out)
    _writable_folder(out, out)
    for sc in scenarios or []:
        d = out / safe_name(sc)
        if d.exists() or d.is_symlink():
            _writable_folder(d, out)
    if (out / "index.md").is_dir():
        raise ReportError(f"cannot write the report to {out}: {out / 'index.md'} is a folder")


def _call(job: tuple[Callable, tuple]) -> list[Path]:
    fn, args = job
    return fn(*args)


def default_workers() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _render_all(jobs: list[tuple[Callable, tuple]], workers: int) -> None:
    """Draw the figures, in ``workers`` forked processes when that pays off (Linux)."""
    workers = min(workers, len(jobs))
    if workers < 2 or len(jobs) < 4 or "fork" not in mp.get_all_start_methods():
        for job in jobs:
            _call(job)
        return
    # import matplotlib before forking so that the workers inherit it
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        for _ in pool.map(_call, jobs):
            pass


def _remove_stale(d: Path, keep: set[Path]) -> None:
    for pattern in _OWNED:
        for p in d.glob(pattern):
            if p.is_file() and p not in keep:
                p.unlink()


def build_report(
    records: list[dict], out: str | Path, confidence: float = 0.95, workers: int | None = None
) -> BuildResult:
    """Compute (:func:`reports.tables.compute_report`) and write the report of ``records``
    under ``out``; returns what was written and what is missing. Figures are drawn by
    ``workers`` processes (default: the CPUs available; 1 = in this process)."""
    out = Path(out)
    reports = compute_report(records, confidence)
    result = BuildResult(out=out, reports=reports)
    sections = []
    notes: list[str] = []
    jobs: list[tuple[Callable, tuple]] = []
    dirs: list[tuple[Path, list[tuple[Path, str]]]] = []
    for scenario, rep in reports.items():
        rel = safe_name(scenario)
        d = out / rel
        written = _scenario_files(rep, d, jobs)
        dirs.append((d, written))
        result.files += [p for p, _ in written]
        sections.append((scenario, [(f"{rel}/{p.name}", cap) for p, cap in written]))
        result.missing += [(scenario, m) for m in rep.missing]
        result.duplicates += [(scenario, d) for d in rep.duplicates]
        notes += [f"{scenario}: {n}" for n in rep.notes]
    _render_all(jobs, default_workers() if workers is None else workers)
    for d, written in dirs:
        _remove_stale(d, {p for p, _ in written})
    render.write_text(result.index,
                      render.index_md(sections, result.missing, notes, result.duplicates))
    result.files.append(result.index)
    return result
