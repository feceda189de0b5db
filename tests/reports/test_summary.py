"""The summary's transfer and cost columns: FWT, intransigence, task-agnostic accuracy,
training time, peak memory and rehearsal samples; the cost figure; the references (joint, single)
kept out of Table 1, the ρ figure and the cost figure. Numbers are checked against values
computed here in plain Python (not reports.metrics); figures through the data they are given.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reports import build, figures
from reports.cli import main
from reports.synthetic import make_costs, make_record, synthetic_records, write_records
from reports.tables import SUMMARY_METRICS, compute_report
from tests.support.records import hand_ci, read_csv

SC = "c4"
T = 4
SEEDS = (0, 1, 2)
METHODS = ("hat", "ewc", "replay", "sgd", "packnet")
STRATEGIES = (*METHODS, "joint", "single")

pytestmark = pytest.mark.issue(16)


def close(got: str | float, want: float, tol: float = 1e-9) -> bool:
    got = float(got)
    return math.isnan(got) if math.isnan(want) else got == pytest.approx(want, abs=tol)


def hand_fwt(acc, single):
    return sum(acc[t][t] - single[t][t] for t in range(1, len(acc))) / (len(acc) - 1)


def hand_intransigence(acc, joint):
    return sum(joint[k][k] - acc[k][k] for k in range(len(acc))) / len(acc)


def hand_values(recs, strategy, metric):
    """Per seed, the metric computed from the records by hand (None: no value)."""
    out = []
    for sd in SEEDS:
        r = recs[(strategy, sd)]
        if metric == "fwt":
            out.append(hand_fwt(r["accuracy"], recs[("single", sd)]["accuracy"]))
        elif metric == "intransigence":
            out.append(hand_intransigence(r["accuracy"], recs[("joint", sd)]["accuracy"]))
        elif metric == "agnostic_acc":
            a = r["agnostic_accuracy"]
            out.append(None if a is None else sum(a[-1]) / len(a[-1]))
        elif metric == "seconds_per_task":
            out.append(sum(r["seconds"]) / len(r["seconds"]))
        elif metric in ("peak_memory_mb", "state_mb"):
            out.append(max(r[metric]))
        elif metric == "memory_samples":
            m = r["memory_samples"]
            out.append(None if m is None else max(m))
        elif metric == "final_acc":
            out.append(sum(r["accuracy"][-1]) / T)
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    records = synthetic_records({SC: T}, STRATEGIES, SEEDS, costs=True, selected=())
    write_records(root, records)
    out = root / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "plot_acc_matrix", _no_figure)  # tested in test_build.py
        assert main(["--results", str(root), "--out", str(out), "--jobs", "1"]) == 0
    return out, {(r["strategy"], r["seed"]): r for r in records}


def _no_figure(*args) -> list[Path]:
    return []


def test_summary_csv_new_metrics_equal_hand_computation(full):
    out, recs = full
    rows = read_csv(out / SC / "summary.csv")
    assert {r["strategy"] for r in rows} == set(STRATEGIES) - {"single"}  # FWT's reference
    assert len(rows) == (len(STRATEGIES) - 1) * len(SUMMARY_METRICS)
    checked = 0
    for row in rows:
        if row["metric"] not in ("fwt", "intransigence", "agnostic_acc", "seconds_per_task",
                                 "peak_memory_mb", "state_mb", "memory_samples", "final_acc"):
            continue
        vals = hand_values(recs, row["strategy"], row["metric"])
        if any(v is None for v in vals):
            assert all(v is None for v in vals)
            assert math.isnan(float(row["mean"])) and row["n_seeds"] == "0", row
            continue
        mean, half = hand_ci(vals)
        assert close(row["mean"], mean), row
        assert close(row["ci_half"], half), row
        assert row["n_seeds"] == "3"
        checked += 1
    # no value: hat/packnet have no task-agnostic prediction; only replay has rehearsal
    nan_rows = {(r["strategy"], r["metric"]) for r in rows if r["n_seeds"] == "0"}
    assert nan_rows == {("hat", "agnostic_acc"), ("packnet", "agnostic_acc")} | {
        (s, "memory_samples") for s in ("hat", "ewc", "sgd", "packnet", "joint")}
    assert checked == 6 * 8 - len(nan_rows)
    joint = next(r for r in rows if r["strategy"] == "joint" and r["metric"] == "intransigence")
    assert float(joint["mean"]) == 0.0  # joint against itself


def test_summary_md_cells(full):
    out, recs = full
    md = (out / SC / "summary.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| strategy |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[2:] == ["final accuracy (%)", "BWT (pp)", "forgetting (pp)", "FWT (pp)",
                        "intransigence (pp)", "task-agnostic accuracy (%)", "time per task (s)",
                        "peak memory (MB)", "state held (MB)", "rehearsal samples"]
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| strategy"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = dict(zip(cols, cells, strict=True))
    assert set(rows) == set(STRATEGIES) - {"single"}
    assert rows["hat"]["task-agnostic accuracy (%)"] == "n/a"
    assert rows["packnet"]["task-agnostic accuracy (%)"] == "n/a"
    assert rows["ewc"]["rehearsal samples"] == "n/a"
    mean, half = hand_ci(hand_values(recs, "replay", "agnostic_acc"))
    assert rows["replay"]["task-agnostic accuracy (%)"] == f"{100 * mean:.1f} ± {100 * half:.1f}"
    mean, half = hand_ci(hand_values(recs, "sgd", "fwt"))
    assert rows["sgd"]["FWT (pp)"] == f"{100 * mean:.1f} ± {100 * half:.1f}"
    mean, half = hand_ci(hand_values(recs, "ewc", "peak_memory_mb"))
    assert rows["ewc"]["peak memory (MB)"] == f"{mean:.0f} ± {half:.0f}"
    assert "Lopez-Paz" in md and "Chaudhry" in md


def test_references_are_not_methods(full):
    out, _ = full
    rho = read_csv(out / SC / "rho_table.csv")
    assert {r["strategy"] for r in rho} == set(METHODS)
    assert {r["strategy"] for r in read_csv(out / SC / "rho_vs_t.csv")} == set(METHODS)
    red = read_csv(out / SC / "rho_reduction.csv")
    assert all(r["best_baseline"] not in ("hat", "joint", "single") for r in red)
    assert [r["strategy"] for r in read_csv(out / SC / "cost.csv")] == [
        "hat", "ewc", "packnet", "replay", "sgd"]  # hat first, then sorted: the _order rule
    md = (out / SC / "rho_table.md").read_text(encoding="utf-8").splitlines()
    assert not any(line.startswith(("| single", "| joint")) for line in md)
    assert sum(line.startswith("| ") for line in md) == 1 + len(METHODS) + 1  # + reduction


def test_cost_files_written_indexed_and_csv_equals_hand(full):
    out, recs = full
    index = (out / "index.md").read_text(encoding="utf-8")
    for name in ("cost.png", "cost.pdf", "cost.csv"):
        assert (out / SC / name).stat().st_size > 0
        assert f"{SC}/{name}" in index
    assert (out / SC / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in read_csv(out / SC / "cost.csv"):
        for metric in ("final_acc", "seconds_per_task", "peak_memory_mb", "state_mb"):
            mean, half = hand_ci(hand_values(recs, row["strategy"], metric))
            assert close(row[metric], mean) and close(row[f"{metric}_ci_half"], half)
            assert row[f"{metric}_n_seeds"] == "3"


def test_figures_get_every_method_and_no_reference(tmp_path, monkeypatch):
    """The ρ figure and the cost figure are given every method (about 20 of them), never joint
    or single; the cost points are the summary's numbers."""
    many = ("hat", "agem", "der", "er-ace", "ewc", "gdumb", "icarl", "imm-mean", "imm-mode",
            "lfl", "lwf", "naive", "packnet", "pathnet", "pnn", "replay", "sgd-f", "si")
    write_records(tmp_path, synthetic_records({"m": 3}, (*many, "joint", "single"), (0, 1),
                                              costs=True, selected=()))
    seen: dict[str, tuple] = {}

    def spy(name):
        real = getattr(figures, name)

        def call(*args):
            seen[name] = args
            return real(*args)
        return call

    for name in ("plot_rho_vs_t", "plot_cost"):
        monkeypatch.setattr(figures, name, spy(name))
    monkeypatch.setattr(figures, "plot_acc_matrix", _no_figure)  # 20 of them: slow
    from reports.load import load_records

    result = build.build_report(load_records(tmp_path), tmp_path / "r", workers=1)
    rep = result.reports["m"]
    rho, n_tasks, _ = seen["plot_rho_vs_t"]
    assert list(rho) == list(many) and n_tasks == 3
    summary, scenario, paths = seen["plot_cost"]
    assert list(summary) == list(many) and scenario == "m"
    assert [p.name for p in paths] == ["cost.png", "cost.pdf"]
    for metric, _label in figures.COST_PANELS:
        points = figures.cost_points(summary, metric)
        assert [p[0] for p in points] == list(many)
        for s, x, xh, y, yh in points:
            assert x == rep.summary[s][metric].mean and xh == rep.summary[s][metric].half
            assert y == pytest.approx(100 * rep.summary[s]["final_acc"].mean)
            assert yh == pytest.approx(100 * rep.summary[s]["final_acc"].half)
    styles = {json.dumps(figures.strategy_style(k), sort_keys=True) for k in range(30)}
    assert len(styles) == 30  # every strategy of a figure looks different


# --- records without the new fields, or without references ------------------------------------


def test_older_records_show_no_data_and_how_to_get_fwt(tmp_path, monkeypatch):
    """Records written before the cost fields (no agnostic_accuracy, peak_memory_mb,
    memory_samples) and no single records: "–" cells, no crash, the command for single."""
    monkeypatch.setattr(figures, "plot_acc_matrix", _no_figure)
    write_records(tmp_path, synthetic_records({"old": 3}, ("hat", "ewc", "joint"), SEEDS,
                                              selected=()))
    out = tmp_path / "report"
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    md = (out / "old" / "summary.md").read_text(encoding="utf-8")
    ewc = next(line for line in md.splitlines() if line.startswith("| ewc |"))
    cells = [c.strip() for c in ewc.strip("|").split("|")]
    # FWT (no single), task-agnostic, peak memory and state (older records): no strategy has
    # a value, so no column, and a line saying what fills it
    header = next(line for line in md.splitlines() if line.startswith("| strategy |"))
    for label in ("FWT (pp)", "task-agnostic accuracy (%)", "peak memory (MB)",
                  "state held (MB)"):
        assert label not in header and f"- {label} left out" in md
    assert cells[5] != "–" and cells[6] != "–"  # intransigence (joint exists), seconds
    # nobody keeps a rehearsal memory: no column, no legend
    assert "rehearsal samples" not in md
    assert "python -m benchmark run --scenario old --strategies single --seeds 0,1,2" in md
    rows = {(r["strategy"], r["metric"]): r for r in read_csv(out / "old" / "summary.csv")}
    assert rows[("ewc", "fwt")]["n_seeds"] == "0" and rows[("ewc", "fwt")]["mean"] == "nan"
    cost = read_csv(out / "old" / "cost.csv")
    assert [r["strategy"] for r in cost] == ["hat", "ewc"]
    assert all(r["peak_memory_mb"] == "nan" and r["state_mb"] == "nan"
               and r["seconds_per_task"] != "nan" for r in cost)
    assert (out / "old" / "cost.png").stat().st_size > 0  # the memory panel says "no data"
    # FWT's reference is optional: said under the summary, not a missing piece of the report
    index = (out / "index.md").read_text(encoding="utf-8").splitlines()
    assert not any("single" in line for line in index if line.startswith("- **old**"))


def test_partial_references_and_odd_fields():
    """single for seed 0 only; a null peak-memory entry; malformed agnostic accuracy."""
    recs = []
    for sd in SEEDS:
        for s in ("ewc", "joint", "single"):
            if s == "single" and sd != 0:
                continue
            recs.append(make_record("p", s, sd, 3, extra=make_costs(s, 3, sd, "p")))
    ewc = {r["seed"]: r for r in recs if r["strategy"] == "ewc"}
    ewc[1]["peak_memory_mb"] = [None, 50.0, 40.0]  # a value lost (diverged number)
    ewc[2]["agnostic_accuracy"] = [[0.5], [0.5, 0.5]]  # 2 rows for T = 3
    rep = compute_report(recs)["p"]
    fwt = rep.summary["ewc"]["fwt"]
    assert fwt.n == 1 and fwt.mean == pytest.approx(
        hand_fwt(ewc[0]["accuracy"], next(r for r in recs if r["strategy"] == "single")
                 ["accuracy"]))
    assert rep.summary["ewc"]["peak_memory_mb"].values[1] == 50.0
    agn = rep.summary["ewc"]["agnostic_acc"]
    assert agn.n == 2 and any("malformed agnostic_accuracy" in n for n in rep.notes)
    assert any("seed(s) 1,2" in n and "--strategies single" in n for n in rep.summary_notes)
    from reports.render import summary_md

    md = summary_md(rep)
    assert "(n=1)" in md and "(n=2)" in md  # values from fewer seeds than the row has


def test_diverged_single_is_named_and_not_a_row(tmp_path):
    recs = synthetic_records({"d": 3}, ("ewc", "joint", "single"), (0, 1), costs=True,
                             selected=())
    bad = next(r for r in recs if r["strategy"] == "single" and r["seed"] == 1)
    bad["diverged"] = True
    rep = compute_report(recs)["d"]
    assert rep.summary["ewc"]["fwt"].n == 1
    assert any("single diverged for seed(s) 1" in n for n in rep.summary_notes)
    assert not any("--strategies single" in n for n in rep.summary_notes)
    bad = next(r for r in recs if r["strategy"] == "single" and r["seed"] == 0)
    bad["diverged"] = True
    rep = compute_report(recs)["d"]
    assert rep.only_diverged(summary=True) == [] and rep.only_diverged(rho=True) == []
    assert "single" in rep.only_diverged()
