"""Figures of the report (matplotlib, Agg backend, no pyplot state).

Sized for a paper: single-column figures are 3.3 in wide with 8 pt fonts; wider content (many
tasks, two panels) grows towards the 6.9 in double-column width. Every function writes its
files atomically and returns their paths.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .io import atomic_path
from .schema import param_text
from .tables import Capacity, Grid, Monitoring, Sensitivity, Stat

COLUMN_IN = 3.3
DOUBLE_IN = 6.9
FONT_PT = 8
PNG_DPI = 200

_RC = {
    "font.size": FONT_PT,
    "axes.titlesize": FONT_PT,
    "axes.labelsize": FONT_PT,
    "xtick.labelsize": FONT_PT,
    "ytick.labelsize": FONT_PT,
    "legend.fontsize": FONT_PT,
    "pdf.fonttype": 42,  # embed TrueType: editable text, accepted by publishers
    "svg.fonttype": "none",
}


@contextmanager
def _figure(width: float, height: float, margins: tuple[float, float, float, float]):
    """A Figure of ``width`` × ``height`` inches whose subplot area leaves ``margins`` (left,
    bottom, right, top) in inches. A fixed layout: constrained/tight layout would cost about
    as much as drawing the figure."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    left, bottom, right, top = margins
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height))
        FigureCanvasAgg(fig)
        fig.subplots_adjust(
            left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height
        )
        yield fig


def _save(fig, paths: Sequence[Path]) -> list[Path]:
    out = []
    for path in paths:
        path = Path(path)
        fmt = path.suffix.lstrip(".")
        with atomic_path(path) as tmp:
            fig.savefig(
                tmp,
                format=fmt,
                dpi=PNG_DPI if fmt == "png" else None,
                metadata={"Date": None} if fmt == "pdf" else None,
            )
        out.append(path)
    return out


def _annotated_heatmap(ax, m: np.ndarray, fmt, vmin: float, vmax: float, cmap: str = "viridis"):
    """imshow of ``m`` with each finite cell's value written in it (NaN cells left blank)."""
    masked = np.ma.masked_invalid(m)
    im = ax.imshow(masked, vmin=vmin, vmax=vmax, cmap=cmap, aspect="auto")
    span = (vmax - vmin) or 1.0
    for (i, j), v in np.ndenumerate(m):
        if math.isfinite(v):
            dark = (v - vmin) / span < 0.6
            ax.text(
                j,
                i,
                fmt(v),
                ha="center",
                va="center",
                fontsize=FONT_PT,
                color="white" if dark else "black",
            )
    return im


#: line styles and markers that tell apart strategies sharing one of the 10 colours
_LINES = ("-", "--", ":")
_MARKERS = ("o", "s", "^")
#: above this many entries a legend goes under the axes (3 columns) instead of inside them
_LEGEND_INSIDE = 6


def strategy_style(k: int) -> dict[str, str]:
    """Colour, line style and marker of the k-th strategy of a figure: the 10 default colours,
    then again with another line style and marker (the suite compares about 20 strategies)."""
    return {"color": f"C{k % 10}", "linestyle": _LINES[(k // 10) % len(_LINES)],
            "marker": _MARKERS[(k // 10) % len(_MARKERS)]}


def _legend_rows(n: int) -> int:
    """Rows of a legend of ``n`` entries placed under the axes (0: inside the axes)."""
    return 0 if n <= _LEGEND_INSIDE else math.ceil(n / 3)


def _plot_vs_t(curves: Mapping[str, Sequence[Stat]], n_tasks: int, paths: Sequence[Path], *,
               ylabel: str, scale: float = 1.0, zero: str | None = None,
               title: str | None = None) -> list[Path]:
    """One line per curve of ``curves`` (values × ``scale``) against t = 1..n_tasks with its
    CI band, HAT's line thicker; ``zero``: the label of a dashed line at 0 (drawn first);
    ``title`` above the axes. With many lines the legend moves under the axes."""
    t = np.arange(1, n_tasks + 1)
    rows = _legend_rows(len(curves) + (zero is not None))
    below = 0.16 * rows + (0.2 if rows else 0.0)
    above = 0.0 if title is None else 0.3
    with _figure(COLUMN_IN, 2.4 + below + above, (0.62, 0.45 + below, 0.1, 0.1 + above)) as fig:
        ax = fig.add_subplot()
        if zero is not None:
            ax.axhline(0.0, color="black", linestyle="--", linewidth=0.8, label=zero)
        for k, (s, stats) in enumerate(curves.items()):
            mean = scale * np.array([st.mean for st in stats])
            half = scale * np.array([st.half for st in stats])
            style = strategy_style(k)
            lw = 1.6 if s == "hat" else 1.0
            ax.plot(t, mean, markersize=3, linewidth=lw, label=s, **style)
            ok = np.isfinite(half) & np.isfinite(mean)
            if ok.any():
                ax.fill_between(t, mean - half, mean + half, where=ok, color=style["color"],
                                alpha=0.2 if len(curves) <= 10 else 0.1, linewidth=0)
        ax.set_xlabel("number of tasks learned $t$")
        ax.set_ylabel(ylabel)
        ax.set_xticks(t if n_tasks <= 10 else t[:: math.ceil(n_tasks / 10)])
        ax.set_xlim(0.8, n_tasks + 0.2)
        if title is not None:
            ax.set_title(title)
        if rows:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45 / 2.4 - 0.05),
                      frameon=False, ncol=3, fontsize=FONT_PT - 1, handlelength=2.2)
        else:
            ax.legend(loc="best", frameon=False, ncol=2 if len(curves) > 3 else 1)
        return _save(fig, paths)


def plot_rho_vs_t(
    rho: Mapping[str, Sequence[Stat]], n_tasks: int, paths: Sequence[Path]
) -> list[Path]:
    """ρ^{≤t} against t, one line per strategy with its CI band, dashed zero line. Every
    strategy of ``rho`` is drawn; with many the legend moves under the axes."""
    return _plot_vs_t(rho, n_tasks, paths, ylabel=r"forgetting ratio $\rho^{\leq t}$",
                      zero="joint (ρ = 0)")


def plot_class_il_vs_t(
    curve: Mapping[str, Sequence[Stat]], n_tasks: int, scenario: str, paths: Sequence[Path]
) -> list[Path]:
    """Class-incremental protocol: the Class-IL accuracy (%) after training task t (the mean
    of row t of ``agnostic_accuracy``) against t, one line per strategy (joint, the
    reference, included) with its CI band."""
    return _plot_vs_t(curve, n_tasks, paths, ylabel="Class-IL accuracy on tasks 1..t (%)",
                      scale=100.0, title=f"{scenario}: class-incremental protocol")


#: the Class-IL loss figure's bars: quantity (:data:`reports.tables.model.CLASS_IL_LOSS`),
#: legend label, colour
LOSS_BARS = (("task_il_last", "Task-IL", "C0"),
             ("task_prediction", "task prediction", "C1"),
             ("last", "Class-IL", "C3"))


def plot_class_il_loss(
    loss: Mapping[str, Mapping[str, Stat]], scenario: str, paths: Sequence[Path]
) -> list[Path]:
    """Where task inference loses Class-IL accuracy, after the last task: per strategy of
    ``loss`` (strategy -> quantity -> Stat), three bars with their CI: the Task-IL accuracy
    (within the task, its label given), the task-prediction accuracy (the task inferred
    right) and the Class-IL accuracy (neither given), in % (:data:`LOSS_BARS`). The drop from
    the first bar to the third is the accuracy lost to inferring the task."""
    names = list(loss)
    n_bars = len(LOSS_BARS)
    width = min(DOUBLE_IN, max(COLUMN_IN, 0.9 + 0.75 * len(names)))
    with _figure(width, 2.6, (0.55, 0.45, 0.1, 0.5)) as fig:
        ax = fig.add_subplot()
        x = np.arange(len(names), dtype=float)
        w = 0.8 / n_bars
        for k, (q, label, color) in enumerate(LOSS_BARS):
            mean = np.array([100 * loss[s][q].mean for s in names], dtype=float)
            half = np.array([100 * loss[s][q].half for s in names], dtype=float)
            ax.bar(x + (k - (n_bars - 1) / 2) * w, np.nan_to_num(mean), w, color=color,
                   label=label, yerr=np.where(np.isfinite(half), half, 0.0), capsize=1.5,
                   error_kw={"elinewidth": 0.8})
        ax.set_xticks(x)
        ax.set_xticklabels(names)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy after the last task (%)")
        ax.set_title(f"{scenario}: where Class-IL accuracy is lost", pad=14)
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 0.99), ncol=n_bars, frameon=False,
                  fontsize=FONT_PT - 1, handlelength=1.2, columnspacing=1.0,
                  borderaxespad=0.1)
        return _save(fig, paths)


#: the cost figure's panels: (metric of the x axis, its label)
COST_PANELS = (("seconds_per_task", "training time per task (s)"),
               ("peak_memory_mb", "peak memory (MB)"),
               ("state_mb", "state held between tasks (MB)"))


def cost_points(
    summary: Mapping[str, Mapping[str, Stat]], x_metric: str
) -> list[tuple[str, float, float, float, float]]:
    """One panel's points of the cost figure: ``(strategy, x, x_half, accuracy %, acc_half
    %)`` for each strategy of ``summary`` (in its order) with a final accuracy and a value of
    ``x_metric``; half-widths NaN when undefined (a single seed)."""
    out = []
    for s, m in summary.items():
        acc, x = m["final_acc"], m[x_metric]
        if acc.n == 0 or x.n == 0:
            continue
        out.append((s, x.mean, x.half, 100 * acc.mean, 100 * acc.half))
    return out


def plot_cost(
    summary: Mapping[str, Mapping[str, Stat]], scenario: str, paths: Sequence[Path]
) -> list[Path]:
    """What a method costs for its accuracy: final average accuracy (%) against training
    seconds per task, peak memory and the state held between tasks (MB), one panel each
    (:data:`COST_PANELS`) that has data (records written before ``peak_memory_mb`` and
    ``state_mb`` existed give the time panel alone), one labelled marker per strategy with
    its CI bars on both axes (:func:`cost_points`); an axis whose values span more than two
    orders of magnitude is logarithmic."""
    styles = {s: strategy_style(k) for k, s in enumerate(summary)}
    panels = [(metric, label, cost_points(summary, metric)) for metric, label in COST_PANELS]
    panels = [p for p in panels if p[2]] or [(*COST_PANELS[0], [])]
    width = min(DOUBLE_IN, 0.75 + 2.1 * len(panels))
    with _figure(width, 2.75, (0.55, 0.45, 0.1, 0.42)) as fig:
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False,
                            gridspec_kw={"wspace": 0.08})[0]
        for ax, (_metric, label, points) in zip(axes, panels, strict=True):
            for s, x, xh, y, yh in points:
                st = styles[s]
                ax.errorbar(x, y, xerr=None if math.isnan(xh) else xh,
                            yerr=None if math.isnan(yh) else yh, color=st["color"],
                            marker=st["marker"], markersize=4, linestyle="none",
                            elinewidth=0.8, capsize=1.5)
            if not points:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center",
                        va="center", color="grey")
            elif _log_scale([p[1] for p in points]):
                ax.set_xscale("log")
            _label_points(ax, [(s, x, y) for s, x, _, y, _ in points], styles)
            ax.set_xlabel(label)
            ax.grid(True, linewidth=0.3, alpha=0.5)
        axes[0].set_ylabel("final average accuracy (%)")
        fig.suptitle(f"{scenario}: accuracy against cost\n(mean ± CI over seeds; up and left "
                     "is better)", fontsize=FONT_PT)
        return _save(fig, paths)


#: label offsets (points) tried in turn, nearest first, so that labels do not overlap
_OFFSETS = [(dx, dy) for r in (4, 9, 15, 22, 30)
            for dx, dy in ((r, r / 2), (r, -r), (-r, r / 2), (-r, -r), (0, r), (0, -1.6 * r))]


def _label_points(ax, points: Sequence[tuple[str, float, float]], styles) -> None:
    """Write each point's name next to it, at the first offset of :data:`_OFFSETS` whose box
    (estimated from the text length) stays inside the axes and overlaps neither a label
    placed before nor a marker; a line joins a label placed far from its point."""
    ax.autoscale_view()
    size = FONT_PT - 2
    scale = 72.0 / ax.figure.dpi  # display pixels -> points
    x0, y0, x1, y1 = (v * scale for v in ax.get_window_extent().extents)
    where = [(name, *(v * scale for v in ax.transData.transform((x, y))))
             for name, x, y in points]
    obstacles = [(px - 3, py - 3, px + 3, py + 3) for _, px, py in where]

    def box(px: float, py: float, dx: float, dy: float, w: float) -> tuple[float, ...]:
        left = px + dx if dx >= 0 else px + dx - w
        return (left, py + dy, left + w, py + dy + size)

    def free(b: tuple[float, ...]) -> bool:
        inside = x0 <= b[0] and b[2] <= x1 and y0 <= b[1] and b[3] <= y1
        return inside and not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]
                                  for o in obstacles)

    for (name, x, y), (_, px, py) in sorted(zip(points, where, strict=True),
                                            key=lambda p: -p[1][2]):
        w = 0.62 * size * len(name) + 1
        dx, dy = next(((dx, dy) for dx, dy in _OFFSETS if free(box(px, py, dx, dy, w))),
                      _OFFSETS[0])
        obstacles.append(box(px, py, dx, dy, w))
        far = math.hypot(dx, dy) > 10
        ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points",
                    ha="left" if dx >= 0 else "right", va="bottom", fontsize=size,
                    color=styles[name]["color"],
                    arrowprops={"arrowstyle": "-", "color": styles[name]["color"],
                                "linewidth": 0.4, "shrinkA": 0, "shrinkB": 2}
                    if far else None)


def _log_scale(values: Sequence[float]) -> bool:
    """A log axis when positive values span more than two orders of magnitude."""
    pos = [v for v in values if v > 0]
    return len(pos) == len(values) and len(pos) > 1 and max(pos) / min(pos) > 100


def plot_acc_matrix(m: np.ndarray, title: str, path: Path) -> list[Path]:
    """Accuracy matrix heatmap (values in %): rows = after training task t, columns =
    evaluated task τ."""
    n = m.shape[0]
    width = min(DOUBLE_IN, max(COLUMN_IN, 0.36 * n + 1.6))
    with _figure(width, width - 0.45, (0.5, 0.45, 0.62, 0.28)) as fig:
        ax = fig.add_subplot()
        digits = 1 if n <= 6 else 0
        im = _annotated_heatmap(ax, 100 * m, lambda v: f"{v:.{digits}f}", 0.0, 100.0)
        ticks = np.arange(n)
        ax.set_xticks(ticks, [str(i + 1) for i in ticks])
        ax.set_yticks(ticks, [str(i + 1) for i in ticks])
        ax.set_xlabel("evaluated on task τ")
        ax.set_ylabel("after training task t")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, label="accuracy (%)", fraction=0.05, pad=0.03)
        return _save(fig, [path])


def plot_grid(grid: Grid, scenario: str, path: Path) -> list[Path]:
    """HAT robustness heatmap over smax (rows) × c (columns)."""
    m = grid.matrix()
    if grid.metric == "rho":
        finite = m[np.isfinite(m)]
        lo = min(-0.1, float(finite.min())) if finite.size else -1.0
        vmin, vmax, fmt, label = lo, 0.0, (lambda v: f"{v:.3f}"), r"$\rho^{\leq T}$"
        values = m
    else:
        vmin, vmax, fmt, label = 0.0, 100.0, (lambda v: f"{v:.1f}"), "final accuracy (%)"
        values = 100 * m
    width = min(DOUBLE_IN, max(COLUMN_IN, 0.5 * len(grid.c) + 1.7))
    height = max(2.0, 0.3 * len(grid.smax) + 1.0)
    with _figure(width, height, (0.55, 0.45, 0.62, 0.28)) as fig:
        ax = fig.add_subplot()
        im = _annotated_heatmap(ax, values, fmt, vmin, vmax)
        ax.set_xticks(np.arange(len(grid.c)), [f"{c:g}" for c in grid.c])
        ax.set_yticks(np.arange(len(grid.smax)), [f"{s:g}" for s in grid.smax])
        ax.set_xlabel("$c$ (regularisation strength)")
        ax.set_ylabel(r"$s_{\max}$")
        ax.set_title(f"{scenario}: HAT robustness")
        fig.colorbar(im, ax=ax, label=label, fraction=0.05, pad=0.03)
        return _save(fig, [path])


def plot_capacity(cap: Capacity, scenario: str, path: Path) -> list[Path]:
    """Per layer and task: fraction of units used, and fraction reused from earlier tasks."""
    panels = [("units used (%)", cap.used)]
    if cap.overlap is not None:
        panels.append(("reused from earlier tasks (%)", cap.overlap))
    n_t = len(cap.tasks)
    left = 0.35 + 0.06 * max(len(la) for la in cap.layers)
    width = min(DOUBLE_IN, max(COLUMN_IN, len(panels) * max(1.7, 0.3 * n_t + 0.2) + left + 0.5))
    height = max(1.6, 0.3 * len(cap.layers) + 1.0)
    with _figure(width, height, (left, 0.45, 0.5, 0.45)) as fig:
        axes = fig.subplots(
            1, len(panels), squeeze=False, sharey=True, gridspec_kw={"wspace": 0.08}
        )[0]
        for ax, (title, m) in zip(axes, panels, strict=True):
            im = _annotated_heatmap(ax, 100 * m, lambda v: f"{v:.0f}", 0.0, 100.0)
            ax.set_xticks(np.arange(n_t), [str(i + 1) for i in range(n_t)])
            ax.set_yticks(np.arange(len(cap.layers)), cap.layers)
            ax.set_xlabel("task")
            ax.set_title(title)
        axes[0].set_ylabel("layer")
        fig.colorbar(im, ax=list(axes), fraction=0.04, pad=0.02)
        fig.suptitle(f"{scenario}: HAT capacity (mean over {cap.n} seed(s))", fontsize=FONT_PT)
        return _save(fig, [path])


def plot_compression(cap: Capacity, scenario: str, path: Path) -> list[Path]:
    """Per task: fraction of units (mean over layers) and of weights the task's mask keeps."""
    n_t = len(cap.tasks)
    x = np.arange(n_t)
    units = 100 * cap.used.mean(axis=0)
    width = min(DOUBLE_IN, max(COLUMN_IN, 0.3 * n_t + 1.5))
    with _figure(width, 2.2, (0.55, 0.45, 0.1, 0.28)) as fig:
        ax = fig.add_subplot()
        both = cap.weights_kept is not None
        w = 0.4 if both else 0.7
        ax.bar(x - (w / 2 if both else 0), units, w, label="units (mean over layers)")
        if both:
            ax.bar(x + w / 2, 100 * cap.weights_kept, w, label="weights")
        ax.set_xticks(x, [str(i + 1) for i in x])
        ax.set_xlabel("task")
        ax.set_ylabel("kept by the mask (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{scenario}: HAT compression")
        ax.legend(frameon=False, loc="upper right")
        return _save(fig, [path])


def plot_compression_alone(cap: Capacity, scenario: str, path: Path) -> list[Path]:
    """Each task trained alone (the paper's compression experiment): fraction of the
    network's units and of its weights that the task's binary mask keeps, per task."""
    n_t = len(cap.tasks)
    x = np.arange(n_t)
    units = cap.units_kept if cap.units_kept is not None else cap.used.mean(axis=0)
    bars = [("units", 100 * units)]
    if cap.weights_kept is not None:
        bars.append(("weights", 100 * cap.weights_kept))
    w = 0.8 / len(bars)
    longest = max(len(t) for t in cap.tasks)
    width = min(DOUBLE_IN, max(COLUMN_IN, 0.45 * n_t + 1.2))
    # rotate the task names when they would not fit side by side (~0.055 in per character)
    rotate = 30 if n_t * (0.055 * longest + 0.1) > width - 0.65 else 0
    bottom = 0.4 + (0.5 * 0.055 * longest if rotate else 0.0)
    with _figure(width, 1.9 + bottom, (0.55, bottom, 0.1, 0.4)) as fig:
        ax = fig.add_subplot()
        for k, (label, values) in enumerate(bars):
            pos = x + (k - (len(bars) - 1) / 2) * w
            ax.bar(pos, values, w, label=label, color=f"C{k}")
            for xi, v in zip(pos, values, strict=True):
                if math.isfinite(v):
                    ax.text(xi, v + 1.5, f"{v:.0f}", ha="center", va="bottom",
                            fontsize=FONT_PT - 2)
        ax.set_xticks(x, cap.tasks, rotation=rotate, ha="right" if rotate else "center")
        ax.set_ylabel("kept by the binary mask (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{scenario}: HAT compression, each task trained alone\n"
                     f"(mean over {cap.n} seed(s))")
        ax.legend(frameon=False, loc="upper right")
        return _save(fig, [path])


def plot_monitoring(mon: Monitoring, scenario: str, path: Path) -> list[Path]:
    """Monitoring over training: per layer, the fraction of units the task being trained
    uses (top) and the fraction of those that earlier tasks already use (bottom), against
    the epoch counted over the whole sequence; dotted lines separate the tasks."""
    lengths = [len(u) for u in mon.used]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    total = int(starts[-1])
    width = min(DOUBLE_IN, max(COLUMN_IN, 0.02 * total + 2.5))
    with _figure(width, 3.4, (0.55, 0.45, 0.1, 0.45)) as fig:
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"hspace": 0.12})
        for ax, data, label in ((top, mon.used, "units used (%)"),
                                (bottom, mon.reuse, "reused (%)")):
            for li, layer in enumerate(mon.layers):
                for t, m in enumerate(data):
                    ep = starts[t] + np.arange(1, len(m) + 1)
                    ax.plot(ep, 100 * m[:, li], color=f"C{li % 10}", linewidth=1.0,
                            marker="o" if len(m) <= 3 else None, markersize=2,
                            label=layer if t == 0 else None)
            for b in starts[1:-1]:
                ax.axvline(b + 0.5, color="grey", linestyle=":", linewidth=0.8)
            ax.set_ylim(-3, 103)
            ax.set_ylabel(label)
        for t in range(len(mon.used)):
            top.text((starts[t] + starts[t + 1] + 1) / 2, 104, str(t + 1), ha="center",
                     va="bottom", fontsize=FONT_PT - 1)
        bottom.set_xlabel("epoch over the task sequence (top: task)")
        bottom.set_xlim(0.5, total + 0.5)
        bottom.legend(frameon=False, loc="upper left", ncol=min(4, len(mon.layers)),
                      title="layer", title_fontsize=FONT_PT - 1)
        fig.suptitle(f"{scenario}: HAT monitoring (mean over {mon.n} seed(s))", fontsize=FONT_PT)
        return _save(fig, [path])


# --- hyperparameter sensitivity -------------------------------------------------------------------


def log_axis(values: Sequence[object]) -> bool:
    """A log x axis for these values: all positive numbers spanning more than 2 decades."""
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return len(nums) == len(values) > 1 and min(nums) > 0 and max(nums) / min(nums) > 100


def _panel_kind(s: Sensitivity) -> str:
    return {1: "line", 2: "heatmap"}.get(len(s.keys), "lines")


def _tick(v: object) -> str:
    """Short tick label: 3 significant digits, ``1e4`` rather than ``1e+04``."""
    if isinstance(v, float):
        text = f"{v:.3g}"
        return text.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    return param_text(v)


def _ticks(values: Sequence[object]) -> list[str]:
    return [_tick(v) for v in values]


def _rotation(labels: Sequence[str], width: float) -> int:
    """45 degrees when the labels would not fit side by side in ``width`` inches."""
    return 45 if sum(0.07 * len(t) + 0.08 for t in labels) > width else 0


def _xticks(ax, positions, labels: Sequence[str], rotation: int) -> None:
    """x tick labels, rotated ones anchored at their right end under their tick."""
    if rotation:
        ax.set_xticks(positions, labels, rotation=rotation, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(positions, labels)


def _chosen_marker(ax, x: float, y: float, edge: bool = False) -> None:
    """The chosen point's star; ``edge``: labelled as lying at the edge of its range."""
    ax.plot([x], [y], linestyle="none", marker="*", markersize=10, color="crimson",
            markeredgecolor="black", markeredgewidth=0.4, zorder=5)
    if edge:
        _edge_label(ax, x, y)


#: the label of a chosen point at an end of its searched range, in the panel
EDGE_LABEL = "edge"


def _edge_label(ax, x: float, y: float) -> None:
    ax.annotate(EDGE_LABEL, (x, y), xytext=(5, 5), textcoords="offset points",
                color="crimson", fontsize=FONT_PT - 1, fontweight="bold", zorder=6,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
                      "alpha": 0.8})


def _sensitivity_line(ax, s: Sensitivity) -> None:
    """One key: the criterion over its values."""
    axis = s.axes[0]
    numeric = all(isinstance(v, float) for v in axis)
    xs = np.array(axis, dtype=float) if numeric else np.arange(len(axis), dtype=float)
    ys = np.array([100 * s.value((v,)) for v in axis])
    ok = np.isfinite(ys)
    ax.plot(xs[ok], ys[ok], marker="o", markersize=3, linewidth=1.0, color="C0")
    if log_axis(axis):
        ax.set_xscale("log")
    if not numeric or len(axis) <= 10:
        labels = _ticks(axis)
        _xticks(ax, xs, labels, _rotation(labels, 1.8))
        ax.minorticks_off()
    for x, v, y in zip(xs, axis, ys, strict=True):
        if s.point_key((v,)) == s.chosen and math.isfinite(y):
            _chosen_marker(ax, x, y, edge=bool(s.edges()))
    ax.set_xlabel(s.keys[0])
    ax.set_ylabel("validation criterion (%)")


def _sensitivity_heatmap(fig, ax, s: Sensitivity) -> None:
    """Two keys: annotated heatmap, the key with more values on the columns; the chosen cell
    framed."""
    r, c = (0, 1) if len(s.axes[0]) <= len(s.axes[1]) else (1, 0)
    rows, cols = s.axes[r], s.axes[c]
    m = np.full((len(rows), len(cols)), np.nan)
    chosen = None
    for i, vr in enumerate(rows):
        for j, vc in enumerate(cols):
            point = [None, None]
            point[r], point[c] = vr, vc
            m[i, j] = 100 * s.value(point)
            if s.point_key(point) == s.chosen:
                chosen = (i, j)
    finite = m[np.isfinite(m)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    im = _annotated_heatmap(ax, m, lambda v: f"{v:.1f}", lo, hi)
    if chosen is not None:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((chosen[1] - 0.5, chosen[0] - 0.5), 1, 1, fill=False,
                               edgecolor="crimson", linewidth=2.0))
        if s.edges():
            ax.annotate(EDGE_LABEL, (chosen[1] - 0.45, chosen[0] - 0.45), va="top",
                        color="crimson", fontsize=FONT_PT - 2, fontweight="bold", zorder=6)
    labels = _ticks(cols)
    _xticks(ax, np.arange(len(cols)), labels, _rotation(labels, 0.4 * len(cols)))
    ax.set_yticks(np.arange(len(rows)), _ticks(rows))
    ax.set_xlabel(s.keys[c])
    ax.set_ylabel(s.keys[r])
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03, label="validation criterion (%)")


def _sensitivity_lines(ax, s: Sensitivity) -> None:
    """Three or more keys: one line per value of the first key over the combinations of the
    others."""
    combos = list(itertools.product(*s.axes[1:]))
    xs = np.arange(len(combos))
    for k, first in enumerate(s.axes[0]):
        ys = np.array([100 * s.value((first, *combo)) for combo in combos])
        ok = np.isfinite(ys)
        ax.plot(xs[ok], ys[ok], marker="o", markersize=2.5, linewidth=1.0,
                color=f"C{k % 10}", label=param_text(first))
        for x, combo, y in zip(xs, combos, ys, strict=True):
            if s.point_key((first, *combo)) == s.chosen and math.isfinite(y):
                _chosen_marker(ax, x, y, edge=bool(s.edges()))
    step = max(1, math.ceil(len(combos) / 24))
    labels = ["/".join(_ticks(c)) for c in combos[::step]]
    _xticks(ax, xs[::step], labels, 90 if len(labels) > 12 else _rotation(labels, 2.0))
    ax.set_xlabel(" / ".join(s.keys[1:]))
    ax.set_ylabel("validation criterion (%)")
    ax.legend(title=s.keys[0], frameon=False, fontsize=FONT_PT - 1, title_fontsize=FONT_PT - 1,
              loc="best")


def _panel_width(s: Sensitivity) -> float:
    """Inches a panel needs (axis, labels, colorbar)."""
    kind = _panel_kind(s)
    if kind == "heatmap":
        return max(2.6, 0.4 * max(len(a) for a in s.axes) + 1.7)
    if kind == "lines":
        return max(2.6, 0.16 * math.prod(len(a) for a in s.axes[1:]) + 1.0)
    return 2.6


def _panel_height(s: Sensitivity) -> float:
    if _panel_kind(s) == "heatmap":
        return max(2.1, 0.28 * min(len(a) for a in s.axes) + 1.2)
    return 2.1


def _layout(sens: Sequence[Sensitivity]) -> list[list[int]]:
    """Rows of panel indices: a wide panel (over half the page) alone, narrow ones in pairs."""
    rows: list[list[int]] = []
    last_narrow = False
    for i, s in enumerate(sens):
        narrow = _panel_width(s) <= DOUBLE_IN / 2
        if narrow and last_narrow and len(rows[-1]) < 2:
            rows[-1].append(i)
        else:
            rows.append([i])
        last_narrow = narrow
    return rows


#: the sensitivity panel title's start of the line naming a chosen value at an end of its range
EDGE_TITLE = "at the edge of the searched range: "


def sensitivity_title(s: Sensitivity) -> str:
    """Panel title: the strategy and how much its criterion moves over the search space, and
    (a third line) the chosen values that lie at an end of their searched range."""
    vals = [100 * v for v in s.values.values() if math.isfinite(v)]
    n = len(s.values)
    mark = "□" if _panel_kind(s) == "heatmap" else "★"
    what = "chosen" if s.source == "selection" else "best"
    if not vals:
        return f"{s.strategy}: no criterion value"
    title = (f"{s.strategy}: spread {max(vals) - min(vals):.1f} pp over {n} point"
             f"{'s' if n != 1 else ''}\n({min(vals):.1f}–{max(vals):.1f} %; {mark} {what})")
    edges = s.edges()
    if edges:
        title += "\n" + EDGE_TITLE + ", ".join(
            f"{e.key.split('.', 1)[-1]} = {_tick(e.value)} ({e.side})" for e in edges)
    return title


def plot_sensitivity(sens: Sequence[Sensitivity], scenario: str, paths: Sequence[Path]
                     ) -> list[Path]:
    """Per strategy, one panel with its validation criterion over its whole search space,
    the chosen (or, for grid records, the best) point marked: one key a line (log x axis over
    more than 2 decades), two keys an annotated heatmap, more keys one line per value of the
    first key. Wide panels take a row of their own, narrow ones go two to a row."""
    rows = _layout(sens)
    two = any(len(r) == 2 for r in rows)
    wide = any(_panel_width(s) > DOUBLE_IN / 2 for s in sens)
    width = DOUBLE_IN if two or wide else max(COLUMN_IN, max(_panel_width(s) for s in sens))
    heights = [max(_panel_height(sens[i]) for i in r) for r in rows]
    heat = any(_panel_kind(s) == "heatmap" for s in sens)
    many = any(_panel_kind(s) == "lines" for s in sens)
    # room for the next row's title (a line more naming values at an edge) and rotated ticks
    gap = (1.3 if many else 1.0) + (0.15 if any(s.edges() for s in sens) else 0.0)
    bottom, top = (0.9 if many else 0.55), 1.0
    right = 0.5 if heat else 0.15  # the colorbar's label
    height = sum(heights) + (len(rows) - 1) * gap + bottom + top
    ncols = 2 if two or wide else 1
    gap_w = 1.0 if heat else 0.75  # the colorbar's label and the next panel's y label
    axis_w = (width - 0.6 - right - (ncols - 1) * gap_w) / ncols
    with _figure(width, height, (0.6, bottom, right, top)) as fig:
        gs = fig.add_gridspec(len(rows), ncols, height_ratios=heights,
                              hspace=gap / float(np.mean(heights)), wspace=gap_w / axis_w)
        for k, row in enumerate(rows):
            for j, i in enumerate(row):
                s = sens[i]
                narrow = _panel_width(s) <= DOUBLE_IN / 2
                ax = fig.add_subplot(gs[k, j] if narrow or ncols == 1 else gs[k, :])
                kind = _panel_kind(s)
                if kind == "line":
                    _sensitivity_line(ax, s)
                elif kind == "heatmap":
                    _sensitivity_heatmap(fig, ax, s)
                else:
                    _sensitivity_lines(ax, s)
                ax.set_title(sensitivity_title(s), fontsize=FONT_PT - 1)
        fig.suptitle(f"{scenario}: validation criterion over each strategy's search space\n"
                     "(a flat panel: robust to its hyperparameters)", fontsize=FONT_PT)
        return _save(fig, paths)
