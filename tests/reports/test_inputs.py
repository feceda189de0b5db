"""The report on awkward inputs: duplicate records, bad ``--out``/``--jobs``, the "missing"
commands, HAT's reduction against a baseline that hardly forgets, and diverged runs."""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import tempfile
from pathlib import Path

import pytest

from reports.cli import main
from reports.load import load_records
from reports.schema import is_diverged, record_problem
from reports.synthetic import make_record, synthetic_records, write_records
from reports.tables import compute_report
from tests.support.records import read_csv

SEEDS = (0, 1, 2)

pytestmark = pytest.mark.issue(15)


def final_acc(acc) -> float:
    return sum(acc[-1]) / len(acc[-1])


def report(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "report"
    return main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1", *extra]), out


def summary_row(out: Path, scenario: str, strategy: str, metric: str = "final_acc") -> dict:
    rows = read_csv(out / scenario / "summary.csv")
    return next(r for r in rows if r["strategy"] == strategy and r["metric"] == metric)


def files_under(p: Path) -> set[str]:
    return {str(q.relative_to(p)) for q in p.rglob("*")}


# --- duplicate records -------------------------------------------------------------------------


def _stray(rec: dict, **changes) -> dict:
    """A copy of ``rec`` whose results differ (a run that went badly)."""
    bad = json.loads(json.dumps(rec))
    bad["accuracy"][-1] = [0.1] * len(bad["accuracy"][-1])
    bad.update(changes)
    return bad


@pytest.mark.parametrize("stray_name", ["aaa_stray.json", "zzz_stray.json"])
def test_duplicates_with_equal_timestamps_are_left_out_whatever_their_file_names(
        tmp_path, capsys, stray_name):
    """The stray's file name sorting first or last made no difference to the rule: equal
    ``created``, different results -> the run is left out and listed with the rule."""
    records = synthetic_records({"d": 3}, ("naive", "joint"), SEEDS)
    write_records(tmp_path, records)
    good = next(r for r in records if r["strategy"] == "naive" and r["seed"] == 0)
    (tmp_path / "runs" / stray_name).write_text(json.dumps(_stray(good)), encoding="utf-8")
    rc, out = report(tmp_path)
    assert rc == 0
    row = summary_row(out, "d", "naive")
    kept = [final_acc(r["accuracy"]) for r in records
            if r["strategy"] == "naive" and r["seed"] != 0]
    assert row["n_seeds"] == "2"
    assert float(row["mean"]) == pytest.approx(statistics.fmean(kept))
    index = (out / "index.md").read_text(encoding="utf-8")
    dup = index.split("## Duplicate records", 1)[1].split("\n## ", 1)[0]
    assert "newest `created`" in dup and "file name" in dup  # the rule
    assert stray_name in dup and "d__naive__s0.json" in dup and "left out" in dup
    printed = capsys.readouterr().out
    assert any(line.startswith("duplicate: d:") and stray_name in line
               for line in printed.splitlines())


def test_of_duplicates_the_newest_is_used_and_listed(tmp_path):
    records = synthetic_records({"d": 3}, ("naive", "joint"), SEEDS)
    write_records(tmp_path, records)
    good = next(r for r in records if r["strategy"] == "naive" and r["seed"] == 0)
    newer = _stray(good, created="2030-01-01T00:00:00Z")
    (tmp_path / "runs" / "aaa_rerun.json").write_text(json.dumps(newer), encoding="utf-8")
    rc, out = report(tmp_path)
    assert rc == 0
    rest = [final_acc(r["accuracy"]) for r in records
            if r["strategy"] == "naive" and r["seed"] != 0]
    row = summary_row(out, "d", "naive")
    assert row["n_seeds"] == "3"
    assert float(row["mean"]) == pytest.approx(statistics.fmean(rest + [0.1]))
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "## Duplicate records" in index
    assert "using " + str(tmp_path / "runs" / "aaa_rerun.json") in index


def test_identical_copies_count_once_and_are_no_conflict(tmp_path):
    records = synthetic_records({"d": 3}, ("naive", "joint"), SEEDS)
    write_records(tmp_path, records)
    copy = dict(records[0], created="2031-01-01T00:00:00Z")  # same results, other time
    (tmp_path / "runs" / "copy.json").write_text(json.dumps(copy), encoding="utf-8")
    rc, out = report(tmp_path)
    assert rc == 0
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "## Duplicate records" not in index and "counted once" in index
    assert summary_row(out, "d", records[0]["strategy"])["n_seeds"] == "3"


# --- --out and --jobs --------------------------------------------------------------------------


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return err[0]


@pytest.mark.parametrize("sub", ["", "sub/report"])
def test_out_that_is_a_file_is_one_line_exit_2_nothing_written(tmp_path, capsys, sub):
    write_records(tmp_path, synthetic_records({"s": 2}, ("hat", "joint"), (0, 1)))
    target = tmp_path / "taken.txt"
    target.write_text("keep me", encoding="utf-8")
    before = files_under(tmp_path)
    out = target / sub if sub else target
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 2
    line = _one_error_line(capsys)
    assert "taken.txt" in line and "--out" in line
    assert files_under(tmp_path) == before and target.read_text(encoding="utf-8") == "keep me"


def test_out_in_a_folder_that_refuses_writes_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """A read-only folder, simulated (the tests may run as root, whom chmod does not stop):
    creating any file under ``out`` fails with EACCES, as it would there."""
    write_records(tmp_path, synthetic_records({"s": 2}, ("hat", "joint"), (0, 1)))
    out = tmp_path / "ro"
    out.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(out.resolve()):
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 2
    line = _one_error_line(capsys)
    assert "not writable" in line and str(out) in line
    assert list(out.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder_is_one_line_exit_2(tmp_path, capsys):
    write_records(tmp_path, synthetic_records({"s": 2}, ("hat", "joint"), (0, 1)))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["--results", str(tmp_path), "--out", str(ro / "report")]) == 2
        assert "not writable" in _one_error_line(capsys)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_a_scenario_folder_that_is_a_file_is_refused_before_writing(tmp_path, capsys):
    write_records(tmp_path, synthetic_records({"s": 2, "t": 2}, ("hat", "joint"), (0, 1)))
    out = tmp_path / "report"
    out.mkdir()
    (out / "t").write_text("not a folder", encoding="utf-8")
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 2
    assert "is a file" in _one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["t"]  # nothing written for s either


@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_jobs_below_one_is_one_line_exit_2(tmp_path, capsys, jobs):
    write_records(tmp_path, synthetic_records({"s": 2}, ("hat", "joint"), (0, 1)))
    out = tmp_path / "report"
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", jobs]) == 2
    assert "--jobs" in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.issue(28)
@pytest.mark.parametrize("with_out", [False, True])
def test_results_that_is_a_file_is_named_as_such(tmp_path, capsys, with_out):
    """``--results`` given a file: the line blames --results (not the output folder) and says
    it must be the folder holding runs/."""
    target = tmp_path / "records.json"
    target.write_text("{}", encoding="utf-8")
    extra = ["--out", str(tmp_path / "report")] if with_out else []
    assert main(["--results", str(target), *extra, "--jobs", "1"]) == 2
    line = _one_error_line(capsys)
    assert f"--results {target} is a file" in line and "runs/" in line
    assert files_under(tmp_path) == {"records.json"}


# --- the "missing" commands --------------------------------------------------------------------


def _parse(cmd: str) -> list[dict]:
    """Each ``python -m benchmark run`` of a command line: its options, ``--set`` as a dict."""
    runs = []
    for part in cmd.split(" && "):
        words = shlex.split(part)
        assert words[:4] == ["python", "-m", "benchmark", "run"], part
        opts: dict = {"set": {}}
        key = None
        for w in words[4:]:
            if w.startswith("--"):
                key = w[2:]
                if key != "set":
                    opts[key] = None
            elif key == "set":
                k, _, v = w.partition("=")
                opts["set"][k] = v
            else:
                opts[key] = w
        runs.append(opts)
    return runs


def _params(strategy: str, own: dict, **train) -> dict:
    t = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0,
         "batch_size": 64, "epochs": 20, "recipe": "paper", "valid_fraction": 0.1,
         "patience": 5, "lr_factor": 3.0, "lr_min": 0.0001, "eval_batch_size": 256,
         "clipgrad": 10000.0}
    t.update(train)
    model = {"family": "mlp", "hidden": 50, "layers": 2, "dropout": 0.5, "input_dropout": 0.2}
    return {"train": t, "model": model, strategy: own}


HAT_OWN = {"smax": 200.0, "c": 0.75, "anneal": "reference", "soft_masks": False,
           "clipgrad": 10000.0, "thres_cosh": 50.0, "thres_emb": 6.0,
           "embedding_init": "normal", "flush_denormal": True}
EWC_OWN = {"lambda": 5000.0, "mode": "separate", "decay_factor": None}


def test_missing_commands_reproduce_out_epochs_and_every_set(tmp_path):
    """hat (3 seeds) and ewc (1 seed) on split-digits ran with 20 epochs, lr 0.01, 50 hidden
    units and smax 200 (ewc with clipgrad 1 by hand); no joint. The joint command takes the
    shared settings but not hat's/ewc's clipgrad; the ewc command takes ewc's own."""
    recs = [make_record("split-digits", "hat", sd, 3, params=_params("hat", HAT_OWN))
            for sd in SEEDS]
    recs.append(make_record("split-digits", "ewc", 0, 3,
                            params=_params("ewc", EWC_OWN, clipgrad=1.0)))
    for r in recs:  # trained on a GPU machine with 4 torch threads
        r.update(threads=4, device="cuda:0")
    write_records(tmp_path, recs)
    rep = compute_report(load_records(tmp_path))["split-digits"]
    by_what = {m.what.split(":")[0]: m.command for m in rep.missing if m.command}
    joint = _parse(by_what["no joint records"])
    assert len(joint) == 1
    assert joint[0]["strategies"] == "joint" and joint[0]["seeds"] == "0,1,2"
    assert joint[0]["out"] == str(tmp_path) and joint[0]["epochs"] == "20"
    assert joint[0]["set"] == {"train.lr": "0.01", "model.hidden": "50"}
    assert joint[0]["threads"] == "4" and joint[0]["device"] == "cuda:0"
    ewc = _parse(by_what["ewc"])
    assert len(ewc) == 1 and ewc[0]["strategies"] == "ewc" and ewc[0]["seeds"] == "1,2"
    assert ewc[0]["out"] == str(tmp_path) and ewc[0]["epochs"] == "20"
    assert ewc[0]["set"] == {"train.lr": "0.01", "model.hidden": "50", "train.clipgrad": "1"}


def test_missing_commands_group_strategies_by_settings_and_keep_the_preset():
    """Single seeds of hat (tuned preset, smax 200) and ewc (clipgrad 1): one command each,
    hat's with its preset so that its records carry the selection again."""
    sel = {"preset": "configs/tuned/split digits.yaml", "space": {"hat.smax": [200, 400]},
           "points": [{"params": {"hat.smax": 200}, "value": 0.9},
                      {"params": {"hat.smax": 400}, "value": 0.8}],
           "chosen": {"hat.smax": 200}}
    recs = [make_record("split-digits", "hat", 0, 3, params=_params("hat", HAT_OWN),
                        selection=sel),
            make_record("split-digits", "ewc", 0, 3, params=_params("ewc", EWC_OWN, clipgrad=1.0)),
            make_record("split-digits", "joint", 0, 3, params=_params("joint", {}))]
    for r in recs:
        r["_source"] = f"res/runs/{r['strategy']}.json"
    rep = compute_report(recs)["split-digits"]
    cmd = next(m.command for m in rep.missing if "single seed" in m.what)
    runs = {r["strategies"]: r for r in _parse(cmd)}
    assert set(runs) == {"hat", "ewc", "joint"}
    assert runs["hat"]["config"] == "configs/tuned/split digits.yaml"
    assert runs["hat"]["set"] == {"train.lr": "0.01", "model.hidden": "50", "hat.smax": "200"}
    assert "config" not in runs["ewc"] and runs["ewc"]["set"]["train.clipgrad"] == "1"
    assert runs["joint"]["set"] == {"train.lr": "0.01", "model.hidden": "50"}
    assert all(r["out"] == "res" and r["seeds"] == "1,2" for r in runs.values())
    assert not any("threads" in r or "device" in r for r in runs.values())  # 1 thread, cpu


def test_missing_commands_name_what_the_records_disagree_on():
    recs = [make_record("split-digits", "hat", sd, 3,
                        params=_params("hat", HAT_OWN, lr=0.01 * (sd + 1))) for sd in SEEDS]
    rep = compute_report(recs)["split-digits"]
    joint = _parse(next(m.command for m in rep.missing if "no joint" in m.what))[0]
    assert "train.lr" not in joint["set"] and "out" not in joint  # records not from files
    assert any("train.lr" in n and "disagree" in n for n in rep.notes)


# --- HAT's reduction against a baseline that hardly forgets ----------------------------------


def test_reduction_against_a_baseline_with_rho_about_0_gives_the_difference(tmp_path, capsys):
    joint = [[0.9, 0.5], [0.9, 0.9]]
    naive = [[0.9, 0.5], [0.89996, 0.9]]  # ρ≤2 = -0.00005: forgets almost nothing
    hat = [[0.9, 0.5], [0.8896, 0.9]]  # ρ≤2 = -0.013
    recs = []
    for sd in SEEDS:
        for s, acc in (("joint", joint), ("naive", naive), ("hat", hat)):
            recs.append(make_record("z", s, sd, 2, accuracy=acc))
    write_records(tmp_path, recs)
    rc, out = report(tmp_path)
    assert rc == 0
    rho_naive = ((0.89996 - 0.5) / 0.4 - 1 + 0.0) / 2
    rho_hat = ((0.8896 - 0.5) / 0.4 - 1 + 0.0) / 2
    (row,) = read_csv(out / "z" / "rho_reduction.csv")
    assert row["best_baseline"] == "naive" and row["measure"] == "difference"
    assert math.isnan(float(row["reduction_pct"]))
    assert float(row["reduction_abs"]) == pytest.approx(abs(rho_naive) - abs(rho_hat))
    md = (out / "z" / "rho_table.md").read_text(encoding="utf-8")
    red = next(line for line in md.splitlines() if line.startswith("| HAT reduction"))
    assert "Δ\\|ρ\\| -0.013" in red and "%" not in red  # a pipe in a cell is escaped
    assert "< 0.01" in md and "not meaningful" in md  # the rule, in the table's text
    tex = (out / "z" / "rho_table.tex").read_text(encoding="utf-8")
    assert "$\\Delta|\\rho|$ -0.013" in tex and "25900" not in tex
    printed = capsys.readouterr().out
    assert "Δ|ρ| -0.013" in printed and "25900" not in printed


def test_reduction_in_percent_when_the_baseline_forgets(tmp_path):
    recs = synthetic_records({"p": 3}, ("hat", "ewc", "joint"), SEEDS)
    write_records(tmp_path, recs)
    rc, out = report(tmp_path)
    assert rc == 0
    for row in read_csv(out / "p" / "rho_reduction.csv"):
        assert row["measure"] == "percent"
        rb, rh = abs(float(row["rho_baseline"])), abs(float(row["rho_hat"]))
        assert rb >= 0.01 and float(row["reduction_pct"]) == pytest.approx(100 * (1 - rh / rb))
        assert float(row["reduction_abs"]) == pytest.approx(rb - rh)


# --- diverged runs -----------------------------------------------------------------------------


def _diverged(rec: dict, style: str = "flag") -> dict:
    bad = json.loads(json.dumps(rec))
    n = len(bad["accuracy"])
    if style == "flag":  # what the runner writes: a flag and null for non-finite entries
        bad["diverged"] = True
        bad["accuracy"] = [[None] * n for _ in range(n)]
        bad["valid_accuracy"] = [[None] * n for _ in range(n)]
    else:  # older records: NaN tokens, no flag
        bad["accuracy"][-1] = [math.nan] * n
    return bad


def test_diverged_records_are_shown_as_diverged_and_left_out_of_the_means(tmp_path, capsys):
    recs = synthetic_records({"v": 3}, ("hat", "ewc", "sgd", "joint"), SEEDS, hat_stats=True)
    out_recs = []
    for r in recs:
        if r["strategy"] == "sgd" or (r["strategy"] == "hat" and r["seed"] == 2):
            r = _diverged(r)
        elif r["strategy"] == "ewc" and r["seed"] == 1:
            r = _diverged(r, style="nan")
        out_recs.append(r)
    runs = tmp_path / "runs"
    runs.mkdir()
    from reports.synthetic import record_filename
    for r in out_recs:
        (runs / record_filename(r)).write_text(json.dumps(r), encoding="utf-8")
    rc, out = report(tmp_path)
    assert rc == 0
    captured = capsys.readouterr()
    assert "skipping" not in captured.err  # read, not rejected
    assert "sgd: every run diverged" in captured.out
    by = {(r["strategy"], r["seed"]): r for r in recs}
    hat = summary_row(out, "v", "hat")
    assert hat["n_seeds"] == "2" and hat["n_diverged"] == "1"
    assert float(hat["mean"]) == pytest.approx(
        statistics.fmean(final_acc(by[("hat", sd)]["accuracy"]) for sd in (0, 1)))
    ewc = summary_row(out, "v", "ewc")
    assert ewc["n_seeds"] == "2" and ewc["n_diverged"] == "1"
    sgd = summary_row(out, "v", "sgd")
    assert sgd["n_seeds"] == "0" and sgd["n_diverged"] == "3" and math.isnan(float(sgd["mean"]))
    md = (out / "v" / "summary.md").read_text(encoding="utf-8")
    assert "| sgd | 0 (+3 diverged) | diverged | diverged | diverged |" in md
    assert "| hat | 2 (+1 diverged) |" in md
    assert "Diverged" in md and "left out of every mean" in md
    rho_md = (out / "v" / "rho_table.md").read_text(encoding="utf-8")
    assert "| sgd | diverged | diverged | 0 (+3 diverged) |" in rho_md
    rho = {(r["strategy"], r["t"]): r for r in read_csv(out / "v" / "rho_table.csv")}
    assert rho[("hat", "3")]["n_seeds"] == "2" and rho[("sgd", "3")]["n_diverged"] == "3"
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "diverged" in index and not (out / "v" / "acc_matrix_sgd.png").exists()
    cap = read_csv(out / "v" / "compression.csv")  # HAT statistics of the 2 finite runs
    hats = [by[("hat", sd)]["hat"] for sd in (0, 1)]
    assert float(cap[0]["weights_kept"]) == pytest.approx(
        statistics.fmean(h["weights_kept"][0] for h in hats))


def test_diverged_record_shapes():
    rec = make_record("s", "hat", 0, 3)
    flagged = _diverged(rec)
    assert record_problem(flagged, strict=False) is None and is_diverged(flagged)
    nan_accuracy = _diverged(rec, "nan")
    assert record_problem(nan_accuracy, strict=False) is None and is_diverged(nan_accuracy)
    assert record_problem(dict(flagged, diverged="yes"), strict=False) is not None
    unflagged_null = dict(flagged, diverged=False)  # nulls without the flag: not a record
    assert record_problem(unflagged_null, strict=False) is not None
    assert not is_diverged(unflagged_null)


def test_a_diverged_joint_leaves_its_seed_without_rho_and_says_so():
    recs = synthetic_records({"j": 3}, ("hat", "ewc", "joint"), SEEDS)
    recs = [_diverged(r) if r["strategy"] == "joint" and r["seed"] == 0 else r for r in recs]
    rep = compute_report([dict(r, _source="x") for r in recs])["j"]
    assert rep.rho["hat"][-1].n == 2
    assert any("joint diverged for seed(s) 0" in n for n in rep.notes)
    assert not any("no joint record" in m.what for m in rep.missing)
