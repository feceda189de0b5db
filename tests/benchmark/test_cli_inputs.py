"""The command line's input checks: bad inputs that used to fail at run time (or be accepted)
are refused up front with one line and exit 2, writing nothing; every numeric parameter is
finite and in range; a diverged run is written as strict JSON; silent defaults are errors or
one-line warnings; the run record says which torch thread count trained it."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
import typing
from pathlib import Path

import pytest
import torch
import yaml

from benchmark import cli
from benchmark.data.scenarios import SCENARIOS
from benchmark.experiment import INPUT_SHAPES
from benchmark.networks import (
    MAX_PARAMETERS,
    ModelConfig,
    build_trunk,
    check_network,
    trunk_parameters,
)
from benchmark.records import RecordError, read_record, record_path, validate_record, write_record
from strategies import STRATEGIES, ConfigError, TrainConfig
from strategies.common.config import from_overrides, public_key
from strategies.training.recipe import RecipeConfig
from tests.support.cli import assert_usage_error, run_cli, tree

pytestmark = [pytest.mark.usefixtures("in_tmp"), pytest.mark.issue(15)]


def bad(tmp_path, capsys, in_tmp, args, *fragments, epochs=True) -> str:
    """The command fails with one line, exit 2, and writes nothing (no <out>/runs/)."""
    out = tmp_path / "res"
    code = run_cli(*(["--epochs", "1"] if epochs else []), "--out", out, *args)
    line = assert_usage_error(capsys, code, *fragments)
    assert not out.exists() or not any(out.iterdir())
    assert tree(in_tmp) == []
    return line


def plan(*argv):
    return cli.plan_run(cli.build_parser().parse_args(["run", *map(str, argv)]))


def strict_json(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------ 4: run-time crashes


def test_alexnet_on_the_8x8_digits_is_refused_up_front(tmp_path, capsys, in_tmp):
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--set", "model.family=alexnet"],
        "16×16", "(1, 8, 8)")


@pytest.mark.parametrize("epochs", ["1e400", "-1e400", "9223372036854775808"])
def test_epochs_beyond_any_integer_are_refused(tmp_path, capsys, in_tmp, epochs):
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", f"--epochs={epochs}"],
        "train.epochs", epochs=False)


def test_seed_limit_is_torchs():
    torch.manual_seed(cli.MAX_SEED)  # the largest seed is one torch takes ...
    with pytest.raises((RuntimeError, ValueError, OverflowError)):
        torch.manual_seed(cli.MAX_SEED + 1)  # ... and the next one it refuses
    assert cli.parse_seeds(str(cli.MAX_SEED)) == [cli.MAX_SEED]


@pytest.mark.parametrize("seeds", ["18446744073709551616", "0,18446744073709551616",
                                   "0-18446744073709551616", "0-100000"])
def test_seeds_torch_cannot_take_are_refused(tmp_path, capsys, in_tmp, seeds):
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--seeds", seeds], "seed")


def test_a_huge_network_is_refused_with_the_fix(tmp_path, capsys, in_tmp):
    line = bad(tmp_path, capsys, in_tmp,
               ["--strategies", "naive", "--set", "model.hidden=2000000000"],
               "model.hidden=2000000000", "lower model.hidden")
    assert f"{MAX_PARAMETERS:.0e}" in line


@pytest.mark.parametrize("key,value", [("model.layers", "1000"), ("model.blocks", "100000")])
def test_depth_bounds(tmp_path, capsys, in_tmp, key, value):
    extra = ["--set", "model.family=resnet32"] if key == "model.blocks" else []
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--set", f"{key}={value}", *extra],
        key)


@pytest.mark.parametrize("cfg,shape", [
    (ModelConfig("mlp", 100), (1, 8, 8)), (ModelConfig("mlp", 37, layers=3), (3, 5, 7)),
    (ModelConfig("alexnet", 2048), (3, 32, 32)), (ModelConfig("alexnet", 50), (1, 17, 17)),
    (ModelConfig("resnet18"), (3, 32, 32)), (ModelConfig("resnet18", stem="imagenet"),
                                             (1, 28, 28)),
    (ModelConfig("resnet32", 16, blocks=5), (3, 32, 32)),
    (ModelConfig("resnet32", 7, blocks=2), (1, 9, 9)),
])
def test_parameter_count_matches_the_built_trunk(cfg, shape):
    with torch.device("meta"):  # nothing allocated
        trunk, _ = build_trunk(cfg, shape)
    assert trunk_parameters(cfg, shape) == sum(p.numel() for p in trunk.parameters())
    assert check_network(cfg, shape) == trunk_parameters(cfg, shape)


def test_input_shapes_are_the_scenarios():
    assert set(INPUT_SHAPES) == set(SCENARIOS)
    for name, spec in SCENARIOS.items():
        if spec.embedded:
            assert spec.build(0, Path("data")).input_shape == INPUT_SHAPES[name]


def test_paper_networks_are_within_the_bound():
    assert check_network(ModelConfig("mlp", 2000), INPUT_SHAPES["pmnist"]) < MAX_PARAMETERS
    assert check_network(ModelConfig("alexnet"), INPUT_SHAPES["cifar"]) < MAX_PARAMETERS


@pytest.mark.parametrize("mode", [0o644, 0o755])
def test_runs_as_a_file_is_refused(tmp_path, capsys, in_tmp, mode):
    out = tmp_path / "D"
    out.mkdir()
    (out / "runs").write_text("not a folder")
    (out / "runs").chmod(mode)  # (an executable file passed the old writability probe)
    code = run_cli("--strategies", "naive", "--epochs", "1", "--out", out)
    assert_usage_error(capsys, code, "runs is a file", "--out")
    assert tree(out) == ["runs"] and (out / "runs").read_text() == "not a folder"


def test_a_folder_in_place_of_a_record_is_refused(tmp_path, capsys, in_tmp):
    out = tmp_path / "res"
    record_path(out, "split-digits", "naive", 0).mkdir(parents=True)
    code = run_cli("--strategies", "naive", "--epochs", "1", "--out", out)
    assert_usage_error(capsys, code, "split-digits__naive__s0.json")
    assert tree(out) == ["runs", "runs/split-digits__naive__s0.json"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("form", ["ray://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_unreachable_ray_cluster_fails_fast_in_one_line(tmp_path, capsys, in_tmp, monkeypatch,
                                                         form):
    # (the check comes after "Ray is installed": pretend it is where it is not)
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "ray" else real(name, *a))
    address = form.format(port=_closed_port())
    start = time.monotonic()
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--ray", address], address)
    assert time.monotonic() - start < 15


def test_malformed_ray_address(tmp_path, capsys, in_tmp, monkeypatch):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "ray" else real(name, *a))
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--ray", "nowhere"], "nowhere")


@pytest.mark.parametrize("items", [
    ["--set", "train.valid_fraction=0"],  # the paper's recipe needs validation data
    ["--strategies", "ewc", "--set", "ewc.decay_factor=0.5"],  # needs ewc.mode=online
])
def test_combinations_refused_at_build_time_are_refused_up_front(tmp_path, capsys, in_tmp,
                                                                 items):
    args = items if "--strategies" in items else ["--strategies", "naive", *items]
    bad(tmp_path, capsys, in_tmp, args, items[-1].split("=")[0])


def test_combination_checks_see_the_whole_config(tmp_path):
    # a grid value is validated alone first; the combination is checked on the whole config
    p = plan("--strategies", "ewc", "--set", "ewc.mode=online", "--grid",
             "ewc.decay_factor=0.5,0.9", "--epochs", "1", "--out", tmp_path / "o")
    assert len(p.experiments) == 2


# ------------------------------------------------------------------ 5: numbers in range


ISSUE_VALUES = ["train.lr=inf", "train.momentum=nan", "train.weight_decay=inf",
                "train.lr_factor=nan", "train.lr_min=inf", "ewc.lambda=nan", "ewc.lambda=-5",
                "lwf.temperature=0", "si.lambda=-1"]
MORE_VALUES = ["train.momentum=1.5", "train.lr_factor=1", "train.valid_fraction=nan",
               "train.clipgrad=inf", "ewc.decay_factor=2", "lwf.alpha=-1", "lwf.alpha=inf",
               "si.eps=0", "hat.thres_cosh=inf", "hat.thres_emb=nan", "hat.clipgrad=inf",
               "imm-mean.lambda=nan", "imm-mode.eps=inf", "lfl.lambda=nan",
               "pathnet.path_epochs=inf", "pathnet.modules=100000", "pnn.width=nan",
               "model.dropout=nan"]


@pytest.mark.parametrize("item", ISSUE_VALUES + MORE_VALUES)
def test_out_of_range_values_are_refused(tmp_path, capsys, in_tmp, item):
    strategy = item.split(".")[0]
    strategies = "naive" if strategy in ("train", "model") else strategy
    bad(tmp_path, capsys, in_tmp, ["--strategies", strategies, "--set", item],
        item.split("=")[0])


def _numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        args = [a for a in typing.get_args(typ) if a is not type(None)] or [typ]
        if args[0] in (int, float):
            yield public_key(f.name), args[0]


SECTIONS = {"train": TrainConfig, "model": ModelConfig,
            **{name: spec.params for name, spec in STRATEGIES.items()}}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_numeric_parameter_must_be_finite(section):
    cls = SECTIONS[section]
    for key, _ in _numeric_fields(cls):
        for value in ("nan", "inf", "-inf", "1e400", float("nan"), float("inf")):
            with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
                from_overrides(cls, {key: value}, section)


def test_configs_built_directly_refuse_nan():
    nan = float("nan")
    for make in (lambda: TrainConfig(momentum=nan), lambda: TrainConfig(lr_factor=nan),
                 lambda: RecipeConfig(lr_factor=nan), lambda: RecipeConfig(lr_min=nan),
                 lambda: STRATEGIES["ewc"].params(lambda_=nan),
                 lambda: STRATEGIES["lwf"].params(temperature=nan),
                 lambda: STRATEGIES["si"].params(lambda_=nan),
                 lambda: STRATEGIES["hat"].params(thres_cosh=float("inf"))):
        with pytest.raises(ConfigError):
            make()


def test_defaults_still_valid():
    for section, cls in SECTIONS.items():
        from_overrides(cls, {}, section)


def _record(**extra) -> dict:
    rec = {"schema": 2, "scenario": "split-digits", "strategy": "naive", "seed": 0, "tag": "",
           "params": {}, "task_names": ["a"], "accuracy": [[0.5]], "random_accuracy": [0.5],
           "epochs": [1], "seconds": [0.1], "versions": {}, "created": "now",
           "history": [[{"epoch": 1, "train_loss": float("nan"), "valid_loss": float("inf"),
                         "lr": 0.05}]]}
    rec.update(extra)
    return rec


def test_a_diverged_record_is_strict_json_marked_diverged(tmp_path):
    path = tmp_path / "runs" / "a.json"
    write_record(path, _record())
    rec = strict_json(path.read_text())
    assert rec["diverged"] is True
    assert rec["history"][0][0]["train_loss"] is None
    assert rec["history"][0][0]["valid_loss"] is None
    assert rec["history"][0][0]["lr"] == 0.05
    assert read_record(path)["diverged"] is True


def test_diverged_must_be_a_boolean():
    rec = _record(history=[])
    validate_record({**rec, "diverged": False})
    with pytest.raises(RecordError, match="diverged"):
        validate_record({**rec, "diverged": "yes"})
    with pytest.raises(RecordError, match="threads"):
        validate_record({**rec, "threads": 0})


def test_a_diverging_run_is_recorded_as_diverged(tmp_path, capsys, in_tmp):
    out = tmp_path / "res"
    assert run_cli("--strategies", "naive", "--epochs", "1", "--set", "train.lr=1e30",
                   "--out", out) == 0
    path = record_path(out, "split-digits", "naive", 0)
    rec = strict_json(path.read_text())
    assert rec["diverged"] is True
    assert any(e["train_loss"] is None for task in rec["history"] for e in task)
    captured = capsys.readouterr()
    assert "DIVERGED" in captured.out + captured.err


def test_a_normal_run_is_not_diverged(tmp_path, in_tmp):
    out = tmp_path / "res"
    assert run_cli("--strategies", "naive", "--epochs", "1", "--out", out) == 0
    rec = strict_json(record_path(out, "split-digits", "naive", 0).read_text())
    assert rec["diverged"] is False


# ------------------------------------------------------------------ 6: silent defaults


@pytest.mark.parametrize("option", ["--scenario", "--strategies", "--device", "--seeds",
                                    "--out", "--data-root", "--epochs"])
def test_empty_option_values_are_errors(tmp_path, capsys, in_tmp, option):
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", f"{option}="], option,
        epochs=option != "--epochs")


def test_empty_scenario_in_a_list_is_an_error(tmp_path, capsys, in_tmp):
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--scenario", "split-digits,"],
        "unknown scenario ''")


@pytest.mark.parametrize("key", ["scenario", "strategies", "device", "out"])
def test_empty_preset_values_are_errors(tmp_path, capsys, in_tmp, key):
    preset = tmp_path / "p.yaml"
    data = {"scenario": "split-digits", "strategies": ["naive"], "epochs": 1, key: ""}
    preset.write_text(yaml.safe_dump(data))
    bad(tmp_path, capsys, in_tmp, ["--config", preset], key, epochs=False)


@pytest.mark.parametrize("given", [["--grid", "hat.smax=25,50"], ["--set", "hat.smax=25"],
                                   ["--set", "ewc.lambda=3", "--grid", "hat.c=0.1,1"]])
def test_parameters_of_strategies_not_run_are_warned_about(tmp_path, capsys, given):
    p = plan("--strategies", "naive", *given, "--epochs", "1", "--out", tmp_path / "o")
    assert len(p.experiments) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and "ignored" in lines[0]
    for key in given[1::2]:
        assert key.split("=")[0] in lines[0]


def test_no_warning_for_parameters_of_strategies_run(tmp_path, capsys):
    plan("--strategies", "naive,hat", "--grid", "hat.smax=25,50", "--epochs", "1",
         "--out", tmp_path / "o")
    assert capsys.readouterr().err.splitlines() == ["grid: 3 runs (naive 1, hat 2; 1 seed)"]


def test_a_warning_never_comes_with_an_error(tmp_path, capsys, in_tmp):
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--grid", "hat.smax=25,50",
                                   "--seeds", "x"], "seed")


def test_set_with_the_same_key_twice_is_an_error(tmp_path, capsys, in_tmp):
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive,hat", "--set", "hat.smax=25",
                                   "--set", "hat.smax=50"], "hat.smax", "twice")


def test_epochs_with_set_train_epochs_is_an_error(tmp_path, capsys, in_tmp):
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--epochs", "2", "--set",
                                   "train.epochs=3"], "--epochs", "train.epochs",
        epochs=False)


def test_preset_epochs_with_set_train_epochs_is_an_error(tmp_path, capsys, in_tmp):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"strategies": ["naive"], "epochs": 2,
                                      "set": {"train.epochs": 3}}))
    bad(tmp_path, capsys, in_tmp, ["--config", preset], "epochs", epochs=False)


def test_command_line_epochs_still_win_over_a_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"strategies": ["naive"], "epochs": 2}))
    p = plan("--config", preset, "--epochs", "1", "--out", tmp_path / "o")
    assert p.experiments[0].overrides["train"]["epochs"] == "1"


# ------------------------------------------------------------------ 8: thread count


def test_the_record_says_which_thread_count_trained_it(tmp_path, in_tmp):
    out = tmp_path / "res"
    assert run_cli("--strategies", "naive", "--epochs", "1", "--threads", "2", "--out",
                   out) == 0
    assert read_record(record_path(out, "split-digits", "naive", 0))["threads"] == 2


def test_resuming_with_another_thread_count_warns(tmp_path, capsys, in_tmp):
    out = tmp_path / "res"
    assert run_cli("--strategies", "naive", "--epochs", "1", "--threads", "2", "--out",
                   out) == 0
    capsys.readouterr()
    # the same thread count, or nothing left to run: no warning
    plan("--strategies", "naive", "--seeds", "0,1", "--epochs", "1", "--threads", "2",
         "--out", out)
    plan("--strategies", "naive", "--seeds", "0", "--epochs", "1", "--threads", "1",
         "--out", out)
    assert capsys.readouterr().err == ""
    # new runs with another count would mix settings in one folder
    plan("--strategies", "naive", "--seeds", "0,1", "--epochs", "1", "--threads", "1",
         "--out", out)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:"), lines
    assert "--threads 2" in lines[0] and "split-digits__naive__s0.json" in lines[0]


def test_threads_bound(tmp_path, capsys, in_tmp):
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--threads", "100000"], "threads")


# ------------------------------------------------------------------ inputs taken silently


@pytest.mark.issue(28)
@pytest.mark.parametrize("given", [["--set", "train.valid_fraction=0.999"],
                                   ["--grid", "train.valid_fraction=0.1,0.999"]])
def test_a_validation_split_that_leaves_too_few_training_samples_is_refused(
        tmp_path, capsys, in_tmp, given):
    """split-digits' smallest task (248 samples, 2 classes) kept 1 training sample at 0.999."""
    bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", *given],
        "train.valid_fraction=0.999", "1 training sample", "split-digits",
        "train.valid_fraction <= 0.993")


@pytest.mark.issue(28)
@pytest.mark.parametrize("n,classes", [(248, 2), (252, 2), (1258, 10), (60000, 10), (3, 2),
                                       (40, 39)])
def test_the_largest_valid_fraction_is_the_recipes_own_split(n, classes):
    from benchmark.experiment import max_valid_fraction
    from strategies.training.recipe import split_indices

    def kept(fraction: float) -> int:
        return n - len(split_indices(n, fraction, 0, 0)[1])

    best = max_valid_fraction(n, classes)
    assert 0 < best < 1 and kept(best) >= classes
    digits = len(f"{best:g}".split(".")[1])
    above = round(best + 10**-digits, digits)
    assert above >= 1 or kept(above) < classes
    assert len(split_indices(n, 1e-9, 0, 0)[1]) == 1  # validation keeps a sample
    assert max_valid_fraction(classes, classes) == 0


@pytest.mark.issue(28)
def test_each_run_checks_its_split_on_the_scenario_it_built():
    """A task with under two samples per class slips past the plan's threshold: the run
    refuses it when it starts, before training."""
    from benchmark.data.scenarios import get_scenario
    from benchmark.experiment import Experiment, resolve_for

    built = get_scenario("split-digits").build(0)
    tiny = dataclasses.replace(built, tasks=[dataclasses.replace(
        t, train_x=t.train_x[:3], train_y=t.train_y[:3]) for t in built.tasks])
    exp = Experiment("split-digits", "naive", 0, {"train": {"valid_fraction": 0.5}})
    with pytest.raises(ConfigError, match=r"train\.valid_fraction=0\.5 leaves task digits:0-1 "
                                          r".* 1 training sample .*<= 0\.499"):
        resolve_for(exp, tiny)
    resolve_for(Experiment("split-digits", "naive", 0, {"train": {"valid_fraction": 0.3}}),
                tiny)
    resolve_for(Experiment("split-digits", "naive", 0, {"train": {
        "valid_fraction": 0.5, "recipe": "fixed"}}), tiny)  # nothing held out


@pytest.mark.issue(28)
def test_a_strategy_given_twice_is_refused_like_a_seed(tmp_path, capsys, in_tmp):
    seed = bad(tmp_path, capsys, in_tmp, ["--strategies", "naive", "--seeds", "0,0"])
    line = bad(tmp_path, capsys, in_tmp, ["--strategies", "naive,hat,naive"],
               "invalid strategy list 'naive,hat,naive'", "distinct", "naive is given twice")
    assert seed.startswith("error: invalid seed list") and "distinct" in seed and line


@pytest.mark.issue(28)
def test_an_unreadable_file_at_a_records_path_is_moved_aside(tmp_path, capsys, in_tmp):
    out = tmp_path / "res"
    path = record_path(out, "split-digits", "naive", 0)
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    assert run_cli("--strategies", "naive", "--epochs", "1", "--out", out) == 0
    aside = path.with_name(path.name + ".unreadable-1")
    assert aside.read_text(encoding="utf-8") == "{not json"
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and str(path) in warnings[0] and str(aside) in warnings[0]
    assert read_record(path)["strategy"] == "naive"


# ------------------------------------------------------------------ bounds as given


def _integer_keys():
    for section, cls in sorted({**SECTIONS, "hat": STRATEGIES["hat"].params}.items()):
        for key, typ in _numeric_fields(cls):
            if typ is int:
                yield section, cls, key


@pytest.mark.issue(28)
@pytest.mark.parametrize("section,cls,key", list(_integer_keys()))
@pytest.mark.parametrize("value", ["99999999999999999999", "-99999999999999999999", "1e30"])
def test_integer_bounds_say_what_the_value_must_be(section, cls, key, value):
    """Beyond 64 bits, an integer key's line names it and the bound it must meet: the
    config's own (e.g. an integer >= 1), or at most 2**63 - 1; never a range down to -2**63
    for a value that must be positive."""
    with pytest.raises(ConfigError) as err:
        from_overrides(cls, {key: value}, section)
    line = str(err.value)
    assert f"{section}.{key}" in line and "-2**63" not in line, line
    assert "\n" not in line


@pytest.mark.issue(28)
@pytest.mark.parametrize("args,fragments", [
    (["--strategies", "hat", "--set", "hat.calibration_samples=-1", "scenario.protocol=class"],
     ["hat.calibration_samples must be an integer >= 0"]),
    (["--strategies", "hat", "--grid", "hat.calibration_samples=-1,5", "--set",
      "scenario.protocol=class"], ["hat.calibration_samples must be an integer >= 0"]),
    (["--strategies", "naive", "--epochs", "-5"], ["--epochs -5", "train.epochs",
                                                   "an integer >= 1"]),
    (["--strategies", "naive", "--set", "train.epochs=99999999999999999999"],
     ["train.epochs must be an integer from 1 to 2**63 - 1"]),
    (["--strategies", "replay", "--set", "replay.mem_size=99999999999999999999"],
     ["replay.mem_size must be an integer from 1 to 2**63 - 1"]),
    (["--strategies", "naive", "--set", "model.hidden=99999999999999999999"],
     ["model.hidden", "at most 2**63 - 1"]),
])
def test_bounds_name_the_key_the_user_gave(tmp_path, capsys, in_tmp, args, fragments):
    line = bad(tmp_path, capsys, in_tmp, args, *fragments,
               epochs=not any("epochs" in a for a in args))
    assert "-2**63" not in line


@pytest.mark.parametrize(("value", "want"), [
    ("2e3", 2000), ("1E1", 10), ("2.5e1", 25),
    ("1.5e0", None), ("2.55e1", None), ("1e", None), ("e", None),
])
def test_integer_keys_take_exponents_only_when_exact(value, want):
    """``2e3`` is 2000; ``1.5e0`` is not an integer and is refused, never truncated to 1."""
    from strategies import TrainConfig

    if want is None:
        with pytest.raises(ConfigError, match=rf"train.epochs='{value}' is not a valid int"):
            from_overrides(TrainConfig, {"epochs": value}, "train")
    else:
        assert from_overrides(TrainConfig, {"epochs": value}, "train").epochs == want
