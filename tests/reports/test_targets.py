"""The paper's numbers as checked targets: the targets file and its validation, the status of
a target measured from records (✅, ❌, not run, n/a), and the report's target lines."""

from __future__ import annotations

import csv
import html
import math
import shlex
from pathlib import Path

import pytest

from benchmark.data.scenarios import SCENARIOS
from reports.cli import main
from reports.load import load_records
from reports.synthetic import (
    make_class_record,
    make_hat_stats,
    make_record,
    synthetic_records,
    write_records,
)
from reports.targets import (
    COLUMNS,
    FAIL,
    NO_VALUE,
    NOT_RUN,
    PASS,
    TITLE,
    TargetsError,
    check_targets,
    line,
    load_targets,
    to_csv,
    to_html,
    to_markdown,
)
from strategies.registry import STRATEGIES
from tests.support.records import hand_ci, read_csv

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs" / "paper" / "targets.csv"
SEEDS = (0, 1, 2)


def num(x: float) -> str:
    """A number as a targets file spells it."""
    return repr(float(x))


def write_targets_file(path: Path, *rows: dict[str, str]) -> Path:
    """A targets file with the given rows (missing columns filled with working values)."""
    base = {"id": "t", "setup": "syn", "protocol": "task", "strategy": "hat",
            "metric": "rho_le_2", "published": "-0.02", "check": "ci", "tolerance": "0",
            "where": "", "source": "Table 1", "provenance": "paper",
            "command": "python -m benchmark run --scenario syn"}
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), lineterminator="\n")
        w.writeheader()
        for i, row in enumerate(rows):
            w.writerow({**base, "id": f"t{i}", **row})
    return path


def records_in(tmp_path: Path, records: list[dict]) -> list[dict]:
    """``records`` written to ``tmp_path/runs`` and read back as the report reads them."""
    write_records(tmp_path, records)
    return load_records(tmp_path)


def one(tmp_path: Path, records: list[dict], **row: str):
    """The result of one target (``row`` over the working defaults) on ``records``."""
    targets = load_targets(write_targets_file(tmp_path / "targets.csv", row))
    return check_targets(targets, records_in(tmp_path, records))[0]


def hand_rho(records: list[dict], strategy: str, t: int) -> list[float]:
    """ρ≤t per seed from the accuracy matrices by the paper's formula (no suite code)."""
    joint = {r["seed"]: r for r in records if r["strategy"] == "joint"}
    out = []
    for r in records:
        if r["strategy"] != strategy:
            continue
        j = joint[r["seed"]]
        rows = [(r["accuracy"][t - 1][u] - r["random_accuracy"][u])
                / (j["accuracy"][t - 1][u] - r["random_accuracy"][u]) - 1 for u in range(t)]
        out.append(sum(rows) / t)
    return out


# --- the shipped targets file -------------------------------------------------------------


def test_the_paper_targets_file_loads_and_names_what_exists():
    targets = load_targets(PAPER)
    assert len(targets) == len({t.id for t in targets}) >= 12
    for t in targets:
        assert t.setup in SCENARIOS, t.id
        assert t.strategy in STRATEGIES, t.id
        argv = shlex.split(t.command)
        assert argv[:4] == ["python", "-m", "benchmark", "run"], t.id
        if "--config" in argv:
            assert (ROOT / argv[argv.index("--config") + 1]).is_file(), t.id
    by_id = {t.id: t for t in targets}
    assert by_id["mixture-rho2-hat"].published == -0.02
    assert by_id["mixture-compression-hat"].check == "range"
    assert (by_id["mixture-compression-hat"].published,
            by_id["mixture-compression-hat"].high) == (0.01, 0.21)
    assert {t.protocol for t in targets} == {"task", "class"}


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "column", "fragment"),
    [
        ({"metric": "rho2"}, "metric", "unknown task-incremental metric 'rho2'"),
        ({"protocol": "domain"}, "protocol", "'domain'"),
        ({"protocol": "class", "metric": "rho_le_2"}, "metric", "class-incremental metric"),
        ({"published": "about 0.9"}, "published", "'about 0.9'"),
        ({"published": "nan"}, "published", "finite"),
        ({"check": "range"}, "published", "low..high"),
        ({"check": "range", "published": "0.3..0.1"}, "published", "above high"),
        ({"check": "close"}, "check", "'close'"),
        ({"tolerance": "-1"}, "tolerance", ">= 0"),
        ({"where": "family=mlp"}, "where", "section.key=value"),
        ({"metric": "reduction_le_2", "strategy": "ewc"}, "metric", "must be hat"),
        ({"metric": "weights_kept", "published": "0.1"}, "check", "use range"),
        ({"strategy": "joint"}, "metric", "reference"),
        ({"command": ""}, "command", "empty"),
    ],
)
def test_a_bad_cell_is_one_error_naming_file_row_and_column(tmp_path, row, column, fragment):
    path = write_targets_file(tmp_path / "t.csv", {}, row)
    with pytest.raises(TargetsError) as e:
        load_targets(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}, row 3, column {column}:"), msg
    assert fragment in msg


def test_header_problems_name_the_missing_and_unknown_columns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,setup,metirc\nx,y,z\n", encoding="utf-8")
    with pytest.raises(TargetsError, match=r"row 1 \(header\): missing column\(s\) protocol"):
        load_targets(path)
    assert "unknown column(s) metirc" in str(pytest.raises(TargetsError, load_targets, path).value)


def test_duplicate_ids_extra_fields_empty_and_missing_files_are_refused(tmp_path):
    dup = write_targets_file(tmp_path / "dup.csv", {"id": "a"}, {"id": "a"})
    with pytest.raises(TargetsError, match=r"row 3, column id: 'a' is already the id of row 2"):
        load_targets(dup)
    extra = write_targets_file(tmp_path / "extra.csv", {})
    extra.write_text(extra.read_text(encoding="utf-8") + ",".join(["x"] * 13) + "\n",
                     encoding="utf-8")
    with pytest.raises(TargetsError, match="row 3: more fields"):
        load_targets(extra)
    empty = tmp_path / "empty.csv"
    empty.write_text(",".join(COLUMNS) + "\n", encoding="utf-8")
    with pytest.raises(TargetsError, match="no targets"):
        load_targets(empty)
    with pytest.raises(TargetsError, match="cannot read the targets file .*absent.csv"):
        load_targets(tmp_path / "absent.csv")


# --- measuring ------------------------------------------------------------------------------


def test_rho_passes_when_the_ci_holds_the_published_value_and_fails_otherwise(tmp_path):
    recs = synthetic_records({"syn": 3}, ("hat", "ewc", "joint"), SEEDS)
    mean, half = hand_ci(hand_rho(recs, "ewc", 2))
    inside = one(tmp_path, recs, strategy="ewc", published=num(mean + 0.9 * half))
    assert inside.status == PASS
    assert inside.mean == pytest.approx(mean) and inside.half == pytest.approx(half)
    assert inside.n == 3 and inside.devices == ["cpu"]
    outside = one(tmp_path, recs, strategy="ewc", published=num(mean + 1.1 * half))
    assert outside.status == FAIL
    tolerated = one(tmp_path, recs, strategy="ewc", published=num(mean + 1.1 * half),
                    tolerance=num(0.2 * half))
    assert tolerated.status == PASS


def test_one_sided_checks(tmp_path):
    recs = synthetic_records({"syn": 3}, ("hat", "joint"), SEEDS)
    mean, half = hand_ci([sum(r["accuracy"][-1]) / 3 for r in recs if r["strategy"] == "hat"])
    above = num(mean + 2 * half)
    assert one(tmp_path, recs, metric="final_acc", published=above, check="at_most").status \
        == PASS
    assert one(tmp_path, recs, metric="final_acc", published=above, check="at_least").status \
        == FAIL


def test_a_single_seed_has_no_ci_and_is_judged_by_the_tolerance(tmp_path):
    recs = synthetic_records({"syn": 3}, ("hat", "joint"), (0,))
    acc = sum(recs[0]["accuracy"][-1]) / 3
    near = one(tmp_path, recs, metric="final_acc", published=num(acc + 0.004),
               tolerance="0.005")
    assert near.status == PASS and math.isnan(near.half) and near.ci_text() == "no CI (1 seed)"
    assert one(tmp_path, recs, metric="final_acc", published=num(acc + 0.006),
               tolerance="0.005").status == FAIL


@pytest.mark.parametrize(
    ("strategies", "row", "status", "reason"),
    [
        (("hat", "joint"), {"setup": "other"}, NOT_RUN, "no records of other"),
        (("hat", "joint"), {"strategy": "pnn"}, NOT_RUN, "no pnn records of syn"),
        (("hat",), {}, NOT_RUN, "no joint records of syn"),
        (("hat", "joint"), {"metric": "rho_le_9"}, NO_VALUE, "T = 3 tasks, fewer than 9"),
        (("hat", "joint"), {"metric": "fwt"}, NO_VALUE, "no single records"),
        (("hat", "joint"), {"protocol": "class", "metric": "last"}, NOT_RUN,
         "no class-incremental records of syn"),
        (("hat", "joint"), {"where": "model.family=resnet18"}, NOT_RUN,
         "records of syn exist but none has model.family=resnet18"),
        (("hat", "joint"), {"metric": "weights_kept", "check": "range",
                            "published": "0.01..0.21"}, NOT_RUN, "trained alone"),
    ],
)
def test_targets_without_the_records_they_need_say_why(tmp_path, strategies, row, status,
                                                         reason):
    res = one(tmp_path, synthetic_records({"syn": 3}, strategies, SEEDS), **row)
    assert res.status == status
    assert reason in res.reason
    text = line(res)
    assert text.startswith(f"{status} t0: ") and reason in text
    assert ("run: python -m benchmark run --scenario syn" in text) == (status == NOT_RUN)


def test_reduction_over_the_best_baseline(tmp_path):
    recs = synthetic_records({"syn": 3}, ("hat", "ewc", "joint"), SEEDS)
    hat = sum(hand_rho(recs, "hat", 3)) / 3
    ewc = sum(hand_rho(recs, "ewc", 3)) / 3
    expected = 100 * (1 - abs(hat) / abs(ewc))
    res = one(tmp_path, recs, metric="reduction_le_3", published=num(expected))
    assert res.status == PASS and res.mean == pytest.approx(expected)
    assert "no CI" in res.ci_text()
    assert line(res).endswith("; against ewc, the best baseline here")


def test_class_incremental_last_accuracy_with_a_where_filter(tmp_path):
    params = {"model": {"family": "resnet18"}, "hat": {}}
    recs = [make_class_record("syn", s, sd, 3, params=params) for s in ("hat", "joint")
            for sd in SEEDS]
    mean, half = hand_ci([sum(r["agnostic_accuracy"][-1]) / 3 for r in recs
                          if r["strategy"] == "hat"])
    res = one(tmp_path, recs, protocol="class", metric="last", published=num(mean),
              where="model.family=resnet18")
    assert res.status == PASS and res.mean == pytest.approx(mean)
    assert res.half == pytest.approx(half)
    other = one(tmp_path, recs, protocol="class", metric="last", published=num(mean),
                where="model.family=mlp")
    assert other.status == NOT_RUN


def test_a_task_target_on_class_records_only_is_not_run(tmp_path):
    recs = [make_class_record("syn", s, sd, 3) for s in ("hat", "joint") for sd in SEEDS]
    res = one(tmp_path, recs)
    assert res.status == NOT_RUN and res.reason == "no task-incremental records of syn"


def _alone(task: str, seed: int, kept: float) -> dict:
    hat = make_hat_stats(1, seed)
    hat["weights_kept"] = [kept]
    return make_record("mix", "hat", seed, 1, tag=f"scenario.task={task}", hat=hat,
                       params={"hat": {"c": 1.5}, "scenario": {"task": task}},
                       extra={"task_names": [task]})


def test_compression_range_holds_every_task_trained_alone(tmp_path):
    inside = [_alone("a", 0, 0.05), _alone("a", 1, 0.07), _alone("b", 0, 0.2)]
    row = {"setup": "mix", "metric": "weights_kept", "check": "range",
           "published": "0.01..0.21"}
    res = one(tmp_path, inside, **row)
    assert res.status == PASS
    assert res.values == pytest.approx([0.06, 0.2]) and res.n == 2
    assert res.measured_text() == "6.0 %..20.0 % over 2 task(s)"
    for p in (tmp_path / "runs").iterdir():
        p.unlink()
    assert one(tmp_path, [*inside, _alone("c", 0, 0.3)], **row).status == FAIL


# --- rendering and the command line ------------------------------------------------------


def test_markdown_csv_and_html_have_one_row_per_target(tmp_path):
    recs = records_in(tmp_path, synthetic_records({"syn": 3}, ("hat", "joint"), SEEDS))
    targets = load_targets(write_targets_file(
        tmp_path / "t.csv", {}, {"setup": "absent"}, {"source": "<Table & 1>"}))
    results = check_targets(targets, recs)
    md = to_markdown(results)
    assert md.count("\n| ") == 4  # the header and three rows
    rows = list(csv.DictReader(to_csv(results).splitlines()))
    assert [r["status"] for r in rows] == [results[0].status, NOT_RUN, results[2].status]
    assert rows[1]["measured"] == "nan" and float(rows[0]["measured"]) == results[0].mean
    page = to_html(results)
    assert page.count("<tr class=") == 3 and "&lt;Table &amp; 1&gt;" in page
    assert "<Table" not in page


def test_cli_prints_one_line_per_target_and_writes_them_into_the_report(tmp_path, capsys):
    write_records(tmp_path, synthetic_records({"syn": 3}, ("hat", "joint"), SEEDS))
    path = write_targets_file(tmp_path / "t.csv", {}, {"setup": "absent"})
    out = tmp_path / "report"
    code = main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1",
                 "--targets", str(path)])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0
    start = printed.index(f"targets of {path}:")
    lines = printed[start + 1:start + 3]
    expected = check_targets(load_targets(path), load_records(tmp_path))[0]
    mark = "✅" if expected.status == PASS else "❌"
    assert lines[0].startswith(f"  {mark} t0: syn hat ρ≤2 published -0.020, measured ")
    assert ", CI [" in lines[0] and "(3 seed(s), cpu" in lines[0]
    assert lines[1] == ("  not run t1: absent hat ρ≤2 published -0.020; no records of "
                        "absent; run: python -m benchmark run --scenario syn")
    assert [r["id"] for r in read_csv(out / "targets.csv")] == ["t0", "t1"]
    assert "| not run | t1 |" in (out / "targets.md").read_text(encoding="utf-8")
    page = (out / "index.html").read_text(encoding="utf-8")
    assert f"<h2>{html.escape(TITLE)}</h2>" in page and page.count('<tr class="target-') == 2
    # the same folder again without --targets: no target file or section is left from before
    assert main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1"]) == 0
    assert not (out / "targets.csv").exists() and not (out / "targets.md").exists()
    assert html.escape(TITLE) not in (out / "index.html").read_text(encoding="utf-8")


def test_cli_refuses_a_bad_targets_file_before_writing_anything(tmp_path, capsys):
    write_records(tmp_path, synthetic_records({"syn": 3}, ("hat", "joint"), SEEDS))
    path = write_targets_file(tmp_path / "t.csv", {"metric": "rho"})
    out = tmp_path / "report"
    code = main(["--results", str(tmp_path), "--out", str(out), "--jobs", "1",
                 "--targets", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {path}, row 2, column metric: unknown")
    assert not out.exists()


def test_a_targets_file_saved_with_a_byte_order_mark_loads(tmp_path):
    path = write_targets_file(tmp_path / "t.csv", {})
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert [t.id for t in load_targets(path)] == ["t0"]
