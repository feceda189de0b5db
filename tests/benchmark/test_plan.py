"""One pool for several presets or scenarios (``make run``), longest runs first, and the
start-up helpers of the command-line processes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.errors import BenchmarkError
from benchmark.experiment import Experiment
from benchmark.run import workers
from benchmark.run.executors import expected_cost, longest_first
from tests.support import ROOT
from tests.support.cli import plan_command

TUNED = sorted((ROOT / "configs" / "tuned").glob("*.yaml"))


def test_several_presets_make_one_plan_with_each_presets_runs(tmp_path):
    assert len(TUNED) >= 2
    argv = [a for p in TUNED for a in ("--config", p)]
    plan = plan_command(*argv, "--seeds", "0,1", "--jobs", "2", "--out", tmp_path)
    singles = [plan_command("--config", p, "--seeds", "0,1", "--jobs", "2", "--out", tmp_path)
               for p in TUNED]
    assert plan.experiments == [e for s in singles for e in s.experiments]
    assert plan.jobs == 2 and plan.out == tmp_path
    # each run keeps its own preset's values and selection block
    for single in singles:
        assert all(e in plan.experiments for e in single.experiments)
    assert {e.scenario for e in plan.experiments} == {
        yaml.safe_load(p.read_text())["scenario"] for p in TUNED}


def test_comma_separated_scenarios_make_one_plan(tmp_path):
    plan = plan_command("--scenario", "split-digits,permuted-digits", "--strategies",
                        "naive,hat", "--out", tmp_path)
    assert [(e.scenario, e.strategy) for e in plan.experiments] == [
        ("split-digits", "naive"), ("split-digits", "hat"),
        ("permuted-digits", "naive"), ("permuted-digits", "hat")]


@pytest.mark.parametrize("argv, words", [
    (["--scenario", "split-digits,split-digits"], "give each scenario once"),
    (["--scenario", "split-digits,nope"], "unknown scenario 'nope'"),
])
def test_bad_scenario_lists_are_one_clear_error(tmp_path, argv, words):
    with pytest.raises(BenchmarkError, match=words):
        plan_command(*argv, "--out", tmp_path)


def test_presets_that_disagree_or_overlap_are_refused(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump({"scenario": "split-digits", "strategies": ["naive"]}))
    b.write_text(yaml.safe_dump({"scenario": "permuted-digits", "strategies": ["naive"],
                                 "out": str(tmp_path / "elsewhere")}))
    with pytest.raises(BenchmarkError, match="give one out for all"):
        plan_command("--config", a, "--config", b)
    with pytest.raises(BenchmarkError, match="both run naive seed 0 on split-digits"):
        plan_command("--config", a, "--config", a, "--out", tmp_path)
    with pytest.raises(BenchmarkError, match="drop --scenario"):
        plan_command("--config", a, "--config", b, "--scenario", "split-digits", "--out", tmp_path)


def test_longest_runs_go_first():
    exps = [Experiment(sc, st, 0) for sc in ("split-digits", "permuted-digits")
            for st in ("naive", "joint", "hat")]
    order = [e for e, _ in longest_first([(e, Path(f"{i}")) for i, e in enumerate(exps)])]
    costs = [expected_cost(e) for e in order]
    assert costs == sorted(costs, reverse=True)
    assert order[0].strategy == "joint"
    assert expected_cost(Experiment("split-digits", "joint", 0)) > expected_cost(
        Experiment("split-digits", "hat", 0))


@pytest.mark.parametrize("argv, jobs", [
    (["run", "--jobs", "3"], 3), (["run", "--jobs=2"], 2), (["run"], 1),
    (["run", "--jobs", "x"], 1)])
def test_jobs_are_read_before_the_parser(argv, jobs):
    assert workers._jobs(argv) == jobs


def test_the_command_line_marks_unused_solvers_absent():
    """In a fresh process (this one may have imported jax already)."""
    import subprocess
    import sys

    code = ("import benchmark.run.workers\n"
            "for name in ('jax', 'jaxopt'):\n"
            "    try:\n"
            "        __import__(name)\n"
            "    except ImportError:\n"
            "        print(name, 'absent')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.split("\n")[:2] == ["jax absent", "jaxopt absent"]
