"""Write the whole report: every table and figure per scenario, and ``index.md``.

Layout under ``out``::

    index.md                          the headline tables per scenario and what they say,
                                      then links and captions, missing pieces with their
                                      commands
    index.html                        the report page (reports.html): per scenario what the
                                      run says, the headline tables, every figure embedded
                                      with its caption and links to its files
    <scenario>/rho_table.{md,tex,csv} Table 1: ρ≤2 and ρ≤T per strategy, HAT reduction
    <scenario>/rho_reduction.csv      HAT's reduction of forgetting vs the best baseline
    <scenario>/rho_vs_t.{png,pdf,csv} ρ≤t against t with CI bands
    <scenario>/acc_matrix_<strategy>.png
    <scenario>/class_il.{md,csv}      class-incremental protocol: Class-IL last and average
                                      incremental accuracy, forgetting, ρ vs joint, Task-IL
                                      accuracy per strategy, when class records exist
    <scenario>/class_il_vs_t.{png,pdf,csv}  Class-IL accuracy against t, the same condition
    <scenario>/task_inference.{md,csv} per task-inference strategy (hat, packnet, pnn,
                                      pathnet) and task score: Class-IL and task-prediction
                                      accuracy, mean AUROC, validation criterion, the
                                      records' score marked; when a class record has
                                      task_inference
    <scenario>/class_il_loss.{png,pdf,csv}  Task-IL, task-prediction and Class-IL accuracy
                                      per task-inference strategy, the same condition
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

Every file but ``class_il*`` and ``task_inference*`` reads the task-incremental records only;
those the class-incremental ones (:mod:`reports.tables.class_il`).

:data:`ARTIFACTS` (declared in :mod:`reports.artifacts`, re-exported here) is the one list of
these files (pattern, condition, renderer, caption): it drives the writing, ``index.md``, the
page (:mod:`reports.html`) and the removal of files of these names left over from an earlier
report that this run does not produce, so ``index.md``, the page and the folder agree.
:func:`check_output` says, before anything is written, whether ``out`` can hold the report.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from . import render
from .artifacts import (
    ARTIFACTS,
    Artifact,
    BuildResult,
    Figure,
    Job,
    Text,
    artifact_files,
    caption_text,
    safe_name,
)
from .html import write_page
from .io import write_text
from .load import ReportError
from .tables import ScenarioReport, compute_report
from .targets import FILES as TARGET_FILES
from .targets import TITLE as TARGETS_TITLE
from .targets import Target, check_targets, write_targets
from .targets import to_html as targets_html

__all__ = [
    "ARTIFACTS",
    "Artifact",
    "artifact_files",
    "BuildResult",
    "build_report",
    "check_output",
    "default_workers",
    "safe_name",
]

def _scenario_files(rep: ScenarioReport, d: Path, jobs: list[Job]) -> list[tuple[Path, str]]:
    """Write one scenario's text files (:data:`ARTIFACTS`) and queue its figures on ``jobs``;
    returns (path, caption) pairs of everything, figures included, in index order."""
    items: list[tuple[Path, str]] = []
    for artifact in ARTIFACTS:
        if not artifact.when(rep):
            continue
        for f in artifact.files:
            if isinstance(f, Text):
                items.append((write_text(d / f.name, f.render(rep)), caption_text(f.caption, rep)))
            elif isinstance(f, Figure):
                paths = [d / name for name in f.names]
                jobs.append(f.draw(rep, paths))
                items += [(p, caption_text(c, rep)) for p, c in zip(paths, f.captions, strict=True)]
            else:
                for s in rep.acc_mean:
                    path = d / f.name.format(name=safe_name(s))
                    jobs.append(f.draw(rep, s, path))
                    items.append((path, f.caption(rep, s)))
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
    for name in ("index.md", "index.html"):
        if (out / name).is_dir():
            raise ReportError(f"cannot write the report to {out}: {out / name} is a folder")


def _call(job: Job) -> list[Path]:
    fn, args = job
    return fn(*args)


def default_workers() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _render_all(jobs: list[Job], workers: int) -> None:
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
    """Remove the files of :data:`ARTIFACTS` in ``d`` that are not in ``keep``."""
    for artifact in ARTIFACTS:
        for p in d.glob(artifact.pattern):
            if p.is_file() and p not in keep:
                p.unlink()


def build_report(
    records: list[dict], out: str | Path, confidence: float = 0.95, workers: int | None = None,
    targets: Sequence[Target] | None = None,
) -> BuildResult:
    """Compute (:func:`reports.tables.compute_report`) and write the report of ``records``
    under ``out``: every file of :data:`ARTIFACTS`, ``index.md`` and the page ``index.html``
    (:func:`reports.html.write_page`); with ``targets``, each checked against the records
    (:func:`reports.targets.check_targets`, ``result.targets``) in ``targets.md``,
    ``targets.csv`` and a section of the page (without, earlier target files are removed);
    returns what was written and what is missing. Figures are drawn by ``workers`` processes
    (default: the CPUs available; 1 = in this process)."""
    out = Path(out)
    reports = compute_report(records, confidence)
    result = BuildResult(out=out, reports=reports)
    if targets is not None:
        result.targets = check_targets(targets, records, confidence, reports=reports)
    sections = []
    notes: list[str] = []
    jobs: list[Job] = []
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
    headlines = [(sc, render.headline_md(rep)) for sc, rep in reports.items()]
    write_text(result.index, render.index_md(sections, result.missing, notes, result.duplicates,
                                             headlines))
    result.files.append(result.index)
    extra = []
    if result.targets:
        result.files += write_targets(result.targets, out, confidence)
        extra.append((TARGETS_TITLE, targets_html(result.targets, confidence)))
    else:
        for name in TARGET_FILES:
            (out / name).unlink(missing_ok=True)
    result.files.append(write_page(result, extra))
    return result
