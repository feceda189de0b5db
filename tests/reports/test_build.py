"""The report end to end from synthetic run records: every file, and its numbers against values
computed here independently (plain Python, not reports.metrics)."""

from __future__ import annotations

import math
import re
import statistics

import pytest

from reports.cli import main
from reports.synthetic import make_record, synthetic_records, write_records
from tests.support.records import hand_ci, read_csv

SCENARIOS = {"syn-3": 3, "syn-5": 5}
STRATEGIES = ("hat", "ewc", "sgd", "joint")
SEEDS = (0, 1, 2)
GRID = ([25.0, 400.0], [0.1, 2.5])


# --- independent reference computations ---------------------------------------------------------


def hand_rho_curve(acc, joint, rnd):
    """rho^{<=t} for t = 1..T, straight from the paper's formula."""
    out = []
    for t in range(len(acc)):
        vals = [(acc[t][u] - rnd[u]) / (joint[t][u] - rnd[u]) - 1 for u in range(t + 1)]
        out.append(sum(vals) / len(vals))
    return out


def hand_final(acc):
    return sum(acc[-1]) / len(acc)


def hand_bwt(acc):
    n = len(acc)
    return sum(acc[-1][u] - acc[u][u] for u in range(n - 1)) / (n - 1)


def hand_forgetting(acc):
    n = len(acc)
    return sum(max(acc[t][u] for t in range(u, n - 1)) - acc[-1][u] for u in range(n - 1)) / (n - 1)


def by_key(records):
    return {(r["scenario"], r["strategy"], r["seed"], r["tag"]): r for r in records}


def assert_close(got: str, want: float, tol: float = 1e-9):
    if math.isnan(want):
        assert math.isnan(float(got)), f"expected nan, got {got}"
    else:
        assert float(got) == pytest.approx(want, abs=tol)


# --- the full report (rendered once for the module) ----------------------------------------------


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    records = synthetic_records(SCENARIOS, STRATEGIES, SEEDS, grid=GRID, hat_stats=True)
    write_records(root, records)
    out = root / "report"
    assert main(["--results", str(root), "--out", str(out)]) == 0  # figures in 2 processes
    return out, by_key(records)


SCENARIO_FILES = [
    "rho_table.md",
    "rho_table.tex",
    "rho_table.csv",
    "rho_reduction.csv",
    "rho_vs_t.png",
    "rho_vs_t.pdf",
    "rho_vs_t.csv",
    "summary.md",
    "summary.csv",
    "cost.png",
    "cost.pdf",
    "cost.csv",
    "robustness.png",
    "robustness.md",
    "robustness.csv",
    "capacity.png",
    "compression.png",
    "compression.md",
    "compression.csv",
    "hyperparameters.md",
    "hyperparameters.csv",
    "sensitivity.png",
    "sensitivity.pdf",
    "sensitivity.csv",
] + [f"acc_matrix_{s}.png" for s in STRATEGIES]


def test_every_file_is_written_and_indexed(full):
    out, _ = full
    index = (out / "index.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)]+)\)", index)
    for sc in SCENARIOS:
        for name in SCENARIO_FILES:
            p = out / sc / name
            assert p.is_file() and p.stat().st_size > 0, p
            assert f"{sc}/{name}" in links, f"{sc}/{name} not linked from index.md"
    for link in links:
        assert (out / link).is_file(), link
    assert (out / "syn-3" / "rho_vs_t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "syn-3" / "rho_vs_t.pdf").read_bytes()[:5] == b"%PDF-"
    assert "Missing" not in index  # nothing missing in a complete set
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


def _rho_seeds(recs, sc, strategy):
    return [
        hand_rho_curve(
            recs[(sc, strategy, sd, "")]["accuracy"],
            recs[(sc, "joint", sd, "")]["accuracy"],
            recs[(sc, strategy, sd, "")]["random_accuracy"],
        )
        for sd in SEEDS
    ]


def test_rho_csv_equals_hand_computation(full):
    out, recs = full
    for sc, n_tasks in SCENARIOS.items():
        table = read_csv(out / sc / "rho_table.csv")
        curve = read_csv(out / sc / "rho_vs_t.csv")
        assert {r["strategy"] for r in table} == {"hat", "ewc", "sgd"}  # no joint row
        assert sorted({int(r["t"]) for r in table}) == [2, n_tasks]
        assert len(curve) == 3 * n_tasks
        for row in table + curve:
            per_seed = _rho_seeds(recs, sc, row["strategy"])
            mean, half = hand_ci([c[int(row["t"]) - 1] for c in per_seed])
            assert_close(row["mean"], mean)
            assert_close(row["ci_half"], half)
            assert_close(row["ci_low"], mean - half)
            assert int(row["n_seeds"]) == 3


def test_reduction_csv_equals_hand_computation(full):
    out, recs = full
    for sc, n_tasks in SCENARIOS.items():
        rows = read_csv(out / sc / "rho_reduction.csv")
        assert [int(r["t"]) for r in rows] == [2, n_tasks]
        for row in rows:
            t = int(row["t"])
            mean = {
                s: statistics.fmean(c[t - 1] for c in _rho_seeds(recs, sc, s))
                for s in ("hat", "ewc", "sgd")
            }
            best = min(("ewc", "sgd"), key=lambda s: abs(mean[s]))
            assert row["best_baseline"] == best
            assert_close(row["rho_hat"], mean["hat"])
            assert_close(row["reduction_pct"], 100 * (1 - abs(mean["hat"]) / abs(mean[best])))


def test_table_marks_the_best_in_bold(full):
    out, recs = full
    md = (out / "syn-5" / "rho_table.md").read_text(encoding="utf-8")
    tex = (out / "syn-5" / "rho_table.tex").read_text(encoding="utf-8")
    hat_row = next(line for line in md.splitlines() if line.startswith("| hat |"))
    sgd_row = next(line for line in md.splitlines() if line.startswith("| sgd |"))
    assert hat_row.count("**") == 4 and "**" not in sgd_row  # synthetic hat forgets least
    assert "HAT reduction of forgetting" in md and "(vs ewc)" in md
    hat_tex = next(line for line in tex.splitlines() if line.startswith("hat &"))
    assert hat_tex.count("\\textbf{") == 2
    assert "\\begin{tabular}" in tex and "\\end{tabular}" in tex


def test_summary_csv_equals_hand_computation(full):
    out, recs = full
    funcs = {"final_acc": hand_final, "bwt": hand_bwt, "forgetting": hand_forgetting}
    rows = read_csv(out / "syn-5" / "summary.csv")
    assert len(rows) == len(STRATEGIES) * 10  # test_summary.py checks the other 7
    for row in rows:
        if row["metric"] not in funcs:
            continue
        vals = [
            funcs[row["metric"]](recs[("syn-5", row["strategy"], sd, "")]["accuracy"])
            for sd in SEEDS
        ]
        mean, half = hand_ci(vals)
        assert_close(row["mean"], mean)
        assert_close(row["ci_half"], half)


def test_robustness_csv_equals_hand_computation(full):
    out, recs = full
    rows = read_csv(out / "syn-3" / "robustness.csv")
    # the 2 × 2 tagged grid plus the untagged default hat (smax 400, c 0.75)
    assert {(float(r["smax"]), float(r["c"])) for r in rows} == {
        (25.0, 0.1),
        (25.0, 2.5),
        (400.0, 0.1),
        (400.0, 2.5),
        (400.0, 0.75),
    }
    for row in rows:
        smax, c = float(row["smax"]), float(row["c"])
        tag = "" if c == 0.75 else f"hat.c={c:g},hat.smax={smax:g}"
        vals = [
            hand_rho_curve(
                recs[("syn-3", "hat", sd, tag)]["accuracy"],
                recs[("syn-3", "joint", sd, "")]["accuracy"],
                recs[("syn-3", "hat", sd, tag)]["random_accuracy"],
            )[-1]
            for sd in SEEDS
        ]
        assert row["metric"] == "rho"
        mean, half = hand_ci(vals)
        assert_close(row["mean"], mean)
        assert_close(row["ci_half"], half)
        assert_close(row["ci_low"], mean - half)  # the same columns as every other CSV
        assert_close(row["ci_high"], mean + half)


def test_compression_csv_equals_hand_computation(full):
    out, recs = full
    rows = read_csv(out / "syn-5" / "compression.csv")
    hats = [recs[("syn-5", "hat", sd, "")]["hat"] for sd in SEEDS]
    assert len(rows) == 5
    for j, row in enumerate(rows):
        for i, layer in enumerate(hats[0]["layers"]):
            assert_close(row[f"units_{layer}"], statistics.fmean(h["used"][i][j] for h in hats))
        assert_close(row["weights_kept"], statistics.fmean(h["weights_kept"][j] for h in hats))


# --- incomplete sets ---------------------------------------------------------------------------


def test_missing_joint_renders_the_rest_and_says_how(tmp_path, capsys):
    records = synthetic_records({"syn-3": 3}, ("hat", "ewc", "joint"), SEEDS)
    write_records(tmp_path, records)
    out = tmp_path / "report"
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    assert (out / "syn-3" / "rho_table.md").exists()
    # drop the joint records and report again into the same folder
    for p in (tmp_path / "runs").glob("*__joint__*.json"):
        p.unlink()
    capsys.readouterr()
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    d = out / "syn-3"
    assert not list(d.glob("rho_*"))  # stale rho files removed, none rendered
    for name in ("summary.md", "summary.csv", "acc_matrix_hat.png", "acc_matrix_ewc.png"):
        assert (d / name).is_file(), name
    assert not (d / "robustness.png").exists() and not (d / "capacity.png").exists()
    cmd = "python -m benchmark run --scenario syn-3 --strategies joint --seeds 0,1,2"
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "## Missing" in index and cmd in index and "rho_table" not in index
    missing_lines = [line for line in printed.splitlines() if line.startswith("missing:")]
    assert len(missing_lines) == 1 and cmd in missing_lines[0]


def test_single_seed_has_no_ci_and_says_how(tmp_path, capsys):
    write_records(tmp_path, synthetic_records({"one": 3}, ("hat", "ewc", "joint"), [0]))
    out = tmp_path / "report"
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    rows = read_csv(out / "one" / "rho_table.csv")
    assert rows and all(math.isnan(float(r["ci_half"])) and r["n_seeds"] == "1" for r in rows)
    assert all(not math.isnan(float(r["mean"])) for r in rows)
    assert "†" in (out / "one" / "rho_table.md").read_text(encoding="utf-8")
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "needs >= 2 seeds" in index
    # one command per set of settings: hat and ewc ran their tuned preset, ewc with another
    # clipgrad than its reference; each with the records' folder
    for s in ("hat", "ewc", "joint"):
        assert f"python -m benchmark run --scenario one --strategies {s} --seeds 1,2" in index
    assert index.count(f"--out {tmp_path}") == 3
    assert "needs >= 2 seeds" in capsys.readouterr().out


def test_grid_without_joint_shows_final_accuracy(tmp_path):
    records = synthetic_records({"g": 3}, ("hat",), SEEDS, grid=([50.0], [0.5, 1.0]))
    from reports.tables import compute_report

    rep = compute_report(records)["g"]
    assert rep.grid is not None and rep.grid.metric == "final_acc"
    cell = rep.grid.cells[(50.0, 0.5)]
    vals = [hand_final(r["accuracy"]) for r in records if r["tag"] == "hat.c=0.5,hat.smax=50"]
    assert cell.mean == pytest.approx(statistics.fmean(vals)) and cell.n == 3
    assert any("final accuracy, not rho" in m.what for m in rep.missing)


def test_no_grid_from_a_single_hat_setting():
    from reports.tables import compute_report

    rep = compute_report(synthetic_records({"g": 3}, ("hat", "joint"), SEEDS))["g"]
    assert rep.grid is None and rep.capacity is None


def test_records_of_another_length_are_left_out():
    from reports.tables import compute_report

    recs = synthetic_records({"s": 3}, ("hat", "joint"), SEEDS)
    recs.append(make_record("s", "ewc", 0, 4))
    rep = compute_report(recs)["s"]
    assert rep.n_tasks == 3 and "ewc" not in rep.strategies
    assert any("T = 4" in n for n in rep.notes)


def test_figures_and_text_files_get_the_usual_permissions(tmp_path):
    """Figures and text files go through one atomic writer: readable like any file the user
    creates (mkstemp alone would leave them 0600), and no temporary file is left."""
    import os

    import numpy as np

    from reports.figures import plot_acc_matrix
    from reports.io import write_text

    (tmp_path / "plain.txt").write_text("x")
    usual = (tmp_path / "plain.txt").stat().st_mode & 0o777
    text = write_text(tmp_path / "t.md", "hello\n")
    figs = plot_acc_matrix(np.eye(2), "m", tmp_path / "m.png")
    for path in [text, *figs]:
        assert path.stat().st_mode & 0o777 == usual, path
    assert sorted(os.listdir(tmp_path)) == ["m.png", "plain.txt", "t.md"]


def test_compression_uses_the_newest_of_duplicate_records_whatever_their_layers():
    """The layer list comes from the de-duplicated records: a newer duplicate with other
    layers replaces the older one instead of leaving no record (and crashing)."""
    from reports.tables.hat import compression

    def rec(created, layers):
        n = len(layers)
        return {"strategy": "hat", "seed": 0, "tag": "alone-a", "created": created,
                "_source": created, "task_names": ["a"],
                "hat": {"layers": layers, "used": [[0.5]] * n, "weights_kept": [0.25],
                        "units_kept": [0.5]}}

    notes: list[str] = []
    cap = compression([rec("2026-01-01", ["l1"]), rec("2026-02-01", ["l1", "l2"])], notes)
    assert cap is not None and cap.layers == ["l1", "l2"] and cap.tasks == ["a"] and cap.n == 1
    assert any("duplicate record" in n for n in notes)


def test_compression_takes_each_layers_kept_weights_from_the_record_when_given():
    """Residual networks: a layer's input gate is not the previous layer's, so the chain
    product of ``used`` is wrong there; the record's ``layer_weights_kept`` is used instead
    (older records without it keep the chain product)."""
    from reports.tables.hat import compression

    def rec(seed, given):
        hat = {"layers": ["conv1", "block.conv2", "block.shortcut"],
               "used": [[0.5], [0.25], [0.25]], "weights_kept": [0.1], "units_kept": [0.3]}
        if given:
            hat["layer_weights_kept"] = [[0.5], [0.0625], [0.125]]
        return {"strategy": "hat", "seed": seed, "tag": "alone-a", "created": "2026-01-01",
                "_source": str(seed), "task_names": ["a"], "hat": hat}

    cap = compression([rec(0, True)], [])
    assert cap.layer_weights_kept[:, 0].tolist() == [0.5, 0.0625, 0.125]
    chain = compression([rec(0, False)], [])
    assert chain.layer_weights_kept[:, 0].tolist() == [0.5, 0.125, 0.0625]


def test_every_file_of_the_report_belongs_to_one_artifact(tmp_path):
    """ARTIFACTS drives writing, index.md and stale-file removal: every written file matches
    exactly one artifact's pattern, and index.md links every file."""
    import fnmatch

    from reports.build import ARTIFACTS, build_report
    from reports.synthetic import synthetic_records

    recs = synthetic_records({"syn-3": 3}, ("hat", "ewc", "joint"), (0, 1), hat_stats=True,
                             costs=True, grid=([25.0, 400.0], [0.5, 2.5]))
    result = build_report(recs, tmp_path / "r", workers=1)
    index = result.index.read_text(encoding="utf-8")
    for p in result.files:
        if p in (result.index, result.page):
            continue
        owners = [a.pattern for a in ARTIFACTS if fnmatch.fnmatch(p.name, a.pattern)]
        assert len(owners) == 1, (p.name, owners)
        assert f"syn-3/{p.name}" in index
