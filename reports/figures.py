"""Figures of the report (matplotlib, Agg backend, no pyplot state).

Sized for a paper: single-column figures are 3.3 in wide with 8 pt fonts; wider content (many
tasks, two panels) grows towards the 6.9 in double-column width. Every function writes its
files atomically and returns their paths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .render import atomic_path
from .tables import Capacity, Grid, Monitoring, Stat

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


def plot_rho_vs_t(
    rho: Mapping[str, Sequence[Stat]], n_tasks: int, paths: Sequence[Path]
) -> list[Path]:
    """ρ^{≤t} against t, one line per strategy with its CI band, dashed zero line."""
    t = np.arange(1, n_tasks + 1)
    with _figure(COLUMN_IN, 2.4, (0.62, 0.45, 0.1, 0.1)) as fig:
        ax = fig.add_subplot()
        ax.axhline(0.0, color="black", linestyle="--", linewidth=0.8, label="joint (ρ = 0)")
        for k, (s, stats) in enumerate(rho.items()):
            mean = np.array([st.mean for st in stats])
            half = np.array([st.half for st in stats])
            color = f"C{k % 10}"
            lw = 1.6 if s == "hat" else 1.0
            ax.plot(t, mean, marker="o", markersize=3, linewidth=lw, color=color, label=s)
            ok = np.isfinite(half) & np.isfinite(mean)
            if ok.any():
                ax.fill_between(
                    t, mean - half, mean + half, where=ok, color=color, alpha=0.2, linewidth=0
                )
        ax.set_xlabel("number of tasks learned $t$")
        ax.set_ylabel(r"forgetting ratio $\rho^{\leq t}$")
        ax.set_xticks(t if n_tasks <= 10 else t[:: math.ceil(n_tasks / 10)])
        ax.set_xlim(0.8, n_tasks + 0.2)
        ax.legend(loc="best", frameon=False, ncol=2 if len(rho) > 3 else 1)
        return _save(fig, paths)


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
