"""Reading run records: validation, corrupt files, W&B, CLI errors, import boundary."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from reports import wandb_source
from reports.cli import main
from reports.load import RecordWarning, ReportError, load_records
from reports.schema import record_problem
from reports.synthetic import make_record, synthetic_records, write_records
from tests.support import ROOT


def _valid(**changes):
    rec = make_record("s", "hat", 0, 3)
    rec.update(changes)
    return rec


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"seed": True}, "seed"),
        ({"seed": "0"}, "seed"),
        ({"scenario": ""}, "scenario"),
        ({"schema": 3}, "schema"),
        ({"schema": True}, "schema"),
        ({"task_names": ["a", "b"]}, "accuracy"),  # T = 2 but a 3 × 3 matrix
        ({"accuracy": [[0.5, 0.5, 0.5]] * 2 + [[0.5, 0.5]]}, "accuracy"),
        ({"accuracy": [[0.5, 0.5, 1.5]] * 3}, "accuracy"),
        ({"accuracy": [[0.5, 0.5, None]] * 3}, "accuracy"),
        ({"random_accuracy": [0.5, 0.5]}, "random_accuracy"),
        ({"tag": None}, "tag"),
        ({"hat": {"layers": ["a"], "tasks": [0, 1, 2], "used": [[0.1, 0.2]]}}, "hat.used"),
        ({"hat": {"layers": ["a"], "tasks": [0, 1, 2], "weights_kept": [0.1]}}, "weights_kept"),
        ({"valid_accuracy": [[0.5, 0.5]] * 2}, "valid_accuracy"),
        ({"valid_accuracy": [[0.5, 0.5, 1.5]] * 3}, "valid_accuracy"),
        ({"selection": [1]}, "selection"),
        ({"selection": {"space": {}, "points": [], "chosen": {}}}, "selection.space"),
        ({"selection": {"space": {"a.x": 1}, "points": [], "chosen": {}}}, "selection.space"),
        ({"selection": {"space": {"a.x": [1]}, "points": [], "chosen": {"a.x": 1}}},
         "selection.points"),
        ({"selection": {"space": {"a.x": [1]}, "points": [{"params": {"a.y": 1}, "value": 0.5}],
                        "chosen": {"a.x": 1}}}, "selection.points"),
        ({"selection": {"space": {"a.x": [1]}, "points": [{"params": {"a.x": 1}, "value": "hi"}],
                        "chosen": {"a.x": 1}}}, "value"),
        ({"selection": {"space": {"a.x": [1]}, "points": [{"params": {"a.x": 1}}],
                        "chosen": {"a.x": 1}}}, "selection.points"),
        ({"selection": {"space": {"a.x": [1]}, "points": [{"params": {"a.x": 1}, "value": 0.5}],
                        "chosen": None}}, "selection.chosen"),
    ],
)
def test_record_problem_names_the_field(changes, reason):
    problem = record_problem(_valid(**changes), strict=False)
    assert problem is not None and reason in problem


def test_record_problem_accepts_a_complete_record_and_missing_optionals():
    assert record_problem(_valid(), strict=False) is None
    rec = _valid()
    for key in ("tag", "params", "hat", "history", "schema"):
        rec.pop(key)
    assert record_problem(rec, strict=False) is None
    no_acc = {k: v for k, v in rec.items() if k != "accuracy"}
    assert record_problem(no_acc, strict=False) == "missing field(s) accuracy"
    assert record_problem([1, 2], strict=False) == "not a JSON object"


def test_corrupt_and_foreign_files_are_skipped_with_one_warning_each(tmp_path, capsys):
    good = write_records(tmp_path, synthetic_records({"s": 3}, ("hat", "joint"), (0, 1)))
    runs = tmp_path / "runs"
    (runs / "broken.json").write_text('{"scenario": "s", "accuracy": [[', encoding="utf-8")
    (runs / "foreign.json").write_text(json.dumps({"name": "not a run record"}), encoding="utf-8")
    bad_shape = make_record("s", "ewc", 0, 3)
    bad_shape["accuracy"] = bad_shape["accuracy"][:2]
    (runs / "shape.json").write_text(json.dumps(bad_shape), encoding="utf-8")
    (runs / "notes.txt").write_text("ignored: not *.json", encoding="utf-8")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = load_records(tmp_path)
    assert len(records) == len(good)
    assert {r["_source"] for r in records} == {str(p) for p in good}
    msgs = [str(w.message) for w in caught if issubclass(w.category, RecordWarning)]
    assert len(msgs) == 3
    for name, why in (
        ("broken.json", "invalid JSON"),
        ("foreign.json", "not a run record"),
        ("shape.json", "accuracy"),
    ):
        hits = [m for m in msgs if name in m]
        assert len(hits) == 1 and why in hits[0] and "\n" not in hits[0]

    # the CLI prints each as one line and still writes the report
    assert main(["--results", str(tmp_path), "--jobs", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len([line for line in err if line.startswith("warning: skipping")]) == 3
    assert (tmp_path / "report" / "index.md").is_file()


def test_load_records_accepts_the_runs_folder_itself(tmp_path):
    write_records(tmp_path, synthetic_records({"s": 2}, ("hat",), (0,)))
    assert len(load_records(tmp_path / "runs")) == 1
    rec = load_records(tmp_path)[0]
    assert rec["tag"] == "" and rec["hat"] is None


def test_cli_without_records_exits_2_with_one_line(tmp_path, capsys):
    assert main(["--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no run records") and "benchmark" in err[0]
    assert not (tmp_path / "report").exists()


# --- W&B -------------------------------------------------------------------------------------


class FakeArtifact:
    def __init__(self, type_, files):
        self.type, self.files = type_, files

    def download(self, root):
        for name, text in self.files.items():
            (Path(root) / name).write_text(text, encoding="utf-8")
        return root


class FakeRun:
    def __init__(self, rid, summary=None, config=None, artifacts=()):
        self.id, self.path = rid, ["ent", "proj", rid]
        self.summary, self.config, self._arts = summary or {}, config or {}, list(artifacts)

    def logged_artifacts(self):
        return self._arts


class FakeApi:
    def __init__(self, runs):
        self._runs = runs

    def runs(self, path):
        assert path == "ent/proj"
        return self._runs


def test_wandb_records_from_artifact_summary_config(recwarn):
    r = [make_record("s", st, 0, 2) for st in ("hat", "ewc", "joint", "sgd")]
    runs = [
        FakeRun(
            "a",
            artifacts=[
                FakeArtifact("model", {"x.json": "{}"}),
                FakeArtifact("run-record", {"r.json": json.dumps(r[0])}),
            ],
        ),
        FakeRun("b", summary={"run_record": r[1]}),
        FakeRun("c", config={"run_record": json.dumps(r[2])}),
        FakeRun(
            "d",
            config={k: v for k, v in r[3].items() if k != "accuracy"},
            summary={"accuracy": r[3]["accuracy"]},
        ),
        FakeRun("e", summary={"loss": 0.1}),  # no record: skipped with a warning
        FakeRun("f", summary={"run_record": {"scenario": "s"}}),  # not a run record
    ]
    records = wandb_source.load_wandb_records("ent/proj", api=FakeApi(runs))
    assert [x["strategy"] for x in records] == ["hat", "ewc", "joint", "sgd"]
    assert records[0]["_source"] == "wandb:ent/proj/a"
    msgs = [str(w.message) for w in recwarn if issubclass(w.category, RecordWarning)]
    assert len(msgs) == 2
    assert any("ent/proj/e" in m and "no run record" in m for m in msgs)
    assert any("ent/proj/f" in m and "missing field" in m for m in msgs)


def test_wandb_bad_path_and_unreachable_api():
    with pytest.raises(ReportError, match="ENTITY/PROJECT"):
        wandb_source.load_wandb_records("no-slash", api=FakeApi([]))

    class DownApi:
        def runs(self, path):
            raise ConnectionError("Failed to resolve api.wandb.ai\nmore detail")

    with pytest.raises(ReportError) as e:
        wandb_source.load_wandb_records("ent/proj", api=DownApi())
    assert "Failed to resolve" in str(e.value) and "\n" not in str(e.value)


def test_cli_from_wandb_not_logged_in_exits_2(monkeypatch, capsys, tmp_path):
    def api(**kwargs):
        raise RuntimeError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=api))
    assert main(["--from-wandb", "ent/proj", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: cannot read W&B project 'ent/proj': No API key configured")


def test_cli_from_wandb_builds_a_report(monkeypatch, tmp_path):
    recs = synthetic_records({"w": 2}, ("hat", "joint"), (0,))
    runs = [FakeRun(str(i), summary={"run_record": r}) for i, r in enumerate(recs)]
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=lambda **kw: FakeApi(runs)))
    assert main(["--from-wandb", "ent/proj", "--out", str(tmp_path / "r"), "--jobs", "1"]) == 0
    assert (tmp_path / "r" / "w" / "rho_table.csv").is_file()


# --- boundary -----------------------------------------------------------------------------------


def test_reports_never_imports_torch_avalanche_or_benchmark():
    code = (
        "import sys, reports, reports.cli, reports.build, reports.figures, reports.wandb_source,"
        " reports.synthetic, reports.metrics\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'avalanche', 'benchmark',"
        " 'strategies', 'matplotlib', 'wandb')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    for path in (ROOT / "reports").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in ("torch", "avalanche", "benchmark", "strategies"):
            assert f"import {name}" not in text and f"from {name}" not in text, (path, name)


def test_a_selection_with_null_values_is_valid():
    """``tune`` writes ``none`` parameter values (e.g. ``ewc.decay_factor=none``) as null."""
    from reports.schema import selection_problem

    sel = {"space": {"ewc.decay_factor": [None, 0.5]},
           "points": [{"params": {"ewc.decay_factor": None}, "value": 0.8},
                      {"params": {"ewc.decay_factor": 0.5}, "value": 0.7}],
           "chosen": {"ewc.decay_factor": None}}
    assert selection_problem(sel) is None
    assert selection_problem({**sel, "chosen": {}}) is not None
