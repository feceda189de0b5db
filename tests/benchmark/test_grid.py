"""Tests of grid parsing, validation, expansion and tags (benchmark/grid.py) and of the CLI's
grid/preset merging and up-front validation (exit 2, one line, nothing written)."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmark import grid as gridlib
from benchmark.errors import BenchmarkError
from benchmark.experiment import experiments_for
from benchmark.records import record_name
from strategies import ConfigError
from tests.support.cli import plan_command, run_cli

pytestmark = pytest.mark.usefixtures("in_tmp")


# ----------------------------------------------------------------------------- expansion

SECTIONS = ["hat", "ewc", "lwf", "train", "model", "scenario"]
value_text = st.text("abcdefghijklmnopqrstuvwxyz0123456789.:-", min_size=1, max_size=5)
grids = st.dictionaries(
    st.tuples(st.sampled_from(SECTIONS), st.sampled_from(["a", "b", "c"])).map(
        lambda t: f"{t[0]}.{t[1]}"),
    st.lists(value_text, min_size=1, max_size=3, unique=True),
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(grid=grids,
       strategies=st.lists(st.sampled_from(["naive", "hat", "ewc", "joint"]), min_size=1,
                           max_size=4, unique=True),
       seeds=st.lists(st.integers(0, 9), min_size=1, max_size=3, unique=True))
def test_expand_is_the_product_with_one_tag_per_point(grid, strategies, seeds):
    base = {"train": {"lr": "0.01"}, "hat": {"anneal": "paper"}}
    frozen = copy.deepcopy(base)
    exps = gridlib.expand("split-digits", strategies, seeds, base, grid)
    assert base == frozen  # not mutated

    expected = 0
    for s in strategies:
        keys = [k for k in grid if k.split(".")[0] in ("train", "model", "scenario", s)]
        expected += len(seeds) * math.prod(len(grid[k]) for k in keys)
    assert len(exps) == expected == gridlib.grid_size(strategies, len(seeds), grid)

    # seeds outermost, then strategies in the given order
    order = [(e.seed, e.strategy) for e in exps]
    assert order == sorted(order, key=lambda p: (seeds.index(p[0]), strategies.index(p[1])))
    # every (strategy, seed, tag) once: one record file per point
    ids = [(e.strategy, e.seed, e.tag) for e in exps]
    assert len(set(ids)) == len(ids)
    assert len({record_name(e.scenario, e.strategy, e.seed, e.tag) for e in exps}) == len(ids)

    for e in exps:
        relevant = gridlib.keys_for(e.strategy, grid)
        if not relevant:  # nothing to vary: once per seed, untagged, the base overrides
            assert e.tag == "" and e.overrides == base
            continue
        # the tag is the point, keys sorted; the overrides hold the point's values
        pairs = [item.split("=", 1) for item in e.tag.split(",")]
        assert [k for k, _ in pairs] == sorted(relevant)
        for k, v in pairs:
            section, name = k.split(".")
            assert v in grid[k] and e.overrides[section][name] == v
        # keys of other strategies never leak into a run
        for k in set(grid) - set(relevant):
            section, name = k.split(".")
            assert e.overrides.get(section, {}).get(name) == base.get(section, {}).get(name)
        # fixed overrides not in the grid are kept
        assert e.overrides["train"]["lr"] == "0.01" or "train.lr" in relevant


@settings(max_examples=50, deadline=None)
@given(grid=grids)
def test_tags_do_not_depend_on_key_order(grid):
    reordered = dict(reversed(list(grid.items())))
    a = gridlib.expand("split-digits", ["hat", "naive"], [0], {}, grid)
    b = gridlib.expand("split-digits", ["hat", "naive"], [0], {}, reordered)
    assert sorted(e.tag for e in a) == sorted(e.tag for e in b)


def test_without_grid_expand_is_experiments_for():
    over = {"train": {"epochs": "2"}}
    assert gridlib.expand("split-digits", ["naive", "hat"], [0, 1], over) == experiments_for(
        "split-digits", ["naive", "hat"], [0, 1], over)


def test_hat_grid_tags_and_untagged_baselines():
    grid = gridlib.validate_grid({"hat.smax": ["25", "50"], "hat.c": ["0.1", "0.75"]})
    exps = gridlib.expand("split-digits", ["naive", "hat", "joint"], [0], {}, grid)
    assert [(e.strategy, e.tag) for e in exps] == [
        ("naive", ""),
        ("hat", "hat.c=0.1,hat.smax=25"),
        ("hat", "hat.c=0.1,hat.smax=50"),
        ("hat", "hat.c=0.75,hat.smax=25"),
        ("hat", "hat.c=0.75,hat.smax=50"),
        ("joint", ""),
    ]
    assert record_name("split-digits", "hat", 0, exps[1].tag) == (
        "split-digits__hat__s0__hat.c=0.1,hat.smax=25.json")


def test_shared_keys_vary_every_strategy():
    exps = gridlib.expand("split-digits", ["naive", "hat"], [3], {},
                          {"train.lr": ["0.01", "0.1"], "hat.smax": ["25"]})
    assert [(e.strategy, e.tag) for e in exps] == [
        ("naive", "train.lr=0.01"), ("naive", "train.lr=0.1"),
        ("hat", "hat.smax=25,train.lr=0.01"), ("hat", "hat.smax=25,train.lr=0.1")]


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("section,key,values,expected", [
    ("hat", "smax", ["25", "25.0", "2.5e1", 25, 25.0], "25"),
    ("hat", "c", ["0.1", 0.1, "1e-1"], "0.1"),
    ("hat", "soft_masks", ["true", "yes", True, "1"], "true"),
    ("train", "epochs", ["3", 3, "3e0"], "3"),
    ("hat", "embedding_init", ["uniform"], "uniform"),
    ("scenario", "task", ["digits:0-1"], "digits:0-1"),
])
def test_values_are_canonical(section, key, values, expected):
    assert {gridlib.canonical_value(section, key, v) for v in values} == {expected}


def test_format_value():
    assert [gridlib.format_value(v) for v in (400.0, 0.75, 1e-4, True, None, "x", 3)] == [
        "400", "0.75", "0.0001", "true", "none", "x", "3"]


@pytest.mark.parametrize("raw,error", [
    ({"hat.smax": ["25", "25.0"]}, BenchmarkError),
    ({"hat.smax": ["-1"]}, ConfigError),
    ({"hat.smax": ["abc"]}, ConfigError),
    ({"hat.nope": ["1"]}, ConfigError),
    ({"bogus.x": ["1"]}, BenchmarkError),
    ({"train.optimizer": ["sgd", "rmsprop"]}, ConfigError),
    ({"hat.smax": []}, BenchmarkError),
])
def test_validate_grid_refuses(raw, error):
    with pytest.raises(error):
        gridlib.validate_grid(raw)


@pytest.mark.parametrize("items", [["hat.smax"], ["hat.smax="], ["smax=1,2"], ["hat.smax=1,,2"],
                                   ["hat.smax=1", "hat.smax=2"], ["=1"]])
def test_parse_grid_refuses(items):
    with pytest.raises(BenchmarkError):
        gridlib.parse_grid(items)


def test_parse_grid():
    assert gridlib.parse_grid(["HAT.smax=25, 50", "train.lr=0.1"]) == {
        "hat.smax": ["25", "50"], "train.lr": ["0.1"]}


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("args,fragment", [
    (["--grid", "hat.smax=25,-1"], "hat.smax"),
    (["--grid", "hat.smax=abc"], "hat.smax"),
    (["--grid", "hat.nope=1"], "hat.nope"),
    (["--grid", "bogus.x=1,2"], "bogus"),
    (["--grid", "hat.smax"], "--grid"),
    (["--grid", "hat.smax=25,25.0"], "more than once"),
    (["--set", "hat.smax=3", "--grid", "hat.smax=25,50"], "hat.smax"),
    (["--grid", "scenario.task=digits:0-1,nope"], "nope"),
    (["--grid", "ewc.lambda=-"], "ewc.lambda"),
    (["--jobs", "0"], "--jobs"),
    (["--jobs", "two"], "--jobs"),
])
def test_bad_grid_or_jobs_is_a_usage_error(tmp_path, capsys, in_tmp, args, fragment):
    out = tmp_path / "res"
    code = run_cli("--scenario", "split-digits", "--strategies", "naive,hat", *args,
                   "--out", out)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), captured.err
    assert fragment in lines[0]
    assert not out.exists() and list(in_tmp.iterdir()) == []


def test_preset_grid_and_command_line_layers(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({
        "scenario": "split-digits", "strategies": ["naive", "hat"], "seeds": "0-1",
        "set": {"hat.c": 1.5, "train.lr": 0.01},
        "grid": {"hat.smax": [25, 100.0], "train.epochs": "1,2"}, "jobs": 3,
        "out": str(tmp_path / "o")}))
    plan = plan_command("--config", preset)
    assert plan.jobs == 3
    assert plan.grid == {"hat.smax": ["25", "100"], "train.epochs": ["1", "2"]}
    assert len(plan.experiments) == 2 * (2 + 4)
    hat = [e for e in plan.experiments if e.strategy == "hat" and e.seed == 0]
    assert [e.tag for e in hat] == ["hat.smax=25,train.epochs=1", "hat.smax=25,train.epochs=2",
                                    "hat.smax=100,train.epochs=1",
                                    "hat.smax=100,train.epochs=2"]
    assert all(e.overrides["hat"]["c"] == "1.5" for e in hat)
    # the command line replaces the preset's entry per key: --grid for a fixed value, --set or
    # --epochs for a grid key
    plan = plan_command("--config", preset, "--grid", "hat.c=0.1,4", "--epochs", "3",
                        "--set", "hat.smax=50", "--jobs", "1")
    assert plan.jobs == 1 and plan.grid == {"hat.c": ["0.1", "4"]}
    hat = [e for e in plan.experiments if e.strategy == "hat" and e.seed == 0]
    assert [e.tag for e in hat] == ["hat.c=0.1", "hat.c=4"]
    assert all(e.overrides["hat"]["smax"] == "50" and e.overrides["train"]["epochs"] == "3"
               for e in hat)
    naive = [e for e in plan.experiments if e.strategy == "naive"]
    assert [e.tag for e in naive] == ["", ""]


@pytest.mark.parametrize("data,fragment", [
    ({"grid": ["hat.smax=1"]}, "grid"),
    ({"grid": {"hat.smax": []}}, "hat.smax"),
    ({"grid": {"hat.smax": [{"a": 1}]}}, "hat.smax"),
    ({"grid": {"hat.smax": [1, 2]}, "set": {"hat.smax": 3}}, "hat.smax"),
    ({"jobs": 0}, "jobs"),
    ({"jobs": "2"}, "jobs"),
])
def test_bad_preset_grid(tmp_path, capsys, in_tmp, data, fragment):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump(data))
    code = run_cli("--config", preset, "--out", tmp_path / "res")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "res").exists()


def test_strategy_grid_keys_of_strategies_not_run_are_validated_and_ignored():
    plan = plan_command("--strategies", "naive", "--grid", "hat.smax=25,50", "--out", "o")
    assert [(e.strategy, e.tag) for e in plan.experiments] == [("naive", "")]
    with pytest.raises(ConfigError):
        plan_command("--strategies", "naive", "--grid", "hat.smax=0", "--out", "o")
    assert not Path("o").exists()


def test_grid_point_count_matches_the_paper_robustness_grid():
    smax = ["25", "50", "100", "200", "400", "800"]
    c = ["0.1", "0.25", "0.5", "0.75", "1", "1.5", "2.5", "4"]
    exps = gridlib.expand("cifar", ["hat", "joint"], range(10), {},
                          {"hat.smax": smax, "hat.c": c})
    assert len(exps) == 10 * (48 + 1)
    tags = {e.tag for e in exps if e.strategy == "hat"}
    assert tags == {f"hat.c={a},hat.smax={b}" for a, b in itertools.product(c, smax)}


def test_a_fixed_task_to_train_alone_is_tagged():
    plan = plan_command("--strategies", "hat", "--set", "scenario.task=digits:2-3", "--out", "o")
    [exp] = plan.experiments
    assert exp.tag == "scenario.task=digits:2-3"
    assert exp.overrides["scenario"] == {"task": "digits:2-3"}
    with pytest.raises(BenchmarkError, match="digits:0-1"):
        plan_command("--set", "scenario.task=nope", "--out", "o")


# ----------------------------------------------------------------------------- run count


@pytest.mark.issue(28)
def test_a_grid_states_its_run_count_in_one_line(capsys):
    plan = plan_command("--strategies", "naive,hat", "--seeds", "0,1", "--grid",
                        "hat.smax=25,50", "--out", "o")
    assert len(plan.experiments) == 6
    assert capsys.readouterr().err.splitlines() == ["grid: 6 runs (naive 2, hat 4; 2 seeds)"]
    plan_command("--strategies", "naive,hat", "--out", "o")  # no grid: no count line
    assert capsys.readouterr().err == ""


@pytest.mark.issue(28)
def test_a_grid_above_the_bound_is_refused_before_its_points_are_built(
        tmp_path, capsys, in_tmp, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the points of a refused grid were built")

    monkeypatch.setattr(gridlib, "expand", never)
    values = ",".join(map(str, range(1, 300)))
    out = tmp_path / "res"
    code = run_cli("--strategies", "naive,hat", "--grid", f"hat.smax={values}",
                   f"hat.c={values}", "--out", out)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), lines
    n = 299 * 299 + 1
    for fragment in (f"{n} runs", f"more than {gridlib.MAX_GRID_RUNS}", f"--max-runs {n}"):
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists() and list(in_tmp.iterdir()) == []


@pytest.mark.issue(28)
def test_max_runs_sets_the_bound(capsys):
    grid = ["--strategies", "hat", "--grid", "hat.smax=25,50", "hat.c=0.5,1", "--out", "o"]
    with pytest.raises(BenchmarkError, match=r"4 runs .*more than 3 \(--max-runs\).*"
                                             r"--max-runs 4"):
        plan_command(*grid, "--max-runs", "3")
    assert len(plan_command(*grid, "--max-runs", "4").experiments) == 4
    for bad_value in ("0", "-2", "many"):
        with pytest.raises(BenchmarkError, match="--max-runs"):
            plan_command(*grid, "--max-runs", bad_value)
    assert not Path("o").exists()


@pytest.mark.issue(28)
def test_several_presets_share_one_bound(tmp_path):
    presets = []
    for name in ("split-digits", "permuted-digits"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"scenario": name, "strategies": ["hat"],
                                        "grid": {"hat.smax": [25, 50, 100]}}))
        presets += ["--config", path]
    with pytest.raises(BenchmarkError, match="the grid gives 6 runs, more than 5"):
        plan_command(*presets, "--max-runs", "5", "--out", "o")
    assert len(plan_command(*presets, "--max-runs", "6", "--out", "o").experiments) == 6
