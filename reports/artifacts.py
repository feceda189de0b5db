"""The files of a scenario's report, declared once: :data:`ARTIFACTS` (pattern, condition,
renderer, caption) drives the writing (:mod:`reports.build`), ``index.md`` and the page
(:mod:`reports.html`); :class:`BuildResult` is what a written report holds."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import figures, render
from .tables import Duplicate, Missing, ScenarioReport
from .targets import TargetResult

__all__ = [
    "ARTIFACTS",
    "Artifact",
    "BuildResult",
    "Caption",
    "Figure",
    "Job",
    "StrategyFigure",
    "Text",
    "artifact_files",
    "caption_text",
    "safe_name",
]


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
    #: each target checked against the records (``build_report``'s ``targets``), in order
    targets: list[TargetResult] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.out / "index.md"

    @property
    def page(self) -> Path:
        """The report page (:mod:`reports.html`)."""
        return self.out / "index.html"


# --- the artifacts of a scenario ------------------------------------------------------------

#: a caption: fixed text, or text from the scenario's report
Caption = str | Callable[[ScenarioReport], str]
#: a figure job: the function that draws it and its arguments (run in a worker process)
Job = tuple[Callable, tuple]


@dataclass(frozen=True)
class Text:
    """A text file: its name, its renderer and its caption in ``index.md``."""

    name: str
    render: Callable[[ScenarioReport], str]
    caption: Caption


@dataclass(frozen=True)
class Figure:
    """The files one drawing writes (e.g. PNG and PDF): their names and captions, and the job
    that draws them into the given paths."""

    names: tuple[str, ...]
    draw: Callable[[ScenarioReport, list[Path]], Job]
    captions: tuple[Caption, ...]


@dataclass(frozen=True)
class StrategyFigure:
    """One figure per strategy of the report (``{name}``: the strategy's file-safe name)."""

    name: str
    draw: Callable[[ScenarioReport, str, Path], Job]
    caption: Callable[[ScenarioReport, str], str]


@dataclass(frozen=True)
class Artifact:
    """Files of a scenario's report that exist under one condition. ``pattern`` (a glob)
    names every file of the artifact: those this report does not write are removed (left
    over from an earlier report)."""

    pattern: str
    when: Callable[[ScenarioReport], bool]
    files: tuple[Text | Figure | StrategyFigure, ...]


def _conf(rep: ScenarioReport) -> str:
    return f"{rep.confidence:.0%}"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _one(draw: str, *data: Callable[[ScenarioReport], Any]):
    """A figure job calling ``figures.<draw>(*data(rep), path)`` into its one file (the
    function is looked up when the job is made)."""
    return lambda rep, paths: (getattr(figures, draw), (*(f(rep) for f in data), paths[0]))


def _many(draw: str, *data: Callable[[ScenarioReport], Any]):
    """A figure job calling ``figures.<draw>(*data(rep), paths)`` into all its files."""
    return lambda rep, paths: (getattr(figures, draw), (*(f(rep) for f in data), paths))


def _scenario(rep: ScenarioReport) -> str:
    return rep.scenario


def _png(stem: str, draw: str, data: Callable[[ScenarioReport], Any], caption: Caption) -> Figure:
    """``<stem>.png`` alone, drawn by ``figures.<draw>(data(rep), rep.scenario, path)``."""
    return Figure((f"{stem}.png",), _one(draw, data, _scenario), (caption,))


_SAME_AS_PDF = "the same figure as PDF"


def _task_inference(rep: ScenarioReport) -> bool:
    """Whether an untagged class record (not diverged) of the scenario has
    ``task_inference``: the task-inference table and the Class-IL loss figure exist."""
    return rep.class_il is not None and rep.class_il.task_inference is not None

#: every file of a scenario's report, in the order of ``index.md``
ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("rho_table.*", lambda rep: bool(rep.rho), (
        Text("rho_table.md", render.rho_table_md, lambda rep: (
            f"Table 1: forgetting ratio ρ≤t at "
            f"{' and '.join(f't = {t}' for t in rep.table_ts)} per strategy (mean ± "
            f"{_conf(rep)} CI over seeds), best in bold, with HAT's reduction of forgetting vs "
            "the best baseline")),
        Text("rho_table.tex", render.rho_table_tex, "Table 1 as LaTeX (booktabs)"),
        Text("rho_table.csv", render.rho_table_csv, "Table 1 as CSV (plain numbers)"),
    )),
    Artifact("rho_reduction.csv", lambda rep: bool(rep.rho), (
        Text("rho_reduction.csv", render.reduction_csv,
             "HAT's reduction of forgetting (%) against the best baseline, per t of Table 1"),
    )),
    Artifact("rho_vs_t.*", lambda rep: bool(rep.rho), (
        Figure(("rho_vs_t.png", "rho_vs_t.pdf"),
               _many("plot_rho_vs_t", lambda rep: rep.rho, lambda rep: rep.n_tasks),
               (lambda rep: f"forgetting ratio ρ≤t against t with {_conf(rep)} CI bands; "
                "dashed: joint training (ρ = 0)", _SAME_AS_PDF)),
        Text("rho_vs_t.csv", lambda rep: render.rho_table_csv(rep, all_t=True),
             "data of the figure: ρ≤t for every t"),
    )),
    Artifact("summary.*", lambda rep: bool(rep.summary), (
        Text("summary.md", render.summary_md, lambda rep: (
            "final average accuracy, BWT, forgetting, FWT, intransigence, task-agnostic "
            "accuracy, training time per task and peak memory per strategy (mean ± "
            f"{_conf(rep)} CI)")),
        Text("summary.csv", render.summary_csv, "the same as CSV (fractions)"),
    )),
    Artifact("cost.*", lambda rep: bool(rep.cost_strategies()), (
        Figure(("cost.png", "cost.pdf"),
               _many("plot_cost",
                     lambda rep: {s: rep.summary[s] for s in rep.cost_strategies()}, _scenario),
               (lambda rep: "cost: final average accuracy against training time per task and "
                f"peak memory, one marker per method with {_conf(rep)} CI bars, to choose a "
                "method on cost as well as accuracy", _SAME_AS_PDF)),
        Text("cost.csv", render.cost_csv,
             "data of the cost figure: final accuracy, seconds per task, peak memory (MB)"),
    )),
    Artifact("acc_matrix_*.png", lambda rep: bool(rep.acc_mean), (
        StrategyFigure(
            "acc_matrix_{name}.png",
            lambda rep, s, path: (figures.plot_acc_matrix, (
                rep.acc_mean[s],
                f"{rep.scenario}: {s} (mean over {_seeds(len(rep.seeds[s]))})", path)),
            lambda rep, s: f"accuracy matrix of {s}: row t after training task t, column τ the "
            f"evaluated task, mean over {len(rep.seeds[s])} seed(s)"),
    )),
    Artifact("class_il.*", lambda rep: rep.class_il is not None, (
        Text("class_il.md", render.class_il_md, lambda rep: (
            "class-incremental protocol (Class-IL): last Class-IL accuracy, average incremental "
            "accuracy, Class-IL forgetting, ρ≤T against joint trained in the class protocol and "
            "the same runs' Task-IL final accuracy"
            + (" (and, for task inference, the task-prediction accuracy)"
               if rep.class_il.has_task_prediction() else "")
            + f" per strategy (mean ± {_conf(rep)} CI)")),
        Text("class_il.csv", render.class_il_csv, "the same as CSV (fractions)"),
    )),
    Artifact("class_il_vs_t.*", lambda rep: rep.class_il is not None, (
        Figure(("class_il_vs_t.png", "class_il_vs_t.pdf"),
               _many("plot_class_il_vs_t", lambda rep: rep.class_il.curve,
                     lambda rep: rep.class_il.n_tasks, _scenario),
               (lambda rep: "class-incremental protocol: Class-IL accuracy on tasks 1..t after "
                f"training task t against t, per strategy (joint: the reference) with "
                f"{_conf(rep)} CI bands", _SAME_AS_PDF)),
        Text("class_il_vs_t.csv", render.class_il_curve_csv,
             "data of the figure: Class-IL accuracy after each t"),
    )),
    Artifact("task_inference.*", _task_inference, (
        Text("task_inference.md", render.task_inference_md, lambda rep: (
            "class-incremental protocol, task inference (hat, packnet, pnn, pathnet): per "
            "strategy and task score, the last Class-IL accuracy, task-prediction accuracy, "
            "mean AUROC over tasks and validation criterion (mean ± "
            f"{_conf(rep)} CI), the score the records chose marked")),
        Text("task_inference.csv", render.task_inference_csv,
             "the same as CSV (fractions; AUROC in [0, 1])"),
    )),
    Artifact("class_il_loss.*",
             lambda rep: _task_inference(rep) and bool(rep.class_il.loss_strategies()), (
        Figure(("class_il_loss.png", "class_il_loss.pdf"),
               _many("plot_class_il_loss",
                     lambda rep: {s: rep.class_il.stats[s]
                                  for s in rep.class_il.loss_strategies()}, _scenario),
               (lambda rep: "class-incremental protocol, where task inference loses accuracy: "
                "per strategy, after the last task, the Task-IL accuracy (task label given), "
                "the task-prediction accuracy and the Class-IL accuracy (no task label), "
                f"with {_conf(rep)} CI bars", _SAME_AS_PDF)),
        Text("class_il_loss.csv", render.class_il_loss_csv,
             "data of the figure: Task-IL, task-prediction and Class-IL accuracy per strategy "
             "(fractions)"),
    )),
    Artifact("robustness.*", lambda rep: rep.grid is not None, (
        _png("robustness", "plot_grid", lambda rep: rep.grid,
             lambda rep: "HAT robustness: "
             + ("ρ≤T" if rep.grid.metric == "rho" else
                "final accuracy (no joint records for ρ)") + " over the smax × c grid"),
        Text("robustness.md", lambda rep: render.grid_md(rep.grid, rep.scenario),
             "the robustness grid as a table (mean ± CI)"),
        Text("robustness.csv", lambda rep: render.grid_csv(rep.grid),
             "the robustness grid as CSV"),
    )),
    Artifact("capacity.png", lambda rep: rep.capacity is not None, (
        _png("capacity", "plot_capacity", lambda rep: rep.capacity,
             "HAT capacity: fraction of each layer's units used per task, and how much of it "
             "earlier tasks already used"),
    )),
    Artifact("compression.*", lambda rep: rep.capacity is not None, (
        _png("compression", "plot_compression", lambda rep: rep.capacity,
             "HAT compression: fraction of units and weights kept per task"),
        Text("compression.md", lambda rep: render.compression_md(rep.capacity, rep.scenario),
             "HAT compression per task and layer as a table"),
        Text("compression.csv", lambda rep: render.compression_csv(rep.capacity),
             "the compression table as CSV"),
    )),
    Artifact("compression_alone.*", lambda rep: rep.compression is not None, (
        _png("compression_alone", "plot_compression_alone", lambda rep: rep.compression,
             "HAT compression, each task trained alone (the paper's compression experiment): "
             "fraction of the network's units and weights its binary mask keeps"),
        Text("compression_alone.md",
             lambda rep: render.compression_alone_md(rep.compression, rep.scenario),
             "compression per task trained alone, per layer and overall, as a table"),
        Text("compression_alone.csv", lambda rep: render.compression_alone_csv(rep.compression),
             "compression per task trained alone as CSV (fractions)"),
    )),
    Artifact("monitoring.*", lambda rep: rep.monitoring is not None, (
        _png("monitoring", "plot_monitoring", lambda rep: rep.monitoring,
             "HAT monitoring: per layer, the fraction of units the task being trained uses "
             "(capacity) and the fraction of those reused from earlier tasks, epoch by "
             "epoch over the task sequence"),
        Text("monitoring.csv", lambda rep: render.monitoring_csv(rep.monitoring),
             "data of the monitoring figure: task, epoch, layer, used, reuse, seeds"),
    )),
    Artifact("hyperparameters.*", lambda rep: bool(rep.hyperparameters), (
        Text("hyperparameters.md", render.hyperparameters_md,
             "hyperparameters each strategy ran with, and their source: selected on "
             "validation data (preset, seeds, epochs, criterion value) or defaults / set by "
             "hand"),
        Text("hyperparameters.csv", render.hyperparameters_csv,
             "the hyperparameter table as CSV (one column per hyperparameter)"),
    )),
    Artifact("sensitivity.*", lambda rep: bool(rep.sensitivity), (
        Figure(("sensitivity.png", "sensitivity.pdf"),
               _many("plot_sensitivity", lambda rep: rep.sensitivity, _scenario),
               ("hyperparameter sensitivity: per strategy, the validation criterion (mean "
                "validation accuracy over all tasks after the last task) over its whole search "
                "space, the chosen point marked; a flat panel is a method robust to its "
                "hyperparameters", _SAME_AS_PDF)),
        Text("sensitivity.csv", lambda rep: render.sensitivity_csv(rep.sensitivity),
             "data of the sensitivity figure: one row per point (strategy, params, value, "
             "chosen, source, n_seeds)"),
    )),
)


def caption_text(caption: Caption, rep: ScenarioReport) -> str:
    """The caption's text for ``rep``."""
    return caption if isinstance(caption, str) else caption(rep)


def artifact_files(artifact: Artifact, rep: ScenarioReport) -> list[tuple[str, str]]:
    """(file name, caption) of every file ``artifact`` writes for ``rep`` (none when its
    condition does not hold), in index order."""
    if not artifact.when(rep):
        return []
    items: list[tuple[str, str]] = []
    for f in artifact.files:
        if isinstance(f, Text):
            items.append((f.name, caption_text(f.caption, rep)))
        elif isinstance(f, Figure):
            items += [(n, caption_text(c, rep)) for n, c in zip(f.names, f.captions, strict=True)]
        else:
            items += [(f.name.format(name=safe_name(s)), f.caption(rep, s)) for s in rep.acc_mean]
    return items
