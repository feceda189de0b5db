"""The paper's published numbers as checked targets (``configs/paper/targets.csv``).

A targets file has one row per published number: the setup (a scenario of this suite), the
protocol, the strategy, the metric (:data:`TASK_METRICS` / :data:`CLASS_METRICS`), the
published value, how it is checked (:data:`CHECKS`) with a tolerance, an optional filter on the
records' parameters (``where``), where the number comes from and the command that reproduces
it at full scale. :func:`load_targets` reads and validates it (one line naming the file, row
and column on bad input); :func:`check_targets` measures each target from run records with the
report's own tables (:func:`reports.tables.compute_report`, so the same records count and the
same formulas apply) and gives it a status:

* ``✅`` the published value is consistent with the measurement (:data:`CHECKS`);
* ``❌`` it is not;
* ``not run``: the records needed are absent (the reason says which, the command adds them);
* ``n/a``: the records exist but the metric is undefined for them (the reason says why).

:func:`to_markdown`, :func:`to_csv`, :func:`to_html` and :func:`line` render the results;
:func:`write_targets` writes ``targets.md`` and ``targets.csv`` into a report folder.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .load import ReportError
from .schema import PROTOCOLS, param_text, protocol_of
from .tables import ScenarioReport, Stat, compute_report
from .tables.model import CLASS_IL_METRICS, REFERENCES, SUMMARY_METRICS
from .tables.records import trained_alone
from .tables.summary import NEEDS_REFERENCE

__all__ = [
    "CHECKS",
    "CLASS_METRICS",
    "COLUMNS",
    "FAIL",
    "NOT_RUN",
    "NO_VALUE",
    "PASS",
    "TASK_METRICS",
    "TITLE",
    "Target",
    "TargetResult",
    "TargetsError",
    "check_targets",
    "line",
    "load_targets",
    "to_csv",
    "to_html",
    "to_markdown",
    "write_targets",
]

#: the title of the targets' section of the report page and of targets.md
TITLE = "The paper's numbers as targets"
PASS = "✅"
FAIL = "❌"
NOT_RUN = "not run"
NO_VALUE = "n/a"

#: the columns of a targets file, in order (``where`` may be empty)
COLUMNS = ("id", "setup", "protocol", "strategy", "metric", "published", "check", "tolerance",
           "where", "source", "provenance", "command")
#: how a measurement of mean m and CI half-width h (0 when there is no interval: one seed, or a
#: metric without one) is judged against the published value p with tolerance tol
CHECKS = {
    "ci": "p lies in [m - h - tol, m + h + tol]",
    "at_least": "m + h + tol >= p (not significantly below)",
    "at_most": "m - h - tol <= p (not significantly above)",
    "range": "p is low..high; every measured value (one per task for compression, else m) "
             "lies in [low - tol, high + tol]",
}
#: task-incremental metrics: ρ≤t, HAT's reduction of |ρ≤t| over the best baseline (percent),
#: the summary table's metrics and, for tasks trained alone, HAT's compression
TASK_METRICS = ("rho_le_<t>", "reduction_le_<t>", *SUMMARY_METRICS, "weights_kept",
                "units_kept")
#: class-incremental metrics (the Class-IL table's)
CLASS_METRICS = CLASS_IL_METRICS
_PER_T = re.compile(r"^(rho_le|reduction_le)_([1-9][0-9]*)$")
_COMPRESSION = ("weights_kept", "units_kept")


class TargetsError(ReportError):
    """A targets file that cannot be used (the CLI prints it as one line, exit status 2)."""


@dataclass(frozen=True)
class Target:
    """One published number (a row of the targets file; ``row`` is its line number)."""

    id: str
    setup: str
    protocol: str
    strategy: str
    metric: str
    published: float
    check: str
    tolerance: float
    where: tuple[tuple[str, str], ...]
    source: str
    provenance: str
    command: str
    row: int = 0
    #: the upper end of a ``range`` check (``published`` is the lower end)
    high: float = math.nan

    def published_text(self) -> str:
        p = _fmt(self.published, self.metric)
        return f"{p}..{_fmt(self.high, self.metric)}" if self.check == "range" else p

    def where_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.where)


@dataclass
class TargetResult:
    """A target and what the records say about it."""

    target: Target
    status: str  # PASS, FAIL, NOT_RUN or NO_VALUE
    mean: float = math.nan
    half: float = math.nan  # CI half-width, NaN without an interval
    n: int = 0  # seeds behind the mean (compression: tasks trained alone)
    values: list[float] = field(default_factory=list)  # per task (compression) else [mean]
    reason: str = ""
    devices: list[str] = field(default_factory=list)
    epochs: list[str] = field(default_factory=list)

    def measured_text(self) -> str:
        m = self.target.metric
        if self.status in (NOT_RUN, NO_VALUE):
            return "–"
        if m in _COMPRESSION:
            return (f"{_fmt(min(self.values), m)}..{_fmt(max(self.values), m)} over "
                    f"{len(self.values)} task(s)")
        return _fmt(self.mean, m)

    def ci_text(self) -> str:
        if self.status in (NOT_RUN, NO_VALUE) or self.target.metric in _COMPRESSION:
            return "–"
        if math.isnan(self.half):
            return "no CI (1 seed)" if self.n == 1 else "no CI: computed from the means"
        m = self.target.metric
        return f"[{_fmt(self.mean - self.half, m)}, {_fmt(self.mean + self.half, m)}]"

    def runs_text(self) -> str:
        """``n seeds, cpu, 3 epochs`` of the records behind the value."""
        if self.status in (NOT_RUN, NO_VALUE):
            return "–"
        unit = "task(s)" if self.target.metric in _COMPRESSION else "seed(s)"
        parts = [f"{self.n} {unit}"]
        if self.devices:
            parts.append("/".join(self.devices))
        if self.epochs:
            parts.append(f"{'/'.join(self.epochs)} epochs")
        return ", ".join(parts)


def _fmt(x: float, metric: str) -> str:
    if math.isnan(x):
        return "n/a"
    if metric.startswith("reduction_le"):
        return f"{x:.1f} %"
    if metric in _COMPRESSION:
        return f"{100 * x:.1f} %"
    return f"{x:.3f}"


# --- reading --------------------------------------------------------------------------------


def _metric_problem(metric: str, protocol: str, strategy: str) -> str | None:
    if protocol == "class":
        if metric not in CLASS_METRICS:
            return (f"unknown class-incremental metric {metric!r}; give one of "
                    f"{', '.join(CLASS_METRICS)}")
        return None
    per_t = _PER_T.match(metric)
    if per_t is None and metric not in TASK_METRICS:
        return (f"unknown task-incremental metric {metric!r}; give one of "
                f"{', '.join(TASK_METRICS)} (t a task count, e.g. rho_le_2)")
    if metric.startswith("reduction_le") and strategy != "hat":
        return f"{metric} is HAT's reduction over the best baseline: the strategy must be hat"
    if metric in _COMPRESSION and strategy != "hat":
        return f"{metric} is HAT's compression of a task trained alone: the strategy must be hat"
    if strategy in REFERENCES and (per_t is not None or metric in NEEDS_REFERENCE):
        return f"{strategy} is a reference, it has no {metric}"
    return None


class _CellError(Exception):
    """A bad cell of a targets file: its column and what is wrong."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(column, message)
        self.column, self.message = column, message


def _number(text: str, what: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} must be a finite number, got {text!r}")
    return x


def _target(row: Mapping[str, str], line_no: int) -> Target:
    """A validated :class:`Target`; :class:`_CellError` naming the column otherwise."""
    vals = {k: (row.get(k) or "").strip() for k in COLUMNS}
    for col in ("id", "setup", "strategy", "metric", "published", "check", "source",
                "command"):
        if not vals[col]:
            raise _CellError(col, "empty; every target needs one")
    protocol = vals["protocol"] or "task"
    if protocol not in PROTOCOLS:
        raise _CellError("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    problem = _metric_problem(vals["metric"], protocol, vals["strategy"])
    if problem:
        raise _CellError("metric", problem)
    check = vals["check"]
    if check not in CHECKS:
        raise _CellError("check", f"must be one of {', '.join(CHECKS)}, got {check!r}")
    if vals["metric"] in _COMPRESSION and check != "range":
        raise _CellError("check", f"{vals['metric']} is one value per task: use range")
    high = math.nan
    try:
        if check == "range":
            low_text, sep, high_text = vals["published"].partition("..")
            if not sep:
                raise ValueError(f"a range check needs low..high, got {vals['published']!r}")
            published = _number(low_text, "low")
            high = _number(high_text, "high")
            if high < published:
                raise ValueError(f"low {low_text} is above high {high_text}")
        else:
            published = _number(vals["published"], "the published value")
    except ValueError as e:
        raise _CellError("published", str(e)) from None
    try:
        tolerance = _number(vals["tolerance"], "the tolerance") if vals["tolerance"] else 0.0
    except ValueError as e:
        raise _CellError("tolerance", str(e)) from None
    if tolerance < 0:
        raise _CellError("tolerance", f"must be >= 0, got {vals['tolerance']}")
    where = []
    for item in vals["where"].split():
        key, sep, value = item.partition("=")
        if not sep or not key or not value or "." not in key:
            raise _CellError("where", f"give section.key=value pairs separated by spaces "
                                      f"(e.g. model.family=resnet18), got {item!r}")
        where.append((key, value))
    return Target(id=vals["id"], setup=vals["setup"], protocol=protocol,
                  strategy=vals["strategy"], metric=vals["metric"], published=published,
                  check=check, tolerance=tolerance, where=tuple(where), source=vals["source"],
                  provenance=vals["provenance"], command=vals["command"], row=line_no,
                  high=high)


def load_targets(path: str | Path) -> list[Target]:
    """The targets of a CSV file with the header :data:`COLUMNS`, validated. Raises
    :class:`TargetsError` with one line naming the file, the row (line number) and the
    column of the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet may add a BOM
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise TargetsError(f"cannot read the targets file {path}: {reason}; give a CSV "
                           f"file with the columns {','.join(COLUMNS)}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    if missing or unknown:
        what = "; ".join(
            ([f"missing column(s) {', '.join(missing)}"] if missing else [])
            + ([f"unknown column(s) {', '.join(unknown)}"] if unknown else []))
        raise TargetsError(f"{path}, row 1 (header): {what}; the header must be "
                           f"{','.join(COLUMNS)}")
    reader.fieldnames = header
    targets: list[Target] = []
    seen: dict[str, int] = {}
    for rec in reader:
        line_no = reader.line_num
        if not any((v or "").strip() for v in rec.values() if isinstance(v, str)):
            continue  # a blank line
        if None in rec:
            raise TargetsError(f"{path}, row {line_no}: more fields than the "
                               f"{len(COLUMNS)} columns (quote a value holding a comma)")
        try:
            t = _target(rec, line_no)
        except _CellError as e:
            raise TargetsError(f"{path}, row {line_no}, column {e.column}: {e.message}") \
                from None
        if t.id in seen:
            raise TargetsError(f"{path}, row {line_no}, column id: {t.id!r} is already the id "
                               f"of row {seen[t.id]}; give each target its own id")
        seen[t.id] = line_no
        targets.append(t)
    if not targets:
        raise TargetsError(f"{path}: no targets (only a header); add one row per published "
                           "number")
    return targets


# --- measuring ------------------------------------------------------------------------------


def _matches(rec: dict, where: Sequence[tuple[str, str]]) -> bool:
    for key, value in where:
        node: Any = rec.get("params")
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or param_text(node) != value:
            return False
    return True


def _provenance(records: Iterable[dict], t: Target) -> tuple[list[str], list[str]]:
    """The devices and the maximum epochs per task of the records behind a target."""
    devices, epochs = set(), set()
    for r in records:
        if r["scenario"] != t.setup or r["strategy"] != t.strategy or r.get("diverged"):
            continue
        if protocol_of(r) != t.protocol or trained_alone(r) != (t.metric in _COMPRESSION):
            continue
        if r.get("tag") and t.metric not in _COMPRESSION:
            continue
        devices.add(str(r.get("device", "?")))
        train = r.get("params", {}).get("train") if isinstance(r.get("params"), dict) else None
        if isinstance(train, dict) and train.get("epochs") is not None:
            epochs.add(param_text(train["epochs"]))
    return sorted(devices), sorted(epochs, key=lambda e: (len(e), e))


def _judge(t: Target, values: Sequence[float], half: float) -> str:
    h = 0.0 if math.isnan(half) else half
    tol = t.tolerance
    if t.check == "range":
        ok = all(t.published - tol <= v <= t.high + tol for v in values)
    else:
        m = values[0]
        ok = {"ci": m - h - tol <= t.published <= m + h + tol,
              "at_least": m + h + tol >= t.published,
              "at_most": m - h - tol <= t.published}[t.check]
    return PASS if ok else FAIL


def _stat_result(t: Target, st: Stat, reason_if_empty: str) -> TargetResult:
    if st.n == 0 or math.isnan(st.mean):
        return TargetResult(t, NO_VALUE, reason=reason_if_empty)
    return TargetResult(t, _judge(t, [st.mean], st.half), mean=st.mean, half=st.half, n=st.n,
                        values=[st.mean])


def _task_result(t: Target, rep: ScenarioReport) -> TargetResult:
    s, m = t.strategy, t.metric
    if m in _COMPRESSION:
        comp = rep.compression
        if comp is None:
            return TargetResult(t, NOT_RUN, reason=f"no HAT records of a task of {t.setup} "
                                "trained alone (scenario.task) with mask statistics")
        per_task = comp.weights_kept if m == "weights_kept" else comp.units_kept
        if per_task is None:
            return TargetResult(t, NO_VALUE, reason=f"the records trained alone hold no {m}")
        vals = [float(v) for v in per_task]
        return TargetResult(t, _judge(t, vals, math.nan), mean=float(sum(vals) / len(vals)),
                            n=len(vals), values=vals)
    if not rep.strategies and not rep.diverged:
        alone = " (only tasks trained alone)" if rep.compression is not None else ""
        return TargetResult(t, NOT_RUN,
                            reason=f"no task-incremental records of {t.setup}{alone}")
    if s not in rep.seeds:
        if s in rep.diverged:
            return TargetResult(t, NO_VALUE, reason=f"every {s} run of {t.setup} diverged")
        return TargetResult(t, NOT_RUN, reason=f"no {s} records of {t.setup}")
    per_t = _PER_T.match(m)
    if per_t is not None:
        k = int(per_t.group(2))
        if k > rep.n_tasks:
            return TargetResult(t, NO_VALUE, reason=f"{t.setup}'s records have T = "
                                f"{rep.n_tasks} tasks, fewer than {k}")
        if s not in rep.rho:
            return TargetResult(t, NOT_RUN, reason=f"no joint records of {t.setup} for {s}'s "
                                "seeds: ρ needs joint training of the same seeds")
        if per_t.group(1) == "rho_le":
            return _stat_result(t, rep.rho[s][k - 1], f"ρ≤{k} is undefined for every seed")
        red = next((r for r in rep.reduction if r["t"] == k), None)
        if red is None:
            return TargetResult(t, NO_VALUE, reason="the report computes the reduction at "
                                f"t = {', '.join(map(str, rep.table_ts))} only")
        if red.get("measure") != "percent":
            return TargetResult(t, NO_VALUE, reason="no baseline ρ to compare with"
                                if red.get("best_baseline") is None else
                                f"the best baseline ({red['best_baseline']}) has |ρ| below "
                                "0.01: a percentage of it is not meaningful")
        st = rep.rho[s][k - 1]
        return TargetResult(t, _judge(t, [red["reduction_pct"]], math.nan),
                            mean=red["reduction_pct"], n=st.n, values=[red["reduction_pct"]],
                            reason=f"against {red['best_baseline']}, the best baseline here")
    if s not in rep.summary:
        return TargetResult(t, NO_VALUE, reason=f"{s} has no row in the summary table")
    need = NEEDS_REFERENCE.get(m)
    why = (f"no {need} records of {t.setup} for {s}'s seeds" if need
           else f"{m} is undefined for {s}'s records")
    return _stat_result(t, rep.summary[s][m], why)


def _class_result(t: Target, rep: ScenarioReport) -> TargetResult:
    cil = rep.class_il
    if cil is None:
        return TargetResult(t, NOT_RUN, reason=f"no class-incremental records of {t.setup}")
    if t.strategy not in cil.stats:
        if t.strategy in cil.diverged:
            return TargetResult(t, NO_VALUE,
                                reason=f"every class-incremental {t.strategy} run diverged")
        return TargetResult(t, NOT_RUN, reason=f"no class-incremental {t.strategy} records "
                            f"of {t.setup}")
    why = (f"no joint records of {t.setup} in the class protocol" if t.metric == "rho"
           else f"{t.metric} is undefined for {t.strategy}'s records")
    return _stat_result(t, cil.stats[t.strategy][t.metric], why)


def check_targets(
    targets: Sequence[Target],
    records: Sequence[dict],
    confidence: float = 0.95,
    *,
    reports: Mapping[str, ScenarioReport] | None = None,
) -> list[TargetResult]:
    """One :class:`TargetResult` per target, in order, from validated run records
    (:func:`reports.load.load_records`). ``reports``: the records' :func:`compute_report`
    when the caller has it already (used for the targets without ``where``)."""
    cache: dict[tuple, tuple[list[dict], Mapping[str, ScenarioReport]]] = {}
    out = []
    for t in targets:
        if t.where not in cache:
            recs = [r for r in records if _matches(r, t.where)]
            reps = reports if not t.where and reports is not None else compute_report(
                list(recs), confidence)
            cache[t.where] = (recs, reps)
        recs, reps = cache[t.where]
        rep = reps.get(t.setup)
        if rep is None:
            had = any(r["scenario"] == t.setup for r in records)
            reason = (f"records of {t.setup} exist but none has {t.where_text()}" if had
                      else f"no records of {t.setup}")
            res = TargetResult(t, NOT_RUN, reason=reason)
        elif t.protocol == "class":
            res = _class_result(t, rep)
        else:
            res = _task_result(t, rep)
        if res.status in (PASS, FAIL):
            res.devices, res.epochs = _provenance(recs, t)
        out.append(res)
    return out


# --- rendering ------------------------------------------------------------------------------


def _metric_label(t: Target) -> str:
    per_t = _PER_T.match(t.metric)
    if per_t is not None:
        if per_t.group(1) == "rho_le":
            return f"ρ≤{per_t.group(2)}"
        return f"reduction of |ρ≤{per_t.group(2)}| over the best baseline"
    return t.metric + (" (Class-IL)" if t.protocol == "class" else "")


def line(r: TargetResult) -> str:
    """The terminal line of a result: status, target, published and measured value with its
    CI, and for a target without value the reason and the command that produces it."""
    t = r.target
    head = (f"{r.status} {t.id}: {t.setup} {t.strategy} {_metric_label(t)} published "
            f"{t.published_text()}")
    if r.status in (NOT_RUN, NO_VALUE):
        tail = f"; {r.reason}"
        if r.status == NOT_RUN:
            tail += f"; run: {t.command}"
        return head + tail
    ci = r.ci_text()
    ci = f", CI {ci}" if ci.startswith("[") else (f", {ci}" if ci != "–" else "")
    why = f"; {r.reason}" if r.reason else ""
    return head + f", measured {r.measured_text()}{ci} ({r.runs_text()}){why}"


_HEADER = ["status", "target", "setup", "strategy", "metric", "published", "measured",
           "CI", "runs", "where in the paper", "why / command"]


def _cells(r: TargetResult) -> list[str]:
    t = r.target
    why = r.reason + (f"; run `{t.command}`" if r.status == NOT_RUN else "")
    setup = t.setup + (f" ({t.where_text()})" if t.where else "")
    return [r.status, t.id, setup, t.strategy, _metric_label(t), t.published_text(),
            r.measured_text(), r.ci_text(), r.runs_text(), f"{t.source} [{t.provenance}]", why]


def _counts(results: Sequence[TargetResult]) -> str:
    order = (PASS, FAIL, NOT_RUN, NO_VALUE)
    n = {s: sum(r.status == s for r in results) for s in order}
    return ", ".join(f"{n[s]} {s}" for s in order if n[s])


def to_markdown(results: Sequence[TargetResult], confidence: float = 0.95) -> str:
    """A Markdown page: the counts, the rule of the check and one table row per target."""
    rows = [[c.replace("|", "\\|") for c in _cells(r)] for r in results]
    lines = [f"# {TITLE}", "",
             f"{len(results)} targets: {_counts(results)}. Measured values are means over "
             f"seeds with their {confidence:.0%} CI; a target passes when "
             + "; ".join(f"`{k}`: {v}" for k, v in CHECKS.items()) + ".", "",
             "| " + " | ".join(_HEADER) + " |", "|" + "|".join("---" for _ in _HEADER) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(results: Sequence[TargetResult]) -> str:
    """Plain numbers per target (``nan`` where undefined): the target's columns, then
    ``status, measured, ci_low, ci_high, n, devices, epochs, reason``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*COLUMNS, "status", "measured", "ci_low", "ci_high", "n", "devices", "epochs",
                "reason"])
    for r in results:
        t = r.target
        has = r.status in (PASS, FAIL)
        low = r.mean - r.half if has and not math.isnan(r.half) else math.nan
        high = r.mean + r.half if has and not math.isnan(r.half) else math.nan
        w.writerow([t.id, t.setup, t.protocol, t.strategy, t.metric,
                    t.published_text() if t.check == "range" else repr(t.published), t.check,
                    repr(t.tolerance), t.where_text(), t.source, t.provenance, t.command,
                    r.status, repr(r.mean) if has else "nan", repr(low), repr(high), r.n,
                    " ".join(r.devices), " ".join(r.epochs), r.reason])
    return buf.getvalue()


def to_html(results: Sequence[TargetResult], confidence: float = 0.95) -> str:
    """An HTML fragment (a paragraph and a table, text escaped) for the report page."""
    esc = html.escape
    cls = {PASS: "pass", FAIL: "fail", NOT_RUN: "not-run", NO_VALUE: "na"}
    head = "".join(f"<th>{esc(h)}</th>" for h in _HEADER)
    body = "".join(
        f'<tr class="target-{cls[r.status]}">'
        + "".join(f"<td>{esc(c)}</td>" for c in _cells(r)) + "</tr>"
        for r in results)
    return (f"<p>{len(results)} targets: {esc(_counts(results))}. Measured: mean over seeds "
            f"with its {confidence:.0%} CI; a target passes when "
            + esc("; ".join(f"{k}: {v}" for k, v in CHECKS.items())) + ".</p>\n"
            f'<div class="scroll"><table class="targets"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>\n")


#: the files :func:`write_targets` writes into a report folder
FILES = ("targets.md", "targets.csv")


def write_targets(results: Sequence[TargetResult], out: str | Path,
                  confidence: float = 0.95) -> list[Path]:
    """Write ``targets.md`` and ``targets.csv`` (:data:`FILES`) into the report folder
    ``out``; returns them."""
    from .io import write_text

    md, csv_name = FILES
    out = Path(out)
    return [write_text(out / md, to_markdown(results, confidence)),
            write_text(out / csv_name, to_csv(results))]
