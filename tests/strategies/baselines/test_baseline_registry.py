"""The paper's remaining baselines (SGD-F, IMM-mean, IMM-mode, LFL, PathNet, PNN) in the
registry: the paper's defaults, bad parameters rejected, and the CLI running all six on
split-digits end to end."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from strategies import (
    STRATEGIES,
    ConfigError,
    get_strategy,
)

BASELINES = ["sgd-f", "imm-mean", "imm-mode", "lfl", "pathnet", "pnn"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_lists_the_six_baselines_with_the_papers_defaults():
    for name in BASELINES:
        assert name in STRATEGIES and name == name.lower()
        spec = STRATEGIES[name]
        assert spec.name == name
        assert spec.description and "\n" not in spec.description
        assert dataclasses.is_dataclass(spec.params)
        assert not spec.gated and not spec.joint
    defaults = {name: get_strategy(name).defaults() for name in BASELINES}
    assert defaults["sgd-f"] == {}
    assert defaults["imm-mean"] == {"lambda": 1e-4}
    assert defaults["imm-mode"]["lambda"] == 0.01
    assert defaults["lfl"]["lambda"] == 0.05
    assert {k: defaults["pathnet"][k] for k in ("modules", "active", "generations")} == {
        "modules": 16, "active": 3, "generations": 20}
    assert defaults["pnn"] == {"width": None}


@pytest.mark.parametrize(
    ("name", "overrides", "match"),
    [
        ("pathnet", {"active": "17"}, "pathnet.active"),
        ("pathnet", {"population": "1"}, "pathnet.population"),
        ("pathnet", {"path_epochs": "0"}, "pathnet.path_epochs"),
        ("pnn", {"width": "1.5"}, "pnn.width"),
        ("imm-mode", {"eps": "0"}, "imm-mode.eps"),
        ("imm-mean", {"lambda": "-1"}, "imm-mean.lambda"),
        ("lfl", {"features": "both"}, "choose one of eval, train"),
    ],
)
def test_bad_baseline_parameters_are_rejected(name, overrides, match):
    with pytest.raises(ConfigError, match=match):
        get_strategy(name).config(overrides)


def test_cli_runs_the_six_baselines_on_split_digits(tmp_path, monkeypatch):
    from benchmark import cli
    from benchmark.records import read_record, record_path

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "res"
    code = cli.main(["run", "--scenario", "split-digits", "--strategies", ",".join(BASELINES),
                     "--seeds", "0", "--epochs", "3", "--out", str(out), "--wandb", "disabled",
                     "--no-progress"])
    assert code == 0
    for name in BASELINES:
        rec = read_record(record_path(out, "split-digits", name, 0))  # validates
        assert (rec["strategy"], rec["seed"]) == (name, 0)
        acc = torch.tensor(rec["accuracy"])
        assert acc.shape == (5, 5) and ((acc >= 0) & (acc <= 1)).all()
        assert acc.diagonal().max() > 0.9, name  # it learns (3 epochs: not every task yet)
        assert max(rec["epochs"]) <= 3
