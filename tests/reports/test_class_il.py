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
    recs = class_records(("ewc", "hat", "joint", "single"))
    # hat predicts by task inference; single has no class records
    assert {r["strategy"] for r in recs} == {"ewc", "hat", "joint"}
    for r in recs:
        validate(r, strict=True)
        assert r["params"]["scenario"] == {"protocol": "class"}
        keys = ["agnostic_accuracy", "valid_agnostic_accuracy", "agnostic_random_accuracy"]
        assert ("task_inference" in r) == (r["strategy"] == "hat")
        if r["strategy"] == "hat":
            keys.append("task_prediction_accuracy")
        for key in keys:
            assert [len(row) for row in r[key]] == [1, 2, 3], key
    assert make_agnostic_random(3, 2) == [[0.5], [0.25, 0.25], [1 / 6] * 3]
    with pytest.raises(ValueError, match="no class-incremental records"):
        make_class_record(SC, "single", 0, 3)
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
        if p.suffix != ".pdf" and p not in (before.index, before.page):
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
        for m in ("last", "average_incremental", "forgetting", "rho", "task_il_last",
                  "task_prediction")}
    # no strategy predicts by task inference: its column is not shown, its rows hold no value
    assert "task prediction" not in md
    assert all(r["n_seeds"] == "0" for r in rows if r["metric"] == "task_prediction")
    assert not list(tmp_path.glob(f"{SC}/task_inference*"))
    assert not list(tmp_path.glob(f"{SC}/class_il_loss*"))
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


# --- task inference (hat, packnet, pnn, pathnet) ---------------------------------------------

TI_FILES = ["task_inference.md", "task_inference.csv", "class_il_loss.png",
            "class_il_loss.pdf", "class_il_loss.csv"]


def hand_mean_auroc(values):
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals)


def ti_records(seeds=SEEDS):
    return class_records(("hat", "packnet", "ewc", "joint"), seeds)


def test_task_prediction_column_equals_hand_computation():
    recs = ti_records()
    cil = compute_report(recs)[SC].class_il
    assert cil.has_task_prediction()
    for s in ("hat", "packnet"):
        runs = [r for r in recs if r["strategy"] == s]
        mean, half = hand_ci([hand_last(r["task_prediction_accuracy"]) for r in runs])
        assert cil.stats[s]["task_prediction"].mean == pytest.approx(mean)
        assert cil.stats[s]["task_prediction"].half == pytest.approx(half)
    assert cil.stats["ewc"]["task_prediction"].n == 0
    assert cil.stats["joint"]["task_prediction"].n == 0


def test_task_inference_table_equals_hand_computation():
    recs = ti_records()
    ti = compute_report(recs)[SC].class_il.task_inference
    assert ti.strategies == ["hat", "packnet"]
    assert ti.scores["hat"] == ["max_softmax", "max_logit", "energy", "neg_entropy"]
    for s in ti.strategies:
        runs = [r for r in recs if r["strategy"] == s]
        assert ti.seeds[s] == list(SEEDS)
        for score in ti.scores[s]:
            blocks = [r["task_inference"]["scores"][score] for r in runs]
            want = {
                "last": [hand_last(b["agnostic_accuracy"]) for b in blocks],
                "task_prediction": [hand_last(b["task_prediction_accuracy"]) for b in blocks],
                "auroc": [hand_mean_auroc(b["auroc"]) for b in blocks],
                "valid_criterion": [hand_last(b["valid_agnostic_accuracy"]) for b in blocks],
            }
            for m, values in want.items():
                mean, half = hand_ci(values)
                assert ti.stats[s][score][m].mean == pytest.approx(mean), (s, score, m)
                assert ti.stats[s][score][m].half == pytest.approx(half), (s, score, m)
            assert ti.chosen_by_all(s, score) == (score == "max_softmax")
    # the chosen score's numbers are the Class-IL table's
    cil = compute_report(recs)[SC].class_il
    for s in ti.strategies:
        assert ti.stats[s]["max_softmax"]["last"].mean == pytest.approx(
            cil.stats[s]["last"].mean)
        assert ti.stats[s]["max_softmax"]["task_prediction"].mean == pytest.approx(
            cil.stats[s]["task_prediction"].mean)


def test_task_inference_files_hold_the_numbers_and_mark_the_chosen_score(tmp_path):
    recs = ti_records()
    result = build_report(recs, tmp_path, workers=1)
    index = result.index.read_text(encoding="utf-8")
    for name in TI_FILES:
        p = tmp_path / SC / name
        assert p.is_file() and p.stat().st_size > 0, name
        assert f"{SC}/{name}" in index
        owners = [a.pattern for a in ARTIFACTS if fnmatch.fnmatch(name, a.pattern)]
        assert len(owners) == 1, (name, owners)
    assert (tmp_path / SC / "class_il_loss.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / SC / "task_inference.md").read_text(encoding="utf-8")
    assert md.splitlines()[0].startswith(f"# {SC}: class-incremental protocol: task inference")
    lines = [ln for ln in md.splitlines() if ln.startswith("| hat |")]
    assert len(lines) == 4
    assert lines[0].startswith("| hat | max_softmax | 3 |") and lines[0].endswith("| ✓ |")
    assert all(ln.endswith("|  |") for ln in lines[1:])
    rows = read_csv(tmp_path / SC / "task_inference.csv")
    assert len(rows) == 2 * 4 * 4
    hat = [r for r in recs if r["strategy"] == "hat"]
    row = next(r for r in rows if (r["strategy"], r["score"], r["metric"])
               == ("hat", "energy", "auroc"))
    assert float(row["mean"]) == pytest.approx(hand_ci(
        [hand_mean_auroc(r["task_inference"]["scores"]["energy"]["auroc"]) for r in hat])[0])
    assert (row["chosen"], row["n_chosen"], row["n_seeds"]) == ("0", "0", "3")
    chosen = {(r["strategy"], r["score"]) for r in rows if r["chosen"] == "1"}
    assert chosen == {("hat", "max_softmax"), ("packnet", "max_softmax")}
    loss = read_csv(tmp_path / SC / "class_il_loss.csv")
    assert [(r["strategy"], r["quantity"]) for r in loss] == [
        (s, q) for s in ("hat", "packnet") for q in ("task_il_last", "task_prediction", "last")]
    got = next(r for r in loss if (r["strategy"], r["quantity"]) == ("hat", "task_il_last"))
    assert float(got["mean"]) == pytest.approx(hand_ci([hand_last(r["accuracy"]) for r in hat])[0])
    cil_md = (tmp_path / SC / "class_il.md").read_text(encoding="utf-8")
    assert "task prediction (%)" in cil_md
    ewc = next(ln for ln in cil_md.splitlines() if ln.startswith("| ewc |"))
    assert ewc.endswith("| – |")


def test_seeds_that_chose_different_scores_are_noted(tmp_path):
    recs = [make_class_record(SC, "hat", 0, 3),
            make_class_record(SC, "hat", 1, 3, task_score="energy"),
            make_class_record(SC, "hat", 2, 3, task_score="energy")]
    ti = compute_report(recs)[SC].class_il.task_inference
    assert ti.chosen["hat"] == {"max_softmax": [0], "energy": [1, 2]}
    assert not any(ti.chosen_by_all("hat", sc) for sc in ti.scores["hat"])
    assert ti.notes == ["hat: the seeds' records chose different scores (max_softmax: seed(s) "
                        "0; energy: seed(s) 1,2); the mark names each score's seeds"]
    build_report(recs, tmp_path, workers=1)
    md = (tmp_path / SC / "task_inference.md").read_text(encoding="utf-8")
    assert "| hat | energy | 3 |" in md and "| ✓ seed(s) 1,2 |" in md
    assert "| ✓ seed(s) 0 |" in md and "chose different scores" in md
    rows = read_csv(tmp_path / SC / "task_inference.csv")
    assert {(r["score"], r["n_chosen"]) for r in rows} == {
        ("max_softmax", "1"), ("max_logit", "0"), ("energy", "2"), ("neg_entropy", "0")}


def test_task_inference_artifacts_need_untagged_records_holding_it(tmp_path):
    """Records without ``task_inference`` (older task-inference records, other strategies),
    tagged or diverged ones give no task-inference table and no loss figure; a later report
    without them removes the files."""
    old = [make_class_record(SC, "hat", sd, 3, task_inference=False) for sd in (0, 1)]
    tagged = [make_class_record(SC, "hat", 0, 3, tag="hat.c=0.5")]
    diverged = [dict(make_class_record(SC, "packnet", 0, 3), diverged=True)]
    others = class_records(("ewc", "joint"), (0, 1))
    rep = compute_report(old + tagged + diverged + others)[SC]
    assert rep.class_il.task_inference is None and not rep.class_il.has_task_prediction()
    build_report(ti_records((0, 1)), tmp_path, workers=1)
    assert all((tmp_path / SC / n).is_file() for n in TI_FILES)
    build_report(old + tagged + diverged + others, tmp_path, workers=1)
    assert not [n for n in TI_FILES if (tmp_path / SC / n).exists()]
    assert (tmp_path / SC / "class_il.md").is_file()


def test_task_files_stay_identical_next_to_task_inference_records(tmp_path):
    tasks = task_records()
    before = build_report(tasks, tmp_path / "a", workers=1)
    after = build_report(tasks + ti_records(), tmp_path / "b", workers=1)
    for p in before.files:  # PDFs carry a fresh id each time: compared by name only
        if p.suffix != ".pdf" and p not in (before.index, before.page):
            q = tmp_path / "b" / p.relative_to(tmp_path / "a")
            assert q.read_bytes() == p.read_bytes(), p.name
    assert {p.name for p in after.files} - {p.name for p in before.files} == {
        *CLASS_FILES, *TI_FILES}


def test_malformed_task_inference_is_noted_not_fatal():
    recs = ti_records((0, 1))
    bad = next(r for r in recs if r["strategy"] == "hat" and r["seed"] == 0)
    scores = dict(bad["task_inference"]["scores"])
    scores["energy"] = dict(scores["energy"], task_prediction_accuracy=[[1.0]])
    recs[recs.index(bad)] = dict(bad, task_inference={"score": "max_softmax", "scores": scores},
                                 task_prediction_accuracy=[[1.0], [0.5]], _source="bad.json")
    rep = compute_report(recs)[SC]
    ti, cil = rep.class_il.task_inference, rep.class_il
    assert ti.stats["hat"]["energy"]["task_prediction"].n == 1
    assert ti.stats["hat"]["energy"]["last"].n == 2
    assert cil.stats["hat"]["task_prediction"].n == 1 and cil.stats["hat"]["last"].n == 2
    assert any("bad.json: malformed task_prediction_accuracy" in n for n in rep.notes)
    assert any("bad.json: malformed task_inference score 'energy'" in n for n in rep.notes)
