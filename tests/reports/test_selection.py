"""Hyperparameter selection in the report: schema-2 records, the hyperparameter table, the
sensitivity figure and its CSV, against values written or computed here."""

from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path

import numpy as np
import pytest

from reports.cli import main
from reports.figures import log_axis, plot_sensitivity
from reports.load import RecordWarning, load_records
from reports.synthetic import make_accuracy, make_record, synthetic_records, write_records
from reports.tables import compute_report
from tests.support.records import read_csv

SEEDS = (0, 1)


def selection(space: dict, chosen: dict, values: dict[tuple, float], **extra) -> dict:
    """A selection block over ``space`` with criterion ``values[point]`` (point in key order)."""
    import itertools

    points = [
        {"params": dict(zip(space, combo, strict=True)), "value": values[combo]}
        for combo in itertools.product(*space.values())
    ]
    return {"preset": "configs/tuned/t.yaml", "criterion": "mean validation accuracy",
            "seeds": [0, 1], "epochs": 20, "suite": "0.1.0", "space": space,
            "points": points, "chosen": chosen, **extra}


HAT_SPACE = {"hat.smax": [25, 400], "hat.c": [0.1, 0.75]}
HAT_VALUES = {(25, 0.1): 0.81, (25, 0.75): 0.9, (400, 0.1): 0.88, (400, 0.75): 0.953}
EWC_SPACE = {"ewc.lambda": [1, 100, 10000, 1000000]}
EWC_VALUES = {(1,): 0.5, (100,): 0.7, (10000,): 0.91, (1000000,): 0.6}


def rec(strategy: str, seed: int, own: dict, *, train: dict | None = None, sel=None, **kw):
    params = {"train": train or {"lr": 0.05, "clipgrad": 10000.0}, strategy: own}
    return make_record("t", strategy, seed, 3, params=params, selection=sel,
                       valid_accuracy=make_accuracy(strategy, 3, seed, "valid"), **kw)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """hat and ewc selected on validation; sgd by hand; lwf's seeds disagree on alpha; si
    selected for one seed only; joint with another learning rate."""
    hat_sel = selection(HAT_SPACE, {"hat.smax": 400, "hat.c": 0.75}, HAT_VALUES)
    ewc_sel = selection(EWC_SPACE, {"ewc.lambda": 10000}, EWC_VALUES)
    si_sel = selection({"si.lambda": [1, 10]}, {"si.lambda": 10}, {(1,): 0.7, (10,): 0.8})
    records = []
    for sd in SEEDS:
        records += [
            rec("hat", sd, {"smax": 400.0, "c": 0.75}, sel=hat_sel),
            rec("ewc", sd, {"lambda": 10000.0}, sel=ewc_sel),
            rec("sgd", sd, {}),
            rec("lwf", sd, {"alpha": 1.0 + sd, "temperature": 2.0}),
            rec("si", sd, {"lambda": 10.0}, sel=si_sel if sd == 0 else None),
            rec("joint", sd, {}, train={"lr": 0.1, "clipgrad": 10000.0}),
        ]
    root = tmp_path_factory.mktemp("mixed")
    write_records(root, records)
    out = root / "report"
    assert main(["--results", str(root), "--out", str(out), "--jobs", "1"]) == 0
    return out / "t", {"hat": hat_sel, "ewc": ewc_sel}, out


def test_table_says_selected_only_for_strategies_whose_records_have_a_selection(mixed):
    d, _, _ = mixed
    rows = {r["strategy"]: r for r in read_csv(d / "hyperparameters.csv")}
    assert list(rows) == ["hat", "ewc", "lwf", "sgd", "si", "joint"]
    assert {s for s, r in rows.items() if r["selected"] == "true"} == {"hat", "ewc"}
    want = ("selected on validation (configs/tuned/t.yaml, seeds 0,1, ≤20 epochs, "
            "criterion value 0.953)")
    assert rows["hat"]["source"] == want and rows["hat"]["criterion_value"] == "0.953"
    assert rows["ewc"]["source"].endswith("criterion value 0.910)")
    assert rows["lwf"]["source"] == "defaults / set by hand (not selected)"
    # sgd and joint have no hyperparameters of their own: nothing to select
    assert rows["joint"]["source"] == rows["sgd"]["source"] == (
        "no hyperparameters of its own (nothing to select)")
    assert rows["si"]["source"] == "differs across seeds" and rows["si"]["selected"] == "false"
    # the values it ran with; seeds that disagree are not papered over
    assert (rows["hat"]["hat.smax"], rows["hat"]["hat.c"]) == ("400", "0.75")
    assert rows["ewc"]["ewc.lambda"] == "10000" and rows["ewc"]["hat.c"] == ""
    assert rows["lwf"]["lwf.alpha"] == "differs across seeds"
    assert rows["lwf"]["lwf.temperature"] == "2"
    assert all(r["train.clipgrad"] == "10000" for r in rows.values())
    # train.lr differs across strategies (joint 0.1): shown for every strategy
    assert rows["joint"]["train.lr"] == "0.1" and rows["sgd"]["train.lr"] == "0.05"

    md = (d / "hyperparameters.md").read_text(encoding="utf-8")
    lines = {line.split("|")[1].strip(): line for line in md.splitlines()
             if line.startswith("| ") and not line.startswith("| strategy")}
    for s, line in lines.items():
        assert ("selected on validation" in line) == (s in ("hat", "ewc")), line
    assert "hat.c=0.75, hat.smax=400, train.clipgrad=10000, train.lr=0.05" in lines["hat"]
    assert "lwf.alpha=differs across seeds" in lines["lwf"]


def test_sensitivity_csv_has_one_row_per_point_with_its_value(mixed):
    d, sels, out = mixed
    assert (d / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (d / "sensitivity.pdf").read_bytes()[:5] == b"%PDF-"
    rows = read_csv(d / "sensitivity.csv")
    # si: its newest record with a selection counts (seed 0's) -> drawn too
    assert [r["strategy"] for r in rows] == ["hat"] * 4 + ["ewc"] * 4 + ["si"] * 2
    for s in ("hat", "ewc"):
        want = {
            ",".join(f"{k}={v}" for k, v in sorted(p["params"].items())): p["value"]
            for p in sels[s]["points"]
        }
        got = {r["params"]: float(r["value"]) for r in rows if r["strategy"] == s}
        assert got == pytest.approx(want)
        chosen = [r["params"] for r in rows if r["strategy"] == s and r["chosen"] == "1"]
        assert chosen == [",".join(f"{k}={v}" for k, v in sorted(sels[s]["chosen"].items()))]
    assert all(r["n_seeds"] == "2" for r in rows)
    assert all(r["source"] == "selection: configs/tuned/t.yaml" for r in rows)
    index = (out / "index.md").read_text(encoding="utf-8")
    for name in ("sensitivity.png", "sensitivity.pdf", "sensitivity.csv", "hyperparameters.md",
                 "hyperparameters.csv"):
        assert f"(t/{name})" in index, name
    assert "benchmark tune" not in index  # a selection exists: nothing missing about it


def test_schema_1_and_2_records_load(tmp_path):
    new = make_record("s", "hat", 0, 2, valid_accuracy=[[0.9, 0.5], [0.8, 0.85]],
                      selection=selection({"hat.c": [0.1, 1]}, {"hat.c": 1},
                                          {(0.1,): 0.7, (1,): 0.8}))
    old = make_record("s", "hat", 1, 2)
    old["schema"] = 1
    for key in ("valid_accuracy", "selection"):
        old.pop(key)
    write_records(tmp_path, [new, old])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = {r["seed"]: r for r in load_records(tmp_path)}
    assert loaded[0]["schema"] == 2 and loaded[0]["valid_accuracy"] == [[0.9, 0.5], [0.8, 0.85]]
    assert loaded[0]["selection"]["chosen"] == {"hat.c": 1}
    assert loaded[1]["schema"] == 1
    assert loaded[1]["valid_accuracy"] is None and loaded[1]["selection"] is None


def test_a_corrupt_selection_is_skipped_with_one_warning(tmp_path):
    good = synthetic_records({"s": 3}, ("hat", "joint"), SEEDS)
    bad = make_record("s", "ewc", 0, 3)
    bad["selection"] = {"space": {"ewc.lambda": [1, 10]},
                        "points": [{"params": {"ewc.alpha": 1}, "value": 0.5}],
                        "chosen": {"ewc.lambda": 1}}
    write_records(tmp_path, [*good, bad])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = load_records(tmp_path)
    assert len(records) == len(good) and "ewc" not in {r["strategy"] for r in records}
    msgs = [str(w.message) for w in caught if issubclass(w.category, RecordWarning)]
    assert len(msgs) == 1
    assert "s__ewc__s0.json" in msgs[0] and "selection.points" in msgs[0]
    assert "\n" not in msgs[0]


def test_grid_records_with_valid_accuracy_give_the_sensitivity(tmp_path):
    """A folder written by `tune`: tagged grid records with valid_accuracy, no selection."""
    rng = np.random.default_rng(0)
    records, crit = [], {}
    for smax in (25, 400):
        for c in (0.1, 2.5):
            tag = f"hat.c={c:g},hat.smax={smax:g}"
            vals = []
            for sd in SEEDS:
                valid = np.round(rng.uniform(0.5, 1.0, (3, 3)), 4).tolist()
                vals.append(statistics.fmean(valid[-1]))
                records.append(make_record("g", "hat", sd, 3, tag=tag, valid_accuracy=valid,
                                           params={"hat": {"smax": smax, "c": c}}))
            crit[tag] = statistics.fmean(vals)
    records += [make_record("g", "joint", sd, 3) for sd in SEEDS]
    write_records(tmp_path, records)
    out = tmp_path / "report"
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    rows = read_csv(out / "g" / "sensitivity.csv")
    assert {r["params"]: float(r["value"]) for r in rows} == pytest.approx(crit)
    best = max(crit, key=crit.get)
    assert [r["params"] for r in rows if r["chosen"] == "1"] == [best]
    assert all(r["source"] == "tagged grid records" and r["n_seeds"] == "2" for r in rows)
    assert (out / "g" / "sensitivity.png").stat().st_size > 0
    # the grid records are not a selection: the table says so, with the command to run
    table = read_csv(out / "g" / "hyperparameters.csv")
    assert [r["strategy"] for r in table] == ["joint"] and table[0]["selected"] == "false"
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "`python -m benchmark tune --scenario g`" in index and "make tune" in index


def test_without_selection_the_index_says_how_and_stale_files_go(tmp_path, capsys):
    write_records(tmp_path, synthetic_records({"s": 2}, ("ewc", "joint"), SEEDS))
    out = tmp_path / "report"
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    assert (out / "s" / "sensitivity.png").is_file()
    write_records(tmp_path, synthetic_records({"s": 2}, ("ewc", "joint"), SEEDS, selected=()))
    capsys.readouterr()
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    assert not list((out / "s").glob("sensitivity.*"))  # stale figure removed
    rows = read_csv(out / "s" / "hyperparameters.csv")
    assert [r["source"] for r in rows] == ["defaults / set by hand (not selected)",
                                           "no hyperparameters of its own (nothing to select)"]
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "## Missing" in index and "`python -m benchmark tune --scenario s`" in index
    assert "make tune" in index and "sensitivity" not in index
    printed = capsys.readouterr().out
    assert any(line.startswith("missing: s: no record carries a hyperparameter selection")
               for line in printed.splitlines())


def test_disagreeing_selections_use_the_newest_record():
    old = selection({"hat.c": [0.1, 1]}, {"hat.c": 0.1}, {(0.1,): 0.9, (1,): 0.8})
    new = selection({"hat.c": [0.1, 1, 4]}, {"hat.c": 1}, {(0.1,): 0.7, (1,): 0.8, (4,): 0.6})
    recs = [make_record("s", "hat", 0, 2, selection=new, params={"hat": {"c": 1}}),
            make_record("s", "hat", 1, 2, selection=old, params={"hat": {"c": 1}})]
    recs[0]["created"], recs[1]["created"] = "2026-02-01T00:00:00Z", "2026-01-01T00:00:00Z"
    rep = compute_report(recs)["s"]
    (sens,) = rep.sensitivity
    assert sens.axes == [[0.1, 1.0, 4.0]] and sens.chosen == ("1",)
    assert any("disagree" in n for n in rep.notes)
    (row,) = rep.hyperparameters
    assert row.source == "differs across seeds" and not row.selected


def test_a_selection_that_disagrees_with_the_params_run_is_noted():
    sel = selection({"hat.c": [0.1, 1]}, {"hat.c": 0.1}, {(0.1,): 0.9, (1,): 0.8})
    recs = [make_record("s", "hat", sd, 2, selection=sel, params={"hat": {"c": 1}})
            for sd in SEEDS]
    rep = compute_report(recs)["s"]
    assert rep.hyperparameters[0].selected
    assert any("ran with hat.c=1, but its selection chose 0.1" in n for n in rep.notes)


def test_log_axis_only_over_more_than_two_decades():
    assert log_axis([1.0, 10.0, 1000.0])
    assert not log_axis([1.0, 100.0])  # exactly 2 decades
    assert not log_axis([0.0, 10.0, 1000.0]) and not log_axis([-1.0, 1000.0])
    assert not log_axis(["a", "b"]) and not log_axis([5.0])


def test_sensitivity_panels_for_one_two_three_keys_and_text_values(tmp_path):
    """Every panel kind draws, also with unknown (null) values and a string-valued key."""
    three = {"x.a": [1, 2], "x.b": [0.1, 1], "x.mode": ["fast", "slow"]}
    import itertools

    vals = {combo: 0.5 + 0.1 * k for k, combo in enumerate(itertools.product(*three.values()))}
    vals[(2, 1, "slow")] = None
    sels = {
        "x": selection(three, {"x.a": 1, "x.b": 1, "x.mode": "fast"}, vals),
        "ewc": selection(EWC_SPACE, {"ewc.lambda": 10000}, EWC_VALUES),
        "hat": selection(HAT_SPACE, {"hat.smax": 400, "hat.c": 0.75}, HAT_VALUES),
        "y": selection({"y.kind": ["a", "b"]}, {"y.kind": "b"}, {("a",): 0.6, ("b",): 0.7}),
    }
    recs = [make_record("p", s, 0, 2, selection=sel) for s, sel in sels.items()]
    rep = compute_report(recs)["p"]
    assert [s.strategy for s in rep.sensitivity] == ["hat", "ewc", "x", "y"]
    x = rep.sensitivity[2]
    assert x.keys == ["x.a", "x.b", "x.mode"] and math.isnan(x.value((2.0, 1.0, "slow")))
    paths = plot_sensitivity(rep.sensitivity, "p", [tmp_path / "s.png", tmp_path / "s.pdf"])
    assert [p.stat().st_size > 0 for p in paths] == [True, True]
    rows = {(r["strategy"], r["params"]): r["value"]
            for r in read_csv(_write_csv(tmp_path, rep))}
    assert len(rows) == 8 + 4 + 4 + 2 and rows[("x", "x.a=2,x.b=1,x.mode=slow")] == "nan"


def _write_csv(tmp_path: Path, rep) -> Path:
    from reports.io import write_text
    from reports.render import sensitivity_csv

    return write_text(tmp_path / "s.csv", sensitivity_csv(rep.sensitivity))


def test_selection_values_in_json_round_trip(tmp_path):
    """Points written by json with ints and floats mixed (400 vs 400.0) match their chosen."""
    sel = selection(HAT_SPACE, {"hat.smax": 400.0, "hat.c": 0.75}, HAT_VALUES)
    recs = [make_record("j", "hat", sd, 2, selection=json.loads(json.dumps(sel)),
                        params={"hat": {"smax": 400, "c": 0.75}}) for sd in SEEDS]
    rep = compute_report(recs)["j"]
    assert rep.hyperparameters[0].criterion_value == pytest.approx(0.953)
    assert rep.sensitivity[0].chosen == ("400", "0.75")
    assert not rep.notes
