"""The class-incremental protocol in the report: its own table and figure from class records
only, numbers against hand computations (plain Python, not reports.metrics), and the task
protocol's files unchanged by class records next to them."""

from __future__ import annotations

import fnmatch
import math

import pytest

from reports.build import ARTIFACTS, build_report
from reports.schema import validate
from reports.synthetic import (
    make_agnostic_random,
    make_class_record,
    make_record,
    synthetic_records,
)
from reports.tables import compute_report
from tests.support.records import hand_ci, read_csv

SC = "syn-3"
SEEDS = (0, 1, 2)
CLASS_FILES = ["class_il.md", "class_il.csv", "class_il_vs_t.png", "class_il_vs_t.pdf",
               "class_il_vs_t.csv"]


def hand_last(rows):
    return sum(rows[-1]) / len(rows[-1])


def hand_aia(rows):
    return sum(sum(r) / len(r) for r in rows) / len(rows)


def hand_forgetting(rows):
    n = len(rows)
    return sum(max(rows[t][u] for t in range(u, n - 1)) - rows[-1][u]
               for u in range(n - 1)) / (n - 1)


def hand_rho_last(rows, joint, rnd):
    t = len(rows) - 1
    vals = [(rows[t][u] - rnd[t][u]) / (joint[t][u] - rnd[t][u]) - 1 for u in range(t + 1)]
    return sum(vals) / len(vals)


def class_records(strategies=("ewc", "sgd", "joint"), seeds=SEEDS):
    return synthetic_records({SC: 3}, strategies, seeds, protocol="class", costs=True)


def task_records():
    return synthetic_records({SC: 3}, ("hat", "ewc", "sgd", "joint", "single"), SEEDS,
                             hat_stats=True, costs=True, grid=([25.0, 400.0], [0.5, 2.5]))


def test_synthetic_class_records_are_valid_and_triangular():
    recs = class_records(("ewc", "hat", "joint"))
    assert {r["strategy"] for r in recs} == {"ewc", "joint"}  # hat has no class records
    for r in recs:
        validate(r, strict=True)
        assert r["params"]["scenario"] == {"protocol": "class"}
        for key in ("agnostic_accuracy", "valid_agnostic_accuracy", "agnostic_random_accuracy"):
            assert [len(row) for row in r[key]] == [1, 2, 3], key
    assert make_agnostic_random(3, 2) == [[0.5], [0.25, 0.25], [1 / 6] * 3]
    with pytest.raises(ValueError, match="no class-incremental records"):
        make_class_record(SC, "hat", 0, 3)
    with pytest.raises(ValueError, match="protocol must be task or class"):
        synthetic_records({SC: 3}, protocol="domain")


def test_class_il_numbers_equal_hand_computation():
    recs = class_records()
    rep = compute_report(task_records() + recs)[SC]
    cil = rep.class_il
    assert cil.strategies == ["ewc", "sgd", "joint"]  # joint last, as the reference
    by = {(r["strategy"], r["seed"]): r for r in recs}
    for s in cil.strategies:
        runs = [by[(s, sd)] for sd in SEEDS]
        want = {
            "last": [hand_last(r["agnostic_accuracy"]) for r in runs],
            "average_incremental": [hand_aia(r["agnostic_accuracy"]) for r in runs],
            "forgetting": [hand_forgetting(r["agnostic_accuracy"]) for r in runs],
            "rho": [hand_rho_last(r["agnostic_accuracy"],
                                  by[("joint", r["seed"])]["agnostic_accuracy"],
                                  r["agnostic_random_accuracy"]) for r in runs],
            "task_il_last": [hand_last(r["accuracy"]) for r in runs],
        }
        for m, values in want.items():
            mean, half = hand_ci(values)
            assert cil.stats[s][m].mean == pytest.approx(mean), (s, m)
            assert cil.stats[s][m].half == pytest.approx(half), (s, m)
        for t in range(3):
            mean, half = hand_ci([sum(r["agnostic_accuracy"][t]) / (t + 1) for r in runs])
            assert cil.curve[s][t].mean == pytest.approx(mean)
            assert cil.curve[s][t].half == pytest.approx(half)
    assert cil.stats["joint"]["rho"].mean == pytest.approx(0.0)


def test_rho_uses_the_chance_level_of_the_classes_seen():
    """A run exactly at chance has ρ = -1 only with the falling per-row chance level."""
    rnd = make_agnostic_random(3, 2)
    joint = [[0.9], [0.8, 0.9], [0.7, 0.8, 0.9]]
    recs = [make_class_record(SC, "sgd", 0, 3, agnostic_accuracy=rnd),
            make_class_record(SC, "joint", 0, 3, agnostic_accuracy=joint)]
    cil = compute_report(recs)[SC].class_il
    assert cil.stats["sgd"]["rho"].mean == pytest.approx(-1.0)
    assert cil.stats["sgd"]["last"].mean == pytest.approx(1 / 6)


def test_task_tables_never_read_class_records():
    """The task protocol's numbers are those of the task records alone, whatever class records
    of the same strategies and seeds sit next to them; without class records there is no
    Class-IL table."""
    tasks, classes = task_records(), class_records()
    alone = compute_report(tasks)[SC]
    mixed = compute_report(tasks + classes)[SC]
    assert alone.class_il is None and mixed.class_il is not None
    assert mixed.strategies == alone.strategies
    assert mixed.rho == alone.rho and mixed.summary == alone.summary
    assert mixed.acc_mean.keys() == alone.acc_mean.keys()
    assert all((mixed.acc_mean[s] == alone.acc_mean[s]).all() for s in alone.acc_mean)
    assert mixed.missing == alone.missing and mixed.notes == alone.notes
    only_class = compute_report(classes)[SC]
    assert not only_class.rho and not only_class.summary and not only_class.acc_mean
    assert only_class.class_il.stats == mixed.class_il.stats


def test_class_files_are_new_artifacts_and_task_files_stay_identical(tmp_path):
    tasks, classes = task_records(), class_records()
    before = build_report(tasks, tmp_path / "a", workers=1)
    after = build_report(tasks + classes, tmp_path / "b", workers=1)
    names = {p.name for p in before.files}
    assert not any(n.startswith("class_il") for n in names)
    assert "class_il" not in before.index.read_text(encoding="utf-8")
    for p in before.files:  # PDFs carry a fresh id each time: compared by name only
        if p.suffix != ".pdf" and p != before.index:
            q = tmp_path / "b" / p.relative_to(tmp_path / "a")
            assert q.read_bytes() == p.read_bytes(), p.name
    index = after.index.read_text(encoding="utf-8")
    for name in CLASS_FILES:
        p = tmp_path / "b" / SC / name
        assert p.is_file() and p.stat().st_size > 0, name
        assert f"{SC}/{name}" in index
        owners = [a.pattern for a in ARTIFACTS if fnmatch.fnmatch(name, a.pattern)]
        assert len(owners) == 1, (name, owners)
    assert (tmp_path / "b" / SC / "class_il_vs_t.png").read_bytes()[:4] == b"\x89PNG"
    # a later report without class records removes the Class-IL files
    build_report(tasks, tmp_path / "b", workers=1)
    assert not list((tmp_path / "b" / SC).glob("class_il*"))


def test_class_il_files_say_the_protocol_and_hold_the_numbers(tmp_path):
    recs = class_records()
    build_report(recs, tmp_path, workers=1)
    md = (tmp_path / SC / "class_il.md").read_text(encoding="utf-8")
    assert md.splitlines()[0].startswith(f"# {SC}: class-incremental protocol (Class-IL)")
    assert "| joint (reference) | 3 |" in md
    assert "per-task accuracies" in md
    rows = read_csv(tmp_path / SC / "class_il.csv")
    assert {(r["strategy"], r["metric"]) for r in rows} == {
        (s, m) for s in ("ewc", "sgd", "joint")
        for m in ("last", "average_incremental", "forgetting", "rho", "task_il_last")}
    ewc = [r for r in recs if r["strategy"] == "ewc"]
    row = next(r for r in rows if r["strategy"] == "ewc" and r["metric"] == "last")
    assert float(row["mean"]) == pytest.approx(
        hand_ci([hand_last(r["agnostic_accuracy"]) for r in ewc])[0])
    curve = read_csv(tmp_path / SC / "class_il_vs_t.csv")
    assert len(curve) == 3 * 3
    point = next(r for r in curve if r["strategy"] == "ewc" and r["t"] == "2")
    assert float(point["mean"]) == pytest.approx(
        hand_ci([sum(r["agnostic_accuracy"][1]) / 2 for r in ewc])[0])


def test_without_joint_rho_reads_no_data_and_the_command_runs_the_class_protocol(tmp_path):
    recs = [r for r in class_records() if r["strategy"] != "joint"]
    result = build_report(recs, tmp_path, workers=1)
    cil = result.reports[SC].class_il
    assert cil.stats["ewc"]["rho"].n == 0 and cil.stats["ewc"]["last"].n == 3
    md = (tmp_path / SC / "class_il.md").read_text(encoding="utf-8")
    assert "| ewc | 3 |" in md and md.split("| ewc | 3 |")[1].split("\n")[0].count("–") == 1
    (what, m), = [(m.what, m) for _, m in result.missing]
    assert what.startswith("class-incremental protocol: ")
    assert "--strategies joint" in m.command and "--set scenario.protocol=class" in m.command
    assert "scenario.protocol=class" in result.index.read_text(encoding="utf-8")
    rows = read_csv(tmp_path / SC / "class_il.csv")
    rho = next(r for r in rows if r["strategy"] == "ewc" and r["metric"] == "rho")
    assert math.isnan(float(rho["mean"])) and rho["n_seeds"] == "0"


def test_diverged_and_unknown_protocol_records():
    recs = class_records(("ewc", "joint"), (0, 1))
    bad = dict(make_class_record(SC, "sgd", 0, 3), diverged=True)
    other = make_record(SC, "ewc", 5, 3, params={"scenario": {"protocol": "domain"}})
    other["_source"] = "other.json"
    rep = compute_report([*recs, bad, other])[SC]
    assert rep.class_il.diverged == {"sgd": [0]} and "sgd" not in rep.class_il.stats
    assert rep.class_il.only_diverged() == ["sgd"]
    assert any(n.startswith("class-incremental protocol: sgd") for n in rep.notes)
    assert any("other.json: protocol 'domain'" in n for n in rep.notes)
    assert 5 not in rep.class_il.seeds["ewc"] and not rep.summary  # left out of both


def test_malformed_class_matrix_is_noted_not_fatal():
    recs = class_records(("ewc", "joint"), (0, 1))
    recs[0] = dict(recs[0], agnostic_accuracy=[[0.5], [0.5]], _source="bad.json")
    rep = compute_report(recs)[SC]
    cil = rep.class_il
    assert cil.stats["ewc"]["last"].n == 1  # the other seed
    assert cil.stats["ewc"]["task_il_last"].n == 2
    assert [st.n for st in cil.curve["ewc"]] == [1, 1, 1]
    assert any("bad.json: malformed agnostic_accuracy" in n for n in rep.notes)


def test_tagged_class_records_alone_give_no_class_table():
    """Grid points of a class-protocol `tune` (tagged records) are no Class-IL table."""
    recs = [make_class_record(SC, "ewc", 0, 3, tag="ewc.lambda=10")]
    assert compute_report(recs)[SC].class_il is None
