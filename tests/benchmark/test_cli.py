"""Tests of the command line (benchmark/cli/), called in-process: an end-to-end run on the
embedded digits, resuming, ``list``, presets, and every bad input → exit 2, one ``error:``
line on stderr, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from benchmark import cli
from benchmark.data.scenarios import SCENARIOS
from benchmark.records import read_record, record_path
from benchmark.run import executors
from strategies import STRATEGIES
from tests.support.cli import assert_usage_error, run_cli, tree
from tests.support.runs import BASE, count_runs

pytestmark = pytest.mark.usefixtures("in_tmp")


def assert_nothing_written(out: Path, cwd: Path):
    assert not out.exists() or not any(out.iterdir())
    assert tree(cwd) == []  # no default results/ or data/ either


# ----------------------------------------------------------------------------- end to end


def test_run_end_to_end_then_skip(tmp_path, capsys, in_tmp):
    out = tmp_path / "res"
    argv = ["--scenario", "split-digits", "--strategies", "naive,hat", "--seeds", "0",
            "--epochs", "2", "--out", out]
    assert run_cli(*argv) == 0
    first = capsys.readouterr()
    paths = [record_path(out, "split-digits", s, 0) for s in ("naive", "hat")]
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(p.name for p in paths)
    for path, strategy in zip(paths, ("naive", "hat"), strict=True):
        rec = read_record(path)  # validates
        assert (rec["scenario"], rec["strategy"], rec["seed"]) == ("split-digits", strategy, 0)
        assert rec["params"]["train"]["epochs"] == 2
        assert max(rec["epochs"]) <= 2
        assert len(rec["accuracy"]) == 5
    assert read_record(paths[1])["hat"] is not None
    assert "skip" not in first.out + first.err
    assert tree(in_tmp) == []  # nothing in the working folder
    contents = [p.read_bytes() for p in paths]

    assert run_cli(*argv) == 0
    second = capsys.readouterr()
    text = second.out + second.err
    assert text.count("skip") == 2
    for path in paths:
        assert path.name in text
    assert [p.read_bytes() for p in paths] == contents


def test_resume_runs_only_the_missing_record(tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    argv = ["--strategies", "naive", "--seeds", "0,1", "--epochs", "1", "--out", out]
    assert run_cli(*argv) == 0
    capsys.readouterr()
    missing = record_path(out, "split-digits", "naive", 1)
    missing.unlink()
    ran = count_runs(monkeypatch, lambda exp: exp.seed)
    assert run_cli(*argv) == 0
    assert ran == [1]
    assert read_record(missing)["seed"] == 1


def test_list_prints_every_scenario_and_strategy(capsys):
    assert cli.main(["list"]) == 0
    captured = capsys.readouterr()
    words = set(captured.out.split())
    for name in list(SCENARIOS) + list(STRATEGIES):
        assert name in words, name
    assert captured.err == ""


# ----------------------------------------------------------------------------- bad inputs


def _bad(tmp_path, capsys, in_tmp, args, *fragments):
    out = tmp_path / "res"
    code = run_cli("--epochs", "1", "--out", out, *args)
    line = assert_usage_error(capsys, code, *fragments)
    assert_nothing_written(out, in_tmp)
    return line


def test_unknown_scenario_lists_valid_names(tmp_path, capsys, in_tmp):
    line = _bad(tmp_path, capsys, in_tmp, ["--scenario", "nope"], "nope")
    for name in SCENARIOS:
        assert name in line


def test_unknown_strategy_lists_valid_names(tmp_path, capsys, in_tmp):
    line = _bad(tmp_path, capsys, in_tmp, ["--strategies", "naive,bogus"], "bogus")
    for name in STRATEGIES:
        assert name in line


@pytest.mark.parametrize("item", ["hat", "hat.smax", "=3", "smax=3", "hat.=3", ".smax=3",
                                  "hat.smax="])
def test_malformed_set(tmp_path, capsys, in_tmp, item):
    _bad(tmp_path, capsys, in_tmp, ["--strategies", "naive,hat", "--set", item], item)


@pytest.mark.parametrize("strategies", ["naive,hat", "hat", "naive"])
def test_unknown_strategy_parameter(tmp_path, capsys, in_tmp, strategies):
    # rejected even when hat is not among the strategies run: it is still the user's input
    _bad(tmp_path, capsys, in_tmp, ["--strategies", strategies, "--set", "hat.foo=1"],
         "hat.foo")


@pytest.mark.parametrize("item,fragment", [
    ("hat.smax=-1", "hat.smax"), ("train.lr=abc", "train.lr"),
    ("train.optimizer=rmsprop", "rmsprop"), ("train.batch_size=0", "train.batch_size"),
    ("model.family=resnet", "resnet"), ("bogus.x=1", "bogus"), ("train.foo=1", "train.foo"),
    ("ewc.lambda=abc", "ewc.lambda"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be an integer >= 1, got 0"),
    ("train.patience=0", "train.patience must be an integer >= 1, got 0"),
])
def test_invalid_values(tmp_path, capsys, in_tmp, item, fragment):
    _bad(tmp_path, capsys, in_tmp, ["--strategies", "naive,hat", "--set", item], fragment)


@pytest.mark.parametrize("epochs", ["0", "abc", "-1", "1.5"])
def test_invalid_epochs(tmp_path, capsys, in_tmp, epochs):
    code = run_cli("--out", tmp_path / "res", f"--epochs={epochs}")
    assert_usage_error(capsys, code, "epochs")
    assert_nothing_written(tmp_path / "res", in_tmp)


@pytest.mark.parametrize("seeds", ["a", "-1", "1,1", "", "3-1", "0-", "1,,2", "0-2,2", " "])
def test_invalid_seed_lists(tmp_path, capsys, in_tmp, seeds):
    code = run_cli("--epochs", "1", "--out", tmp_path / "res", f"--seeds={seeds}")
    assert_usage_error(capsys, code, "seed")
    assert_nothing_written(tmp_path / "res", in_tmp)


@pytest.mark.parametrize("text,expected", [
    ("0", [0]), ("0,2", [0, 2]), ("0-3", [0, 1, 2, 3]), ("5, 1-2", [5, 1, 2]), ("7-7", [7]),
])
def test_seed_lists(text, expected):
    assert cli.parse_seeds(text) == expected


def test_output_under_a_regular_file(tmp_path, capsys, in_tmp):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    out = blocker / "sub"
    code = run_cli("--epochs", "1", "--strategies", "naive", "--out", out)
    assert_usage_error(capsys, code, str(out))
    assert blocker.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "file.txt"]
    assert tree(in_tmp) == []


def test_output_is_a_regular_file(tmp_path, capsys, in_tmp):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    code = run_cli("--epochs", "1", "--strategies", "naive", "--out", blocker)
    assert_usage_error(capsys, code, f"{blocker} is a file where a folder must be")
    assert blocker.read_text() == "keep me"


def test_output_under_proc(capsys, in_tmp):
    code = run_cli("--epochs", "1", "--strategies", "naive", "--out", "/proc/xyz")
    assert_usage_error(capsys, code, "/proc/xyz")
    assert not os.path.exists("/proc/xyz")
    assert tree(in_tmp) == []


def test_missing_dataset_offline(tmp_path, capsys, in_tmp):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _bad(tmp_path, capsys, in_tmp, ["--scenario", "mnist2", "--data-root", empty],
                "'mnist'")
    assert str(empty.absolute() / "MNIST" / "raw") in line
    assert list(empty.iterdir()) == []  # nothing downloaded


def test_missing_data_root_folder(tmp_path, capsys, in_tmp):
    absent = tmp_path / "absent"
    line = _bad(tmp_path, capsys, in_tmp, ["--scenario", "split-mnist", "--data-root", absent],
                "'mnist'")
    assert str(absent.absolute()) in line
    assert not absent.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_gpu(tmp_path, capsys, in_tmp, device):
    _bad(tmp_path, capsys, in_tmp, ["--device", device], "cuda")


def test_invalid_device(tmp_path, capsys, in_tmp):
    _bad(tmp_path, capsys, in_tmp, ["--device", "tpu"], "tpu")


@pytest.mark.parametrize("args", [["--threads", "-1"], ["--threads", "x"], ["--bogus"],
                                  ["--wandb", "sometimes"]])
def test_bad_options(tmp_path, capsys, in_tmp, args):
    _bad(tmp_path, capsys, in_tmp, args)


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["list", "--extra"]])
def test_bad_commands(capsys, in_tmp, argv):
    assert_usage_error(capsys, cli.main(argv))
    assert tree(in_tmp) == []


def test_bad_input_without_out_creates_no_default_folder(capsys, in_tmp):
    code = cli.main(["run", *BASE, "--scenario", "nope"])
    assert_usage_error(capsys, code, "nope")
    assert tree(in_tmp) == []


def test_validation_happens_before_any_training(tmp_path, capsys, in_tmp, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(executors, "run_experiment", must_not_run)
    # the second strategy's bad parameter must stop the first strategy's run too
    _bad(tmp_path, capsys, in_tmp, ["--strategies", "naive,ewc", "--set", "ewc.mode=weird"],
         "ewc.mode")


# ----------------------------------------------------------------------------- presets


def write_preset(tmp_path: Path, data) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_preset_is_honoured(tmp_path, capsys, in_tmp):
    out = tmp_path / "res"
    preset = write_preset(tmp_path, {
        "description": "a small test preset",
        "scenario": "permuted-digits",
        "strategies": ["naive"],
        "seeds": "1",
        "set": {"train.epochs": 1, "train.lr": 0.02, "hat.smax": 50},
    })
    assert run_cli("--config", preset, "--out", out) == 0
    capsys.readouterr()
    assert [p.name for p in (out / "runs").iterdir()] == ["permuted-digits__naive__s1.json"]
    rec = read_record(record_path(out, "permuted-digits", "naive", 1))
    assert rec["params"]["train"]["lr"] == 0.02
    assert rec["params"]["train"]["epochs"] == 1 and rec["epochs"] == [1] * 5


def test_command_line_overrides_the_preset():
    preset_data = {"scenario": "permuted-digits", "strategies": "naive,hat", "seeds": [3, 4],
                   "epochs": 7, "set": {"hat.smax": 50, "train.lr": 0.02}, "out": "elsewhere"}
    path = Path("preset.yaml")
    path.write_text(yaml.safe_dump(preset_data))
    args = cli.build_parser().parse_args(["run", "--config", str(path)])
    exps, out, data_root, device = cli.prepare_run(args)
    assert {(e.scenario, e.strategy, e.seed) for e in exps} == {
        ("permuted-digits", s, seed) for s in ("naive", "hat") for seed in (3, 4)}
    over = exps[0].overrides
    assert over["train"]["epochs"] == 7 and over["hat"]["smax"] == "50"
    assert out == Path("elsewhere") and device == "cpu"
    args = cli.build_parser().parse_args([
        "run", "--config", str(path), "--scenario", "split-digits", "--strategies", "joint",
        "--seeds", "9", "--epochs", "2", "--set", "hat.smax=60", "--out", "here"])
    exps, out, _, _ = cli.prepare_run(args)
    assert [(e.scenario, e.strategy, e.seed) for e in exps] == [("split-digits", "joint", 9)]
    assert exps[0].overrides["train"]["epochs"] == "2"
    assert exps[0].overrides["hat"]["smax"] == "60"
    assert exps[0].overrides["train"]["lr"] == "0.02"  # from the preset, not overridden
    assert out == Path("here")
    assert not Path("elsewhere").exists() and not Path("here").exists()


@pytest.mark.parametrize("data,fragment", [
    ({"scenario": "split-digits", "strategy": "naive"}, "strategy"),
    ({"sceanrio": "split-digits"}, "sceanrio"),
    ({"set": {"hat.foo": 1}}, "hat.foo"),
    ({"set": ["hat.smax=3"]}, "set"),
    ({"seeds": "1,1"}, "seed"),
    ({"scenario": "nope"}, "nope"),
    ({"scenario": ["split-digits"]}, "scenario"),
    ({"data_root": 5}, "data_root"),
    ({"device": 0}, "device"),
    (["scenario", "split-digits"], "mapping"),
])
def test_bad_preset(tmp_path, capsys, in_tmp, data, fragment):
    out = tmp_path / "res"
    code = run_cli("--config", write_preset(tmp_path, data), "--out", out)
    assert_usage_error(capsys, code, fragment)
    assert_nothing_written(out, in_tmp)


@pytest.mark.parametrize("content", [b"scenario: [unclosed", b"", b"\xff\xfe: \x00"])
def test_unreadable_preset(tmp_path, capsys, in_tmp, content):
    path = tmp_path / "preset.yaml"
    path.write_bytes(content)
    assert_usage_error(capsys, run_cli("--config", path, "--out", tmp_path / "res"), "--config")
    assert_nothing_written(tmp_path / "res", in_tmp)


def test_missing_preset(tmp_path, capsys, in_tmp):
    path = tmp_path / "nope.yaml"
    code = run_cli("--config", path, "--out", tmp_path / "res")
    assert_usage_error(capsys, code, str(path))
    assert_nothing_written(tmp_path / "res", in_tmp)


def test_preset_out_of_wrong_type_without_out_option(tmp_path, capsys, in_tmp):
    path = write_preset(tmp_path, {"out": 5})
    code = cli.main(["run", *BASE, "--config", str(path)])
    assert_usage_error(capsys, code, "out")
    assert tree(in_tmp) == []
