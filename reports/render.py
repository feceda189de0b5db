"""Text renderings (Markdown, LaTeX, CSV) of the data computed in :mod:`reports.tables`.

Every function returns a string; :func:`reports.io.write_text` writes it atomically. CSV files
hold plain numbers (full precision, ``nan`` where undefined); Markdown/LaTeX hold rounded,
human text.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import metrics
from .per_run import NO_DATA
from .tables import (
    CLASS_IL_METRICS,
    COST_METRICS,
    DUPLICATE_RULE,
    SUMMARY_METRICS,
    Capacity,
    ClassIL,
    Duplicate,
    Grid,
    Missing,
    Monitoring,
    ScenarioReport,
    Sensitivity,
    Stat,
)
from .tables.model import REFERENCES, TASK_INFERENCE_METRICS, TaskInference

SINGLE_SEED = "†"
SINGLE_SEED_NOTE = f"{SINGLE_SEED} a single seed: no confidence interval (a CI needs >= 2 seeds)."
#: what a table shows instead of numbers for a strategy whose every run diverged
DIVERGED = "diverged"


# --- number formatting ----------------------------------------------------------------------


def _csv_number(x: float) -> str:
    """Full-precision CSV number; ``nan`` when undefined."""
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


def pm(mean: float, half: float, digits: int = 3, scale: float = 1.0, latex: bool = False) -> str:
    """``mean ± half`` rounded; ``mean†`` when the half-width is undefined; ``n/a`` for NaN."""
    if math.isnan(mean):
        return "n/a"
    m = f"{mean * scale:.{digits}f}"
    if math.isnan(half):
        return f"${m}^{{\\dagger}}$" if latex else m + SINGLE_SEED
    h = f"{half * scale:.{digits}f}"
    return f"${m} \\pm {h}$" if latex else f"{m} ± {h}"


def _csv(header: list[str], rows: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(
            [
                _csv_number(r[k]) if isinstance(r[k], float) else ("" if r[k] is None else r[k])
                for k in header
            ]
        )
    return buf.getvalue()


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    """A pipe table; a ``|`` inside a cell (e.g. Δ|ρ|) is escaped as ``\\|``."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(header), "|" + "|".join("---" for _ in header) + "|"]
    lines += [line(r) for r in rows]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("#", r"\#"),
        ("$", r"\$"),
        ("{", r"\{"),
        ("}", r"\}"),
    ):
        s = s.replace(a, b)
    return s


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f} %"


def _seeds_cell(rep: ScenarioReport | ClassIL, s: str, n: int) -> str:
    """Seeds behind a row, with the diverged runs left out of it: ``2 (+1 diverged)``."""
    k = len(rep.diverged.get(s, []))
    return f"{n} (+{k} {DIVERGED})" if k else str(n)


def diverged_note(rep: ScenarioReport | ClassIL) -> str:
    """One line naming the diverged runs, or "" when none diverged."""
    if not rep.diverged:
        return ""
    runs = "; ".join(f"{s} seed(s) {','.join(map(str, sds))}" for s, sds in rep.diverged.items())
    return (f"Diverged (non-finite loss; no numbers, left out of every mean): {runs}. A row "
            f"reading \"{DIVERGED}\" has no run that did not diverge.")


def reduction_text(r: dict[str, Any], latex: bool = False) -> str:
    """HAT's reduction of forgetting in one cell: a percentage, or (best baseline's |ρ| below
    :data:`reports.metrics.REDUCTION_MIN_BASELINE`) the difference Δ|ρ|."""
    if r.get("measure") == "difference":
        d = r["reduction_abs"]
        val = "n/a" if math.isnan(d) else f"{d:+.3f}"
        return f"$\\Delta|\\rho|$ {val}" if latex else f"Δ|ρ| {val}"
    pct = r["reduction_pct"]
    if latex:
        return "n/a" if math.isnan(pct) else f"{pct:.1f}\\,\\%"
    return _pct(pct)


REDUCTION_RULE = (
    "HAT reduction = 100·(1 − |ρ_hat| / |ρ_best baseline|), best baseline = the strategy other "
    "than hat and the references (joint, single) with the smallest |ρ|; when that baseline's |ρ| < "
    f"{metrics.REDUCTION_MIN_BASELINE:g} (it forgets less than "
    f"{metrics.REDUCTION_MIN_BASELINE:.0%} of what joint training gains over chance) a "
    "percentage of it is not meaningful, and the row gives Δ|ρ| = |ρ_best baseline| − "
    "|ρ_hat| instead (positive: HAT forgets less)."
)


# --- Table 1: forgetting ratio --------------------------------------------------------------

RHO_HEADER = ["strategy", "t", "mean", "ci_half", "ci_low", "ci_high", "n_seeds", "n_diverged"]
REDUCTION_HEADER = ["t", "best_baseline", "rho_baseline", "rho_hat", "reduction_pct",
                    "reduction_abs", "measure"]


def _has_single(rep: ScenarioReport) -> bool:
    return any(
        math.isnan(st[t - 1].half) and st[t - 1].n > 0
        for st in rep.rho.values()
        for t in rep.table_ts
    )


def rho_table_md(rep: ScenarioReport) -> str:
    """Table 1 as Markdown: ρ^{≤t} (mean ± CI over seeds) per strategy, best in bold, and a
    row with HAT's reduction of forgetting against the best baseline."""
    header = ["strategy"] + [f"ρ≤{t}" for t in rep.table_ts] + ["seeds"]
    rows = []
    for s, stats in rep.rho.items():
        cells = []
        for t in rep.table_ts:
            txt = pm(stats[t - 1].mean, stats[t - 1].half)
            cells.append(f"**{txt}**" if s in rep.best.get(t, []) else txt)
        rows.append([s] + cells + [_seeds_cell(rep, s, max(st.n for st in stats))])
    for s in rep.only_diverged(rho=True):
        rows.append([s] + [DIVERGED] * len(rep.table_ts) + [_seeds_cell(rep, s, 0)])
    if rep.reduction:
        cells = [
            f"{reduction_text(r)} (vs {r['best_baseline'] or 'n/a'})" for r in rep.reduction
        ]
        rows.append(["HAT reduction of forgetting"] + cells + [""])
    conf = f"{rep.confidence:.0%}"
    text = (
        f"# {rep.scenario}: forgetting ratio ρ≤t (mean ± {conf} CI over seeds)\n\n"
        + _md_table(header, rows)
        + "\nρ = 0: as good as joint training; ρ = -1: as bad as a random stratified classifier."
        " Bold: closest to 0. " + REDUCTION_RULE + "\n"
    )
    if _has_single(rep):
        text += "\n" + SINGLE_SEED_NOTE + "\n"
    if rep.diverged:
        text += "\n" + diverged_note(rep) + "\n"
    return text


def rho_table_tex(rep: ScenarioReport) -> str:
    """Table 1 as a LaTeX ``tabular`` (needs ``booktabs``), best in ``\\textbf``."""
    cols = "l" + "c" * len(rep.table_ts)
    head = " & ".join(["Strategy"] + [f"$\\rho^{{\\leq {t}}}$" for t in rep.table_ts])
    lines = [
        f"% {rep.scenario}: forgetting ratio, mean $\\pm$ {rep.confidence:.0%} CI over seeds;"
        " needs \\usepackage{booktabs}",
        f"\\begin{{tabular}}{{{cols}}}",
        "\\toprule",
        head + " \\\\",
        "\\midrule",
    ]
    for s, stats in rep.rho.items():
        cells = []
        for t in rep.table_ts:
            txt = pm(stats[t - 1].mean, stats[t - 1].half, latex=True)
            cells.append(f"\\textbf{{\\boldmath{txt}}}" if s in rep.best.get(t, []) else txt)
        lines.append(" & ".join([_tex_escape(s)] + cells) + " \\\\")
    for s in rep.only_diverged(rho=True):
        lines.append(" & ".join([_tex_escape(s)] + [DIVERGED] * len(rep.table_ts)) + " \\\\")
    if rep.reduction:
        lines.append("\\midrule")
        cells = []
        for r in rep.reduction:
            val = reduction_text(r, latex=True)
            cells.append(f"{val} ({_tex_escape(r['best_baseline'] or 'n/a')})")
        lines.append(" & ".join(["HAT reduction of forgetting"] + cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if _has_single(rep):
        lines.append("% " + SINGLE_SEED_NOTE.replace(SINGLE_SEED, "\\dag"))
    if any(r.get("measure") == "difference" for r in rep.reduction):
        lines.append("% " + REDUCTION_RULE)
    if rep.diverged:
        lines.append("% " + diverged_note(rep))
    return "\n".join(lines) + "\n"


def rho_table_csv(rep: ScenarioReport, all_t: bool = False) -> str:
    """Table 1 (or, with ``all_t``, every t) as CSV rows
    ``strategy,t,mean,ci_half,ci_low,ci_high,n_seeds``."""
    return _csv(RHO_HEADER, rep.rho_rows(all_t))


def reduction_csv(rep: ScenarioReport) -> str:
    """HAT's reduction of forgetting per table t: ``t,best_baseline,rho_baseline,rho_hat,
    reduction_pct,reduction_abs,measure``: ``reduction_pct`` is nan where the best baseline's
    |ρ| is below :data:`reports.metrics.REDUCTION_MIN_BASELINE` (``measure`` "difference":
    read ``reduction_abs`` = |ρ_baseline| − |ρ_hat|), else ``measure`` is "percent"."""
    return _csv(REDUCTION_HEADER, rep.reduction)


# --- summary: accuracy, BWT, forgetting, transfer, cost ------------------------------------------

SUMMARY_HEADER = ["strategy", "metric", "mean", "ci_half", "ci_low", "ci_high", "n_seeds",
                  "n_diverged"]
#: column label of each summary metric
SUMMARY_LABELS = {
    "final_acc": "final accuracy (%)",
    "bwt": "BWT (pp)",
    "forgetting": "forgetting (pp)",
    "fwt": "FWT (pp)",
    "intransigence": "intransigence (pp)",
    "agnostic_acc": "task-agnostic accuracy (%)",
    "seconds_per_task": "time per task (s)",
    "peak_memory_mb": "peak memory (MB)",
    "state_mb": "state held (MB)",
    "memory_samples": "rehearsal samples",
}
#: (scale, digits) of each summary metric's Markdown cells
SUMMARY_FORMAT = {m: (100.0, 1) for m in SUMMARY_METRICS} | {
    "seconds_per_task": (1.0, 2), "peak_memory_mb": (1.0, 0), "state_mb": (1.0, 1),
    "memory_samples": (1.0, 0)}
SUMMARY_TEXT = (
    "final accuracy: mean of the last row of the accuracy matrix; BWT: mean over earlier tasks"
    " of final minus just-learned accuracy; forgetting: mean over earlier tasks of the best"
    " accuracy before the last task minus the final accuracy; FWT (Lopez-Paz & Ranzato 2017):"
    " mean over tasks 2..T of the accuracy on task t right after learning it minus that of a"
    " model trained on task t alone from the same initialisation (the `single` record of the"
    " seed; positive: earlier tasks help); intransigence (Chaudhry et al. 2018): mean over"
    " tasks 1..T of joint training's accuracy on task t after tasks 1..t minus the accuracy on"
    " task t right after learning it (positive: learns new tasks less well than joint"
    " training); task-agnostic accuracy: the final accuracy when one prediction ranges over"
    " every class seen and no task label is given (n/a: the strategy has no task-agnostic"
    " prediction, e.g. hat, packnet); time per task: mean training seconds per task; peak"
    " memory: the largest over tasks of the peak memory of a task's training (CUDA: the"
    " allocator's peak; CPU: the growth of the process's resident set size, sampled per epoch,"
    " a rough figure); state held: the largest over tasks of the tensors the strategy keeps"
    " between tasks (model, optimizer state, every plugin's tensors such as Fisher matrices,"
    " teachers, rehearsal memories; exact and machine-independent);{samples} –: no data (the"
    " records"
    " predate the field, or the reference record of the seed is missing). (n=k): only k seeds"
    " have a value. pp = percentage points."
)
SAMPLES_TEXT = (" rehearsal samples: the most samples the rehearsal memory held (n/a: no rehearsal"
                " memory).")


def _summary_metrics(rep: ScenarioReport) -> list[str]:
    """The summary's columns: every metric that some strategy has a value of (rehearsal samples
    only when a strategy has some; the others left out say so: :func:`left_out_lines`)."""
    return [m for m in SUMMARY_METRICS
            if (m != "memory_samples" or rep.has_memory_samples())
            and m not in rep.summary_left_out]


def left_out_lines(rep: ScenarioReport) -> list[str]:
    """One line per summary column left out because no strategy has a value, saying what
    fills it (e.g. the reference run FWT needs and the command that trains it)."""
    return [f"{SUMMARY_LABELS[m]} left out (no strategy has a value): {why}"
            for m, why in rep.summary_left_out.items()]


def summary_md(rep: ScenarioReport) -> str:
    """Per strategy (mean ± CI over seeds): final average accuracy, BWT, forgetting, FWT and
    intransigence in percent, the task-agnostic final accuracy, training seconds per task,
    peak memory and (when any) rehearsal samples; ``single`` (FWT's reference) has no row."""
    cols = _summary_metrics(rep)
    header = ["strategy", "seeds"] + [SUMMARY_LABELS[m] for m in cols]
    rows = []
    single = False
    for s, by_metric in rep.summary.items():
        cells = []
        for m in cols:
            st = by_metric[m]
            if st.n == 0:
                cells.append(rep.summary_cell_blank(s, m))
                continue
            single |= st.n == 1
            scale, digits = SUMMARY_FORMAT[m]
            cell = pm(st.mean, st.half, digits=digits, scale=scale)
            cells.append(cell + (f" (n={st.n})" if st.n < len(rep.seeds[s]) else ""))
        rows.append([s, _seeds_cell(rep, s, len(rep.seeds[s]))] + cells)
    for s in rep.only_diverged(summary=True):
        rows.append([s, _seeds_cell(rep, s, 0)] + [DIVERGED] * len(cols))
    text = (
        f"# {rep.scenario}: final accuracy, backward and forward transfer, forgetting, "
        f"intransigence, cost (mean ± {rep.confidence:.0%} CI over seeds)\n\n"
        + _md_table(header, rows) + "\n"
        + SUMMARY_TEXT.format(samples=SAMPLES_TEXT if "memory_samples" in cols else "") + "\n"
    )
    notes = left_out_lines(rep) + rep.summary_notes
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if single:
        text += "\n" + SINGLE_SEED_NOTE + "\n"
    if rep.diverged:
        text += "\n" + diverged_note(rep) + "\n"
    return text


def summary_csv(rep: ScenarioReport) -> str:
    """``strategy,metric,mean,ci_half,ci_low,ci_high,n_seeds,n_diverged`` for every metric of
    :data:`reports.tables.SUMMARY_METRICS` (accuracies and transfers as fractions, not
    percent; seconds; MB; samples); nan with ``n_seeds`` 0 where a strategy has no value (see
    ``summary.md`` for n/a vs no data); a strategy whose every run diverged has nan rows."""
    return _csv(SUMMARY_HEADER, rep.summary_rows())


COST_HEADER = ["strategy"] + [f"{m}{suffix}" for m in ("final_acc", *COST_METRICS)
                              for suffix in ("", "_ci_half", "_n_seeds")]


def cost_csv(rep: ScenarioReport) -> str:
    """The cost figure's data: per method, final accuracy (fraction), training seconds per
    task, peak memory and state held (MB), each with its CI half-width and seeds (nan: no
    value)."""
    return _csv(COST_HEADER, rep.cost_rows())


# --- class-incremental protocol ------------------------------------------------------------

CLASS_IL_HEADER = SUMMARY_HEADER
CLASS_IL_CURVE_HEADER = ["strategy", "t", "mean", "ci_half", "ci_low", "ci_high", "n_seeds"]
#: column label of each Class-IL metric
CLASS_IL_LABELS = {
    "last": "last Class-IL accuracy (%)",
    "average_incremental": "average incremental accuracy (%)",
    "forgetting": "Class-IL forgetting (pp)",
    "rho": "ρ≤T vs joint",
    "task_il_last": "Task-IL final accuracy (%)",
    "task_prediction": "task prediction (%)",
}
#: (scale, digits) of each Class-IL metric's Markdown cells
CLASS_IL_FORMAT = {m: (100.0, 1) for m in CLASS_IL_METRICS} | {"rho": (1.0, 3)}
CLASS_IL_TEXT = (
    "Class-incremental protocol: one head over every class seen, no task label at test. "
    "Class-IL accuracy after task t: on each task 1..t, the prediction ranges over every class "
    "of tasks 1..t (the record's `agnostic_accuracy`). Last Class-IL accuracy: after the last "
    "task; average incremental accuracy (Rebuffi et al. 2017): the Class-IL accuracy after each "
    "task, averaged over the tasks; Class-IL forgetting (Chaudhry et al. 2018): mean over "
    "earlier tasks of the best Class-IL accuracy before the last task minus the final one; ρ≤T "
    "vs joint: the forgetting ratio (Serrà et al. 2018) of the Class-IL accuracies after the "
    "last task against the `joint` record of the seed trained in the class protocol (joint "
    "training on the tasks seen, one head), chance being a stratified random classifier over "
    "every class seen (0: as good as joint, -1: as bad as chance); Task-IL final accuracy: the "
    "same runs with the task label given (the prediction restricted to the task's classes: "
    "their logits, iCaRL's nearest mean; the record's `accuracy`). Every accuracy over tasks "
    "is a mean of per-task accuracies (as "
    "mammoth reports), not a per-sample accuracy over all test samples seen (PyCIL's); the two "
    "agree for tasks of equal test size. –: no data (e.g. no joint record of the seed). "
    "pp = percentage points."
)
#: the Class-IL table's words on its task-prediction column (shown when a strategy has one)
TASK_PREDICTION_TEXT = (
    "Task prediction (strategies that predict by task inference: hat, packnet, pnn, pathnet): "
    "after the last task, the share of each task's test samples whose task the record's score "
    "infers right among every task learned, averaged over tasks (the record's "
    "`task_prediction_accuracy`; – for the other strategies); every score is compared in "
    "`task_inference.md`."
)


def _class_il_metrics(cil: ClassIL) -> list[str]:
    """The Class-IL table's columns: every metric, task prediction only when a strategy has
    one (task inference)."""
    return [m for m in CLASS_IL_METRICS if m != "task_prediction" or cil.has_task_prediction()]


def class_il_md(rep: ScenarioReport) -> str:
    """The class-incremental protocol's table: per strategy, joint included (mean ± CI over
    seeds), each of :data:`reports.tables.CLASS_IL_METRICS`."""
    cil = rep.class_il
    cols = _class_il_metrics(cil)
    header = ["strategy", "seeds"] + [CLASS_IL_LABELS[m] for m in cols]
    rows = []
    single = False
    for s, by_metric in cil.stats.items():
        cells = []
        for m in cols:
            st = by_metric[m]
            if st.n == 0:
                cells.append(NO_DATA)  # a missing joint record or field
                continue
            single |= st.n == 1
            scale, digits = CLASS_IL_FORMAT[m]
            cell = pm(st.mean, st.half, digits=digits, scale=scale)
            cells.append(cell + (f" (n={st.n})" if st.n < len(cil.seeds[s]) else ""))
        label = f"{s} (reference)" if s == "joint" else s
        rows.append([label, _seeds_cell(cil, s, len(cil.seeds[s]))] + cells)
    for s in cil.only_diverged():
        rows.append([s, _seeds_cell(cil, s, 0)] + [DIVERGED] * len(cols))
    text = (
        f"# {rep.scenario}: class-incremental protocol (Class-IL): accuracy, forgetting and ρ "
        f"(mean ± {rep.confidence:.0%} CI over seeds)\n\n"
        + _md_table(header, rows) + "\n" + CLASS_IL_TEXT
        + (" " + TASK_PREDICTION_TEXT if "task_prediction" in cols else "") + "\n"
    )
    if cil.notes:
        text += "\n" + "\n".join(f"- {n}" for n in cil.notes) + "\n"
    if single:
        text += "\n" + SINGLE_SEED_NOTE + "\n"
    if cil.diverged:
        text += "\n" + diverged_note(cil) + "\n"
    return text


def class_il_csv(rep: ScenarioReport) -> str:
    """``strategy,metric,mean,ci_half,ci_low,ci_high,n_seeds,n_diverged`` for every metric of
    :data:`reports.tables.CLASS_IL_METRICS` (accuracies and forgetting as fractions; nan with
    ``n_seeds`` 0 where a strategy has no value)."""
    return _csv(CLASS_IL_HEADER, rep.class_il.rows())


def class_il_curve_csv(rep: ScenarioReport) -> str:
    """The Class-IL curve: ``strategy,t,mean,ci_half,ci_low,ci_high,n_seeds``, the Class-IL
    accuracy (fraction) after training task t (1-based)."""
    return _csv(CLASS_IL_CURVE_HEADER, rep.class_il.curve_rows())


TASK_INFERENCE_HEADER = ["strategy", "score", "metric", "mean", "ci_half", "ci_low", "ci_high",
                         "n_seeds", "chosen", "n_chosen"]
#: column label of each task-inference metric
TASK_INFERENCE_LABELS = {
    "last": "last Class-IL accuracy (%)",
    "task_prediction": "task prediction (%)",
    "auroc": "mean AUROC",
    "valid_criterion": "validation criterion (%)",
}
#: (scale, digits) of each task-inference metric's Markdown cells
TASK_INFERENCE_FORMAT = {"last": (100.0, 1), "task_prediction": (100.0, 1),
                         "auroc": (1.0, 3), "valid_criterion": (100.0, 1)}
#: the mark of the score the records chose
CHOSEN = "✓"
TASK_INFERENCE_TEXT = (
    "Task inference (hat, packnet, pnn, pathnet; Kim et al. 2022): every learned task's path "
    "and head run on the input, each task is scored from its own logits, the best-scoring "
    "task is taken, then its class. Scores: max_softmax (the largest softmax probability), "
    "max_logit (the largest logit), energy (the logsumexp of the logits), neg_entropy (minus "
    "the entropy of the softmax). Every score reads the same runs (one training per seed; "
    "the record's `task_inference`). Last Class-IL accuracy: after the last task, on each "
    "task, the prediction over every class seen under that score, averaged over tasks; task "
    "prediction: after the last task, the share of each task's test samples whose task the "
    "score infers right, averaged over tasks; mean AUROC: after the last task, per task, how "
    "well its score separates its own test samples from the other tasks' (0.5: not at all, "
    "1: perfectly), averaged over tasks (tasks without a value left out); validation "
    "criterion: the last Class-IL accuracy on the validation splits (what `tune` selects the "
    "score on). chosen: " + CHOSEN + " marks the score of the records "
    "(`task_inference.score`, `params.<strategy>.task_score`), whose numbers are those of "
    "`class_il.md`; seed(s) k: only those seeds' records chose it. –: no data. "
)


def _chosen_cell(ti: TaskInference, s: str, score: str) -> str:
    if ti.chosen_by_all(s, score):
        return CHOSEN
    picked = ti.chosen[s].get(score, [])
    return f"{CHOSEN} seed(s) {','.join(map(str, picked))}" if picked else ""


def task_inference_md(rep: ScenarioReport) -> str:
    """The task-inference table: per strategy and task score (mean ± CI over seeds), each of
    :data:`reports.tables.model.TASK_INFERENCE_METRICS`, the records' score marked."""
    ti = rep.class_il.task_inference
    header = (["strategy", "score", "seeds"]
              + [TASK_INFERENCE_LABELS[m] for m in TASK_INFERENCE_METRICS] + ["chosen"])
    rows = []
    single = False
    for s in ti.strategies:
        for score in ti.scores[s]:
            cells = []
            for m in TASK_INFERENCE_METRICS:
                st = ti.stats[s][score][m]
                if st.n == 0:
                    cells.append(NO_DATA)
                    continue
                single |= st.n == 1
                scale, digits = TASK_INFERENCE_FORMAT[m]
                cell = pm(st.mean, st.half, digits=digits, scale=scale)
                cells.append(cell + (f" (n={st.n})" if st.n < len(ti.seeds[s]) else ""))
            rows.append([s, score, str(len(ti.seeds[s]))] + cells
                        + [_chosen_cell(ti, s, score)])
    text = (
        f"# {rep.scenario}: class-incremental protocol: task inference by each task score "
        f"(mean ± {rep.confidence:.0%} CI over seeds)\n\n"
        + _md_table(header, rows) + "\n" + TASK_INFERENCE_TEXT.rstrip() + "\n"
    )
    if ti.notes:
        text += "\n" + "\n".join(f"- {n}" for n in ti.notes) + "\n"
    if single:
        text += "\n" + SINGLE_SEED_NOTE + "\n"
    return text


def task_inference_csv(rep: ScenarioReport) -> str:
    """``strategy,score,metric,mean,ci_half,ci_low,ci_high,n_seeds,chosen,n_chosen`` for every
    score of every task-inference strategy and each metric of
    :data:`reports.tables.model.TASK_INFERENCE_METRICS` (accuracies as fractions, AUROC in
    [0, 1]; nan with ``n_seeds`` 0 where no value); ``chosen`` 1 when every seed's record
    chose the score, ``n_chosen`` the seeds that did."""
    return _csv(TASK_INFERENCE_HEADER, rep.class_il.task_inference.rows())


CLASS_IL_LOSS_HEADER = ["strategy", "quantity", "mean", "ci_half", "ci_low", "ci_high",
                        "n_seeds"]


def class_il_loss_csv(rep: ScenarioReport) -> str:
    """The Class-IL loss figure's data: ``strategy,quantity,mean,ci_half,ci_low,ci_high,
    n_seeds`` for each of :data:`reports.tables.model.CLASS_IL_LOSS` (``task_il_last``,
    ``task_prediction``, ``last``: fractions after the last task) per task-inference
    strategy."""
    return _csv(CLASS_IL_LOSS_HEADER, rep.class_il.loss_rows())


# --- robustness grid ---------------------------------------------------------------------------

GRID_HEADER = ["smax", "c", "metric", "mean", "ci_half", "ci_low", "ci_high", "n_seeds"]


def grid_csv(grid: Grid) -> str:
    rows = [{"smax": s, "c": c, "metric": grid.metric, **st.columns()}
            for (s, c), st in sorted(grid.cells.items())]
    return _csv(GRID_HEADER, rows)


def grid_md(grid: Grid, scenario: str) -> str:
    label = "ρ≤T" if grid.metric == "rho" else "final accuracy"
    rows = []
    for s in grid.smax:
        cells = []
        for c in grid.c:
            st = grid.cells.get((s, c))
            cells.append("" if st is None else pm(st.mean, st.half))
        rows.append([f"{s:g}"] + cells)
    return f"# {scenario}: HAT robustness, {label} over smax (rows) × c (columns)\n\n" + _md_table(
        ["smax \\ c"] + [f"{c:g}" for c in grid.c], rows
    )


# --- HAT capacity / compression -----------------------------------------------------------------


def compression_rows(cap: Capacity) -> list[dict[str, Any]]:
    """Per task: fraction of units kept per layer, their mean over layers, weights kept."""
    rows = []
    for j, task in enumerate(cap.tasks):
        row: dict[str, Any] = {"task": task}
        for i, layer in enumerate(cap.layers):
            row[f"units_{layer}"] = float(cap.used[i, j])
        row["units_mean"] = float(cap.used[:, j].mean())
        row["weights_kept"] = (
            float(cap.weights_kept[j]) if cap.weights_kept is not None else math.nan
        )
        rows.append(row)
    return rows


def compression_csv(cap: Capacity) -> str:
    header = ["task"] + [f"units_{la}" for la in cap.layers] + ["units_mean", "weights_kept"]
    return _csv(header, compression_rows(cap))


def compression_md(cap: Capacity, scenario: str) -> str:
    header = (
        ["task"]
        + [f"units {la} (%)" for la in cap.layers]
        + ["units, mean (%)", "weights kept (%)"]
    )
    rows = []
    for r in compression_rows(cap):
        vals = [r[f"units_{la}"] for la in cap.layers] + [r["units_mean"], r["weights_kept"]]
        rows.append([r["task"]] + ["n/a" if math.isnan(v) else f"{100 * v:.1f}" for v in vals])
    return (
        f"# {scenario}: HAT compression (fraction of the network each task keeps, mean over "
        f"{cap.n} seed(s))\n\n" + _md_table(header, rows)
    )


# --- hyperparameters ----------------------------------------------------------------------------


def _hyper_keys(rep: ScenarioReport) -> list[str]:
    """Every hyperparameter column: strategies' own keys first, then ``train.*``."""
    keys = {k for row in rep.hyperparameters for k in row.params}
    return sorted(keys, key=lambda k: (k.startswith("train."), k))


def hyperparameters_md(rep: ScenarioReport) -> str:
    """One row per strategy: the hyperparameters it ran with and whether they were selected on
    validation data."""
    rows = []
    for row in rep.hyperparameters:
        edges = {e.key for e in row.edges}
        rows.append([row.strategy, ",".join(map(str, row.seeds)),
                     ", ".join(f"{k}={v}" + (f" {EDGE_MARK}" if k in edges else "")
                               for k, v in row.params.items()), row.source])
    text = (
        f"# {rep.scenario}: hyperparameters per strategy\n\n"
        + _md_table(["strategy", "seeds", "hyperparameters", "source"], rows)
        + "\nOwn section of each strategy's params, train.clipgrad, and the train settings that"
        " differ across strategies. Selected on validation: chosen by `python -m benchmark tune`"
        " (criterion: " + metrics.VALIDATION_CRITERION + ", mean over the selection's seeds,"
        " training at most the epochs given).\n"
    )
    lines = edge_lines(rep)
    if lines:
        text += "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    return text


#: the hyperparameter table's mark of a selected value at an end of its searched range
EDGE_MARK = "(edge)"


def edge_lines(rep: ScenarioReport) -> list[str]:
    """One line per strategy whose selected hyperparameters lie at an end of their searched
    range (:func:`reports.tables.model.on_edge`), naming the values, the ranges and how to
    search further."""
    return [
        f"{row.strategy} was selected at the edge of its searched range: "
        + "; ".join(e.text() for e in row.edges) + f" (marked {EDGE_MARK} in the hyperparameter "
        "table). The optimum may lie outside the range: widen it with `python -m benchmark "
        f"tune --scenario {rep.scenario} --strategies {row.strategy} "
        f"--grid {row.edges[0].key}=<values>`."
        for row in rep.hyperparameters if row.edges
    ]


def hyperparameters_csv(rep: ScenarioReport) -> str:
    """``strategy,seeds,selected,source,preset,criterion_value,edge`` then one column per
    hyperparameter (empty where a strategy has no such key); ``edge``: the keys whose selected
    value is an end of its searched range, space-separated."""
    keys = _hyper_keys(rep)
    header = ["strategy", "seeds", "selected", "source", "preset", "criterion_value", "edge",
              *keys]
    rows = [
        {"strategy": row.strategy, "seeds": " ".join(map(str, row.seeds)),
         "selected": "true" if row.selected else "false", "source": row.source,
         "preset": row.preset, "criterion_value": row.criterion_value,
         "edge": " ".join(e.key for e in row.edges),
         **{k: row.params.get(k) for k in keys}}
        for row in rep.hyperparameters
    ]
    return _csv(header, rows)


SENSITIVITY_HEADER = ["strategy", "params", "value", "chosen", "source", "n_seeds"]


def sensitivity_rows(sens: list[Sensitivity]) -> list[dict[str, Any]]:
    """One row per point of each strategy's search space: ``params`` as a grid tag spells it,
    ``value`` its validation criterion, ``chosen`` 1 at the selected (or best) point."""
    rows = []
    for s in sens:
        for point in s.points():
            key = s.point_key(point)
            rows.append({"strategy": s.strategy, "params": s.label(point),
                         "value": s.values[key], "chosen": int(key == s.chosen),
                         "source": f"{s.source}: {s.where}" if s.source == "selection"
                         else s.where, "n_seeds": s.n_seeds.get(key)})
    return rows


def sensitivity_csv(sens: list[Sensitivity]) -> str:
    return _csv(SENSITIVITY_HEADER, sensitivity_rows(sens))


# --- index ---------------------------------------------------------------------------------------


def index_md(
    sections: list[tuple[str, list[tuple[str, str]]]],
    missing: list[tuple[str, Missing]],
    notes: list[str],
    duplicates: Iterable[tuple[str, Duplicate]] = (),
    headlines: Iterable[tuple[str, str]] = (),
) -> str:
    """``sections``: (scenario, [(relative path, caption)]); ``missing``: (scenario, what is
    missing with the command that produces it); ``duplicates``: (scenario, records of one run
    that disagree), listed first with the rule that resolved them; ``headlines``: (scenario,
    its headline in Markdown, :func:`headline_md`), at the top."""
    lines = ["# Report", "", "Generated by `python -m reports` from run records; the page "
             "`index.html` shows the same with every figure.", ""]
    for scenario, text in headlines:
        lines += [f"## {scenario}: headline", "", text.rstrip(), ""]
    duplicates = list(duplicates)
    if duplicates:
        lines += ["## Duplicate records", "", f"Rule: {DUPLICATE_RULE}.", ""]
        lines += [f"- **{sc}**: {d.line()}" for sc, d in duplicates]
        lines.append("")
    if missing:
        lines += ["## Missing", ""]
        for sc, m in missing:
            lines.append(f"- **{sc}**: {m.what}" + (f"; run `{m.command}`" if m.command else ""))
        lines.append("")
    for scenario, items in sections:
        lines += [f"## {scenario}", ""]
        lines += [f"- [{Path(p).name}]({p}): {cap}" for p, cap in items]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def compression_alone_rows(cap: Capacity) -> list[dict]:
    """Per task trained alone: units kept per layer and overall, weights kept per layer and
    overall (``layer_weights_kept`` is always set for these)."""
    rows = []
    for j, task in enumerate(cap.tasks):
        row: dict = {"task": task}
        for i, layer in enumerate(cap.layers):
            row[f"units_{layer}"] = float(cap.used[i, j])
        for i, layer in enumerate(cap.layers):
            row[f"weights_{layer}"] = float(cap.layer_weights_kept[i, j])
        for key in ("units_kept", "weights_kept"):
            values = getattr(cap, key)
            row[key] = float(values[j]) if values is not None else math.nan
        rows.append(row)
    return rows


def _compression_alone_header(cap: Capacity) -> list[str]:
    return (["task"] + [f"units_{la}" for la in cap.layers]
            + [f"weights_{la}" for la in cap.layers] + ["units_kept", "weights_kept"])


def compression_alone_csv(cap: Capacity) -> str:
    return _csv(_compression_alone_header(cap), compression_alone_rows(cap))


def compression_alone_md(cap: Capacity, scenario: str) -> str:
    header = _compression_alone_header(cap)
    labels = (["task"] + [f"units {la} (%)" for la in cap.layers]
              + [f"weights {la} (%)" for la in cap.layers]
              + ["units, all (%)", "weights, all (%)"])
    rows = []
    for r in compression_alone_rows(cap):
        rows.append([r["task"]] + [
            "n/a" if math.isnan(r[k]) else f"{100 * r[k]:.1f}" for k in header[1:]
        ])
    return (
        f"# {scenario}: HAT compression, each task trained alone (mean over {cap.n} seed(s))"
        "\n\n" + _md_table(labels, rows)
        + "\nunits: fraction of the layer's (or all gated) units the binary mask keeps; "
        "weights: fraction of the layer's (or all gated) weights joining two kept units.\n"
    )


def monitoring_csv(mon: Monitoring) -> str:
    rows = []
    for t, (used, reuse, seeds) in enumerate(zip(mon.used, mon.reuse, mon.seeds, strict=True)):
        for e in range(len(used)):
            for li, layer in enumerate(mon.layers):
                rows.append({"task": t + 1, "task_name": mon.tasks[t], "epoch": e + 1,
                             "layer": layer, "used": float(used[e, li]),
                             "reuse": float(reuse[e, li]), "seeds": int(seeds[e])})
    return _csv(["task", "task_name", "epoch", "layer", "used", "reuse", "seeds"], rows)


# --- the headline: Table 1 with final accuracy and forgetting, Class-IL, and what they say -----

#: what a headline cell of a reference (joint) shows for a number only methods have
REFERENCE_CELL = "reference"


@dataclass
class HeadTable:
    """One compact headline table: cells as text, the best of each column flagged."""

    title: str
    label: str  # the protocol, for the terminal's shorter title
    header: list[str]
    rows: list[list[str]]
    best: list[list[bool]]  # per row, per cell after the strategy's


#: how a column ranks its means, best first: the largest, the smallest, the closest to 0
_RANK_KEY = {"max": lambda v: -v, "min": lambda v: v, "abs": abs}


def _best_of(stats: dict[str, Stat], pick: str) -> set[str]:
    """The strategies whose mean is the largest (``pick`` "max"), the smallest ("min") or the
    closest to 0 ("abs"); ties (within 1e-12) all count."""
    ranked = _ranked(stats, pick)
    if not ranked:
        return set()
    key = _RANK_KEY[pick]
    top = key(stats[ranked[0]].mean)
    return {s for s in ranked if key(stats[s].mean) <= top + 1e-12}


def _cell(st: Stat | None, scale: float, digits: int) -> str:
    return NO_DATA if st is None or st.n == 0 else pm(st.mean, st.half, digits, scale)


def headline_tables(rep: ScenarioReport) -> list[HeadTable]:
    """The scenario's headline: per strategy Table 1's ρ≤t, the final accuracy and the
    forgetting (task-incremental records), then (class records) the last Class-IL accuracy,
    Class-IL forgetting and ρ≤T against joint; the best method of each column flagged
    (references never)."""
    tables = []
    strategies = [s for s in rep.summary if s != "single"]
    if strategies:
        header = (["strategy"] + [f"ρ≤{t}" for t in rep.table_ts]
                  + [SUMMARY_LABELS["final_acc"], SUMMARY_LABELS["forgetting"]])
        methods = {s: rep.summary[s] for s in strategies if s not in REFERENCES}
        best_acc = _best_of({s: m["final_acc"] for s, m in methods.items()}, "max")
        best_fgt = _best_of({s: m["forgetting"] for s, m in methods.items()}, "min")
        rows, best = [], []
        for s in strategies:
            rho = [(_cell(rep.rho[s][t - 1], 1.0, 3) if s in rep.rho else
                    REFERENCE_CELL if s in REFERENCES else NO_DATA) for t in rep.table_ts]
            rows.append([s, *rho, _cell(rep.summary[s]["final_acc"], 100.0, 1),
                         _cell(rep.summary[s]["forgetting"], 100.0, 1)])
            best.append([s in rep.best.get(t, []) for t in rep.table_ts]
                        + [s in best_acc, s in best_fgt])
        for s in rep.only_diverged(summary=True):
            rows.append([s] + [DIVERGED] * (len(header) - 1))
            best.append([False] * (len(header) - 1))
        tables.append(HeadTable(
            f"Task-IL: Table 1 (ρ≤t) and the summary's final accuracy and forgetting, mean ± "
            f"{rep.confidence:.0%} CI over seeds", f"task-incremental, T={rep.n_tasks}",
            header, rows, best))
    cil = rep.class_il
    if cil is not None and cil.stats:
        cols = ("last", "forgetting", "rho")
        header = ["strategy"] + [CLASS_IL_LABELS[m] for m in cols]
        methods = {s: m for s, m in cil.stats.items() if s not in REFERENCES}
        picks = {m: _best_of({s: v[m] for s, v in methods.items()}, pick)
                 for m, pick in zip(cols, ("max", "min", "abs"), strict=True)}
        rows, best = [], []
        for s, by_metric in cil.stats.items():
            rows.append([s] + [REFERENCE_CELL if s in REFERENCES and m == "rho" else
                               _cell(by_metric[m], *CLASS_IL_FORMAT[m]) for m in cols])
            best.append([s in picks[m] for m in cols])
        tables.append(HeadTable(
            f"Class-IL (no task label at test), mean ± {rep.confidence:.0%} CI over seeds",
            f"class-incremental, T={cil.n_tasks}", header, rows, best))
    return tables


def headline_text(rep: ScenarioReport) -> str:
    """The headline tables fixed-width for a terminal, the best of each column marked ``*``."""
    lines = []
    for table in headline_tables(rep):
        cells = [[r[0]] + [c + ("*" if b else "") for c, b in zip(r[1:], flags, strict=True)]
                 for r, flags in zip(table.rows, table.best, strict=True)]
        widths = [max(len(row[i]) for row in [table.header, *cells])
                  for i in range(len(table.header))]
        lines.append(f"{rep.scenario}, {table.label} (mean ± {rep.confidence:.0%} CI over "
                     "seeds; * best):")
        for row in [table.header, *cells]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                         .rstrip())
    return "\n".join(lines)


def headline_md(rep: ScenarioReport) -> str:
    """The headline tables as Markdown (best in bold), then what they say
    (:func:`findings`)."""
    parts = []
    for table in headline_tables(rep):
        rows = [[r[0]] + [f"**{c}**" if b else c for c, b in zip(r[1:], flags, strict=True)]
                for r, flags in zip(table.rows, table.best, strict=True)]
        parts.append(f"{table.title}; best in bold.\n\n" + _md_table(table.header, rows))
    says = findings(rep)
    if says:
        parts.append("\n".join(f"- {line}" for line in says) + "\n")
    return "\n".join(parts)


def _interval(st: Stat, scale: float, digits: int, conf: str) -> str:
    value = f"{st.mean * scale:.{digits}f}"
    if math.isnan(st.half):
        return f"{value} (one seed: no CI)"
    return f"{value} ({conf} {st.low * scale:.{digits}f} to {st.high * scale:.{digits}f})"


def _ranked(stats: dict[str, Stat], pick: str) -> list[str]:
    """Strategies with a value, the best first (``pick`` as in :func:`_best_of`)."""
    key = _RANK_KEY[pick]
    return sorted((s for s, st in stats.items() if st.n and math.isfinite(st.mean)),
                  key=lambda s: key(stats[s].mean))


def _finding(what: str, stats: dict[str, Stat], pick: str, fmt: tuple[float, int, str],
             conf: str) -> str | None:
    """``<what>: best <s> <value> (<conf> ..); runner-up <s2> <value> (..): the intervals
    overlap, ...``; None without a value. ``fmt``: scale, digits and unit of the values."""
    ranked = _ranked(stats, pick)
    if not ranked:
        return None
    scale, digits, unit = fmt
    a = stats[ranked[0]]
    text = f"{what}: best {ranked[0]} {_interval(a, scale, digits, conf)}{unit}"
    if len(ranked) < 2:
        return text + "."
    b = stats[ranked[1]]
    text += f"; runner-up {ranked[1]} {_interval(b, scale, digits, conf)}{unit}"
    if math.isnan(a.half) or math.isnan(b.half):
        return text + ": no intervals to compare."
    if a.low <= b.high and b.low <= a.high:
        return (text + f": the intervals overlap, so {ranked[0]} and {ranked[1]} are not told "
                f"apart at {min(a.n, b.n)} seeds.")
    return text + f": the intervals do not overlap, {ranked[0]} is ahead."


def findings(rep: ScenarioReport) -> list[str]:
    """What the scenario's numbers say, one sentence each: the best method per headline
    metric with its CI and whether the runner-up's CI overlaps it, HAT's reduction of
    forgetting, and the selected hyperparameters at an end of their searched range."""
    conf = f"{rep.confidence:.0%} CI"
    pct, pp, rho = (100.0, 1, " %"), (100.0, 1, " pp"), (1.0, 3, "")
    out: list[str | None] = []
    for t in rep.table_ts:
        out.append(_finding(f"Forgetting ratio ρ≤{t} (closest to 0 best)",
                            {s: st[t - 1] for s, st in rep.rho.items()}, "abs", rho, conf))
    methods = {s: m for s, m in rep.summary.items() if s not in REFERENCES}
    out.append(_finding("Final accuracy", {s: m["final_acc"] for s, m in methods.items()},
                        "max", pct, conf))
    out.append(_finding("Forgetting (smallest best)",
                        {s: m["forgetting"] for s, m in methods.items()}, "min", pp, conf))
    if rep.reduction:
        r = rep.reduction[-1]
        out.append(f"HAT's reduction of forgetting at ρ≤{r['t']} against the best baseline "
                   f"({r['best_baseline'] or 'n/a'}): {reduction_text(r)}.")
    if rep.class_il is not None:
        cil = {s: m for s, m in rep.class_il.stats.items() if s not in REFERENCES}
        out.append(_finding("Class-IL last accuracy", {s: m["last"] for s, m in cil.items()},
                            "max", pct, conf))
    out += edge_lines(rep)
    return [line for line in out if line]


def terminal_headline(rep: ScenarioReport) -> str:
    """What ``python -m reports`` ends with per scenario: the headline tables fixed-width
    (:func:`headline_text`), the summary columns left out with what fills them, and the
    selected hyperparameters at the edge of their range."""
    text = headline_text(rep)
    lines = [text] if text else []
    lines += [f"  {line}" for line in left_out_lines(rep)]
    lines += [f"  edge: {row.strategy} {'; '.join(e.text() for e in row.edges)}"
              for row in rep.hyperparameters if row.edges]
    return "\n".join(lines)
