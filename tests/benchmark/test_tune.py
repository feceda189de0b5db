"""Hyperparameter selection on validation data (benchmark/tuning.py, ``python -m benchmark tune``)
and the presets it writes (``run --config``)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from benchmark import cli
from benchmark import tuning as tune
from benchmark.data.scenarios import SCENARIOS, get_scenario
from benchmark.experiment import Experiment, resolve
from benchmark.grid import canonical_value
from benchmark.records import read_record
from reports.metrics import agnostic_final_accuracy, validation_criterion
from strategies import STRATEGIES, ConfigError


def _matrix(last_row: list[float]) -> list[list[float]]:
    n = len(last_row)
    return [[0.5] * n for _ in range(n - 1)] + [list(last_row)]


def test_select_takes_the_best_mean_over_seeds():
    space = {"ewc.lambda": ["1", "100"]}
    valid = {"ewc.lambda=1": [_matrix([0.9, 0.5]), _matrix([0.9, 0.9])],   # 0.7, 0.9 -> 0.8
             "ewc.lambda=100": [_matrix([0.8, 0.8]), _matrix([0.8, 0.8])]}  # 0.8 -> 0.8 + 0
    valid["ewc.lambda=100"][1] = _matrix([0.9, 0.8])                        # 0.85 -> 0.825
    sel = tune.select("ewc", space, valid)
    assert sel.chosen == {"ewc.lambda": "100"}
    assert sel.value == pytest.approx(0.825)
    assert [v for _, v in sel.points] == pytest.approx([0.8, 0.825])


def test_ties_go_to_the_default_then_to_the_first_point():
    # ewc's default lambda is 5000
    tied = {"ewc.lambda=10": [_matrix([0.8, 0.8])], "ewc.lambda=5000": [_matrix([0.8, 0.8])],
            "ewc.lambda=100": [_matrix([0.8, 0.8])]}
    space = {"ewc.lambda": ["10", "100", "5000"]}
    assert tune.select("ewc", space, tied).chosen == {"ewc.lambda": "5000"}
    space = {"ewc.lambda": ["100", "10"]}
    assert tune.select("ewc", space, tied).chosen == {"ewc.lambda": "100"}


@pytest.mark.parametrize("best, warned", [("1000", True), ("1", True), ("100", False)])
def test_a_choice_at_an_end_of_its_searched_range_is_warned_about(best, warned):
    space = {"ewc.lambda": ["1", "10", "100", "1000"]}
    valid = {f"ewc.lambda={v}": [_matrix([0.9 if v == best else 0.6] * 2)]
             for v in space["ewc.lambda"]}
    sel = tune.select("ewc", space, valid)
    assert sel.chosen == {"ewc.lambda": best}
    lines = tune.edge_warnings(sel)
    if not warned:
        assert lines == []
        return
    side = "largest" if best == "1000" else "smallest"
    assert lines == [f"warning: ewc selected ewc.lambda={best}, the {side} of 1..1000 (its "
                     "searched range): the optimum may lie outside it; widen the range with "
                     "--grid ewc.lambda=<values> to know"]
    # two values: every choice is an end, nothing said
    two = {"ewc.lambda": ["1", "10"]}
    assert tune.edge_warnings(tune.select("ewc", two, valid)) == []


def test_a_point_without_validation_data_is_refused():
    with pytest.raises(Exception, match="no validation accuracy"):
        tune.select("ewc", {"ewc.lambda": ["1"]}, {"ewc.lambda=1": [None]})


def test_every_search_space_is_valid_and_holds_the_default():
    for spec in STRATEGIES.values():
        defaults = spec.defaults()
        for key, values in spec.space.items():
            canon = [canonical_value(spec.name, key, v) for v in values]  # type and range
            assert len(set(canon)) == len(canon), (spec.name, key)
            assert list(values) == sorted(values), (spec.name, key)
            assert canonical_value(spec.name, key, defaults[key]) in canon, (spec.name, key)
    tunable = {s for s in STRATEGIES if STRATEGIES[s].space}
    # memory budgets (icarl, gdumb: their only parameter) are held equal, never selected
    assert tunable == {"ewc", "lwf", "si", "hat", "imm-mean", "imm-mode", "lfl", "pathnet",
                       "packnet", "replay", "agem", "der", "er-ace"}
    # the reference code's grids
    assert len(tune.space_points(tune.default_space("hat"))) == 48
    assert len(tune.space_points(tune.default_space("lwf"))) == 28


def _exp(strategy, **over):
    return Experiment("split-digits", strategy, 0, over)


def _resolve(exp):
    spec = get_scenario(exp.scenario)
    return resolve(exp, spec.valid_fraction, spec.embedded, spec.network)


def test_clipgrad_defaults_to_each_strategy_reference_value():
    assert _resolve(_exp("ewc")).train.clipgrad == 100
    assert _resolve(_exp("lwf")).train.clipgrad == 100
    assert _resolve(_exp("lfl")).train.clipgrad == 200
    assert _resolve(_exp("naive")).train.clipgrad == 10000
    hat = _resolve(_exp("hat"))
    assert hat.train.clipgrad == hat.strategy.clipgrad == 10000
    assert _resolve(_exp("ewc", train={"clipgrad": "5"})).train.clipgrad == 5
    hat = _resolve(_exp("hat", train={"clipgrad": "7"}))  # HAT clips in its own plugin
    assert hat.strategy.clipgrad == hat.train.clipgrad == 7
    with pytest.raises(ConfigError, match="disagree"):
        _resolve(_exp("hat", train={"clipgrad": "7"}, hat={"clipgrad": "8"}))
    for bad in ("0", "-1", "inf", "nan"):
        with pytest.raises(ConfigError, match="train.clipgrad"):
            _resolve(_exp("ewc", train={"clipgrad": bad}))


def test_the_runner_clips_with_the_strategy_bound(monkeypatch, one_thread):
    from benchmark.run import runner
    from strategies.training.clipping import GradientClipPlugin

    seen = []
    orig = GradientClipPlugin.before_update

    def spy(self, strategy, **kw):
        seen.append((self.max_norm, strategy.plugins[-1] is self))
        return orig(self, strategy, **kw)

    monkeypatch.setattr(GradientClipPlugin, "before_update", spy)
    scen = get_scenario("split-digits").build(0)
    scen = dataclasses.replace(scen, tasks=scen.tasks[:2])
    runner.run_experiment(_exp("ewc", train={"epochs": "1"}), scen)
    assert seen and set(seen) == {(100.0, True)}
    seen.clear()
    runner.run_experiment(_exp("hat", train={"epochs": "1"}), scen)
    assert seen == []  # HAT clips inside its plugin


def _permuted_test_labels(monkeypatch):
    """split-digits with every task's test labels permuted (seeded): test accuracy changes,
    training and validation data do not."""
    spec = SCENARIOS["split-digits"]

    def build(seed, root):
        scen = spec.builder(seed, root)
        g = torch.Generator().manual_seed(1234)
        tasks = [dataclasses.replace(t, test_y=t.test_y[torch.randperm(len(t.test_y), generator=g)])
                 for t in scen.tasks]
        return dataclasses.replace(scen, tasks=tasks)

    monkeypatch.setitem(SCENARIOS, "split-digits", dataclasses.replace(spec, builder=build))


def _tune(folder, *extra):
    preset = folder / "preset.yaml"
    code = cli.main(["tune", "--scenario", "split-digits", "--strategies", "naive,ewc,si",
                     "--grid", "ewc.lambda=1,1000000", "si.lambda=1,100000", "--seeds", "100",
                     "--epochs", "2", "--out", str(folder / "runs-out"), "--preset", str(preset),
                     "--no-progress", *extra])
    assert code == 0
    return yaml.safe_load(preset.read_text())


def test_tune_warns_once_when_its_choice_lies_at_an_end_of_the_range(tmp_path, in_tmp,
                                                                      one_thread, capsys):
    preset = tmp_path / "p.yaml"
    assert cli.main(["tune", "--scenario", "split-digits", "--strategies", "ewc", "--grid",
                     "ewc.lambda=1,1000,1000000", "--seeds", "100", "--epochs", "2", "--out",
                     str(tmp_path / "runs"), "--preset", str(preset), "--no-progress"]) == 0
    chosen = yaml.safe_load(preset.read_text())["selection"]["strategies"]["ewc"]["chosen"]
    value = chosen["ewc.lambda"]
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("warning: ewc selected")]
    side = {1: "smallest", 1000000: "largest"}.get(value)
    assert said == ([] if side is None else [
        f"warning: ewc selected ewc.lambda={value}, the {side} of 1..1000000 (its searched "
        "range): the optimum may lie outside it; widen the range with --grid "
        "ewc.lambda=<values> to know"])


def test_selection_never_reads_test_data(tmp_path, monkeypatch, in_tmp, one_thread):
    plain = _tune(tmp_path / "plain")
    _permuted_test_labels(monkeypatch)
    permuted = _tune(tmp_path / "permuted")
    # the test labels did change what the runs report on test data ...
    a = read_record(tmp_path / "plain/runs-out/runs/split-digits__ewc__s100__ewc.lambda=1.json")
    b = read_record(
        tmp_path / "permuted/runs-out/runs/split-digits__ewc__s100__ewc.lambda=1.json")
    assert a["accuracy"] != b["accuracy"]
    assert a["valid_accuracy"] == b["valid_accuracy"]
    # ... and not the selection: same criterion for every point, same choice
    for s in ("ewc", "si"):
        pa, pb = plain["selection"]["strategies"][s], permuted["selection"]["strategies"][s]
        assert pa["points"] == pb["points"] and pa["chosen"] == pb["chosen"]
    assert plain["set"] == permuted["set"]


def test_tune_writes_a_preset_that_run_accepts(tmp_path, in_tmp, one_thread, capsys):
    data = _tune(tmp_path / "t")
    out = capsys.readouterr().out
    assert "ewc: ewc.lambda -> criterion" in out and "<- chosen" in out
    assert data["strategies"] == ["naive", "ewc", "si"] and data["epochs"] == 2
    sel = data["selection"]["strategies"]
    assert set(sel) == {"ewc", "si"}  # naive has nothing to select
    for s, block in sel.items():
        assert block["seeds"] == [100] and block["epochs"] == 2
        assert [p["params"] for p in block["points"]] == [
            {f"{s}.lambda": v} for v in block["space"][f"{s}.lambda"]]
        best = max(p["value"] for p in block["points"])
        chosen = next(p for p in block["points"] if p["params"] == block["chosen"])
        assert chosen["value"] == best
        assert data["set"][f"{s}.lambda"] == block["chosen"][f"{s}.lambda"]
    # resuming selects again from the same records without training
    again = _tune(tmp_path / "t")
    assert again["selection"]["strategies"] == sel
    # the preset runs; records say their values were selected, and where
    preset = tmp_path / "t" / "preset.yaml"
    assert cli.main(["run", "--config", str(preset), "--seeds", "0", "--strategies", "naive,ewc",
                     "--out", "res", "--wandb", "disabled", "--no-progress"]) == 0
    ewc = json.loads((in_tmp / "res/runs/split-digits__ewc__s0.json").read_text())
    assert ewc["selection"]["preset"] == str(preset)
    assert ewc["selection"]["chosen"] == sel["ewc"]["chosen"]
    assert ewc["params"]["ewc"]["lambda"] == sel["ewc"]["chosen"]["ewc.lambda"]
    naive = json.loads((in_tmp / "res/runs/split-digits__naive__s0.json").read_text())
    assert naive["selection"] is None
    # a value given by hand is not a selected one
    other = 5000 if sel["ewc"]["chosen"]["ewc.lambda"] != 5000 else 10
    capsys.readouterr()
    assert cli.main(["run", "--config", str(preset), "--seeds", "0", "--strategies", "ewc",
                     "--set", f"ewc.lambda={other}", "--out", "res2", "--wandb", "disabled",
                     "--no-progress", "--epochs", "1"]) == 0
    hand = json.loads((in_tmp / "res2/runs/split-digits__ewc__s0.json").read_text())
    assert hand["selection"] is None
    # training differently from the tuning is said, once
    err = capsys.readouterr().err
    assert err.count("was selected with at most 2 epochs per task; this run uses 1") == 1
    # a grid over a selected key: none of its points is "selected"
    chosen = sel["ewc"]["chosen"]["ewc.lambda"]
    assert cli.main(["run", "--config", str(preset), "--seeds", "0", "--strategies", "ewc",
                     "--grid", f"ewc.lambda={chosen},{other}", "--epochs", "1", "--out", "res3",
                     "--wandb", "disabled", "--no-progress"]) == 0
    for path in (in_tmp / "res3/runs").glob("*.json"):
        assert json.loads(path.read_text())["selection"] is None, path.name
    # resuming into a folder whose record ran other values is refused, nothing run
    assert cli.main(["run", "--config", str(preset), "--seeds", "0", "--strategies", "ewc",
                     "--out", "res2", "--wandb", "disabled", "--no-progress"]) == 2
    assert "holds a run with ewc.lambda" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--strategies", "naive,joint"], "has hyperparameters to select"),
    (["--strategies", "ewc", "--grid", "train.lr=0.1,0.01"], "shared by all strategies"),
    (["--strategies", "ewc", "--grid", "ewc.lambda=1,x"], "ewc.lambda"),
    (["--strategies", "nope"], "unknown strategy"),
    (["--strategies", "ewc", "--run-seeds", "x"], "invalid seed list"),
    (["--strategies", "ewc", "--set", "train.recipe=fixed"], "needs the paper's recipe"),
    (["--strategies", "ewc", "--set", "train.valid_fraction=0", "train.recipe=fixed"],
     "needs the paper's recipe"),
    (["--strategies", "ewc", "--set", "scenario.task=digits:0-1"], "drop scenario.task"),
])
def test_tune_bad_input_is_one_line_and_writes_nothing(argv, message, in_tmp, capsys):
    code = cli.main(["tune", "--scenario", "split-digits", "--out", "o", "--preset", "p.yaml",
                     *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (in_tmp / "o").exists() and not (in_tmp / "p.yaml").exists()


@pytest.mark.parametrize("selection", [
    "{strategies: {ewc: 3}}",
    "{strategies: [ewc]}",
    "{strategies: {ewc: {chosen: {ewc.lambda: 1}}}}",  # no space/points: the report drops it
    "{strategies: {ewc: {space: {lambda: [1]}, points: [{params: {lambda: 1}, value: 0.5}], "
    "chosen: {lambda: 1}}}}",  # keys without the strategy
])
def test_a_preset_with_a_broken_selection_is_refused(selection, tmp_path, in_tmp, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"scenario: split-digits\nselection: {selection}\n")
    assert cli.main(["run", "--config", str(bad), "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "selection" in err and len(err.strip().splitlines()) == 1
    assert not (in_tmp / "o").exists()


def test_valid_accuracy_is_measured_on_exactly_the_recipes_held_out_samples(monkeypatch,
                                                                             one_thread):
    """The validation matrix and the recipe's early stopping see the same samples: those the
    recipe held out of each task's training data."""
    from benchmark.run import runner
    from strategies import TrainingRecipePlugin, materialize

    held_out = []
    original = TrainingRecipePlugin.after_train_dataset_adaptation

    def spy(self, strategy, **kw):
        original(self, strategy, **kw)
        held_out.append(materialize(self.valid_data)[:2])

    monkeypatch.setattr(TrainingRecipePlugin, "after_train_dataset_adaptation", spy)
    evaluated = []
    original_bench = runner.validation_benchmark

    def spy_bench(*args, **kw):
        bench = original_bench(*args, **kw)
        evaluated.extend(materialize(e.dataset)[:2] for e in bench.test_stream)
        return bench

    monkeypatch.setattr(runner, "validation_benchmark", spy_bench)
    scen = get_scenario("permuted-digits").build(3)
    scen = dataclasses.replace(scen, tasks=scen.tasks[:3])
    rec = runner.run_experiment(_exp("naive", train={"epochs": "1"}), scen)
    assert len(held_out) == len(evaluated) == 3
    for (hx, hy), (ex, ey) in zip(held_out, evaluated, strict=True):
        assert torch.equal(hx, ex) and torch.equal(hy, ey)
    assert len(rec["valid_accuracy"]) == 3 and all(len(r) == 3 for r in rec["valid_accuracy"])


def test_class_protocol_tuning_selects_on_the_class_incremental_validation_matrix(
        tmp_path, in_tmp, one_thread):
    data = _tune(tmp_path / "c", "--set", "scenario.protocol=class")
    assert data["set"]["scenario.protocol"] == "class"
    assert "(class-incremental)" in data["description"]
    block = data["selection"]["strategies"]["ewc"]
    assert "class-incremental validation accuracy" in block["criterion"]
    for point in block["points"]:
        tag = f"ewc.lambda={point['params']['ewc.lambda']}"
        rec = read_record(
            tmp_path / f"c/runs-out/runs/split-digits__ewc__s100__class__{tag}.json")
        want = agnostic_final_accuracy(rec["valid_agnostic_accuracy"])
        assert want != validation_criterion(rec["valid_accuracy"])  # not the Task-IL one
        assert point["value"] == round(want, 6)


def _tune_scores(folder):
    preset_path = folder / "preset.yaml"
    assert cli.main(["tune", "--scenario", "split-digits", "--strategies", "packnet,pnn",
                     "--set", "scenario.protocol=class", "--grid",
                     "packnet.prune_ratio=0.5,0.75", "packnet.post_prune_epochs=10",
                     "--seeds", "100,101", "--epochs", "2", "--out", str(folder / "runs-out"),
                     "--preset", str(preset_path), "--no-progress"]) == 0
    return yaml.safe_load(preset_path.read_text())


def test_the_task_score_is_selected_on_validation_from_the_same_runs(tmp_path, in_tmp,
                                                                    one_thread, monkeypatch):
    from strategies.training.task_inference import SCORES

    data = _tune_scores(tmp_path / "a")
    runs = sorted(p.name for p in (tmp_path / "a/runs-out/runs").glob("*.json"))
    assert len(runs) == (2 + 1) * 2  # packnet's 2 points and pnn's 1, 2 seeds: no run per score
    for s in ("packnet", "pnn"):
        block = data["selection"]["strategies"][s]
        assert block["space"][f"{s}.task_score"] == list(SCORES)
        assert data["set"][f"{s}.task_score"] == block["chosen"][f"{s}.task_score"]
    block = data["selection"]["strategies"]["packnet"]
    for point in block["points"]:
        p = point["params"]
        tag = (f"packnet.post_prune_epochs={p['packnet.post_prune_epochs']},"
               f"packnet.prune_ratio={p['packnet.prune_ratio']}")
        recs = [read_record(tmp_path / f"a/runs-out/runs/split-digits__packnet__s{seed}"
                            f"__class__{tag}.json") for seed in (100, 101)]
        want = sum(agnostic_final_accuracy(
            r["task_inference"]["scores"][p["packnet.task_score"]]["valid_agnostic_accuracy"])
            for r in recs) / 2
        assert point["value"] == round(want, 6)
    # test labels permuted: the same points, values and choices
    _permuted_test_labels(monkeypatch)
    again = _tune_scores(tmp_path / "b")
    assert again["selection"]["strategies"] == data["selection"]["strategies"]
    name = "split-digits__pnn__s100__class.json"
    a_rec, b_rec = (read_record(tmp_path / f"{d}/runs-out/runs/{name}") for d in "ab")
    assert a_rec["agnostic_accuracy"] != b_rec["agnostic_accuracy"]  # test data did change
    # the preset runs, its records carry the chosen score where the selection says
    assert cli.main(["run", "--config", str(tmp_path / "a/preset.yaml"), "--seeds", "0",
                     "--strategies", "packnet", "--epochs", "1", "--out", "res",
                     "--wandb", "disabled", "--no-progress"]) == 0
    rec = read_record(in_tmp / "res/runs/split-digits__packnet__s0__class.json")
    chosen = data["set"]["packnet.task_score"]
    assert rec["params"]["packnet"]["task_score"] == chosen == rec["task_inference"]["score"]
    assert rec["agnostic_accuracy"] == rec["task_inference"]["scores"][chosen][
        "agnostic_accuracy"]


def test_a_task_score_outside_task_inference_is_refused(in_tmp, capsys):
    assert cli.main(["run", "--scenario", "split-digits", "--strategies", "hat", "--set",
                     "hat.task_score=energy", "--epochs", "1", "--out", "res",
                     "--wandb", "disabled", "--no-progress"]) == 2
    assert "hat.task_score applies to the class-incremental protocol" in (
        capsys.readouterr().err)
    assert cli.main(["run", "--scenario", "split-digits", "--strategies", "hat", "--set",
                     "hat.task_score=nope", "scenario.protocol=class", "--epochs", "1",
                     "--out", "res", "--wandb", "disabled", "--no-progress"]) == 2
    assert "hat.task_score='nope' is not allowed" in capsys.readouterr().err
