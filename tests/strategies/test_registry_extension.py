"""Adding a method is its file plus one registry entry: a toy strategy defined in one file
(``tests/support/toy_strategy.py``) and registered with ``strategies.registry.register`` goes
through ``python -m benchmark run``, ``tune``, a checkpoint resume and the report with nothing
else changed. Commands run in-process (``--jobs 1``), where the registration is visible."""

from __future__ import annotations

import pytest
import torch

from benchmark import cli
from benchmark.checkpoints import store as checkpoint_store
from benchmark.records import read_record, record_path
from reports.cli import main as reports_main
from strategies import REFERENCE_CLIPGRAD, STRATEGIES, ConfigError, TrainConfig, register
from strategies.common.hooks import memory_samples
from strategies.registry import BuildContext, get_strategy, make_optimizer
from strategies.training.agnostic import agnostic_scorer
from tests.support import toy_strategy
from tests.support.records import comparable
from tests.support.runs import BASE_ONE_THREAD
from tests.support.trunks import MLP_SHAPE, hat_net, mlp_trunk, multihead_net, quiet_evaluator

SCENARIO = "split-digits"
RUN = ["run", *BASE_ONE_THREAD, "--scenario", SCENARIO, "--epochs", "1", "--jobs", "1"]


@pytest.fixture
def toy(one_thread):
    spec = register(toy_strategy.SPEC)
    yield spec
    STRATEGIES.pop(spec.name, None)
    REFERENCE_CLIPGRAD.pop(spec.name, None)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_spec_facts_agree_with_the_built_strategy(name):
    """What a spec declares (memory, task-agnostic prediction, own clipping, model options)
    is what its strategy does."""
    spec = get_strategy(name)
    torch.manual_seed(0)
    make_net = hat_net if spec.gated else multihead_net
    model = make_net(mlp_trunk(), MLP_SHAPE, head_sizes=(2, 2))
    train = TrainConfig()
    ctx = BuildContext(model=model, optimizer=make_optimizer(model.parameters(), train),
                       train=train, plugins=[], device="cpu", evaluator=quiet_evaluator())
    strategy = spec.build(ctx, spec.config())
    assert (memory_samples(strategy) is not None) == spec.rehearsal
    if not spec.reference_only:  # the runner gives the references no agnostic accuracy
        assert (agnostic_scorer(strategy) is not None) == spec.task_agnostic
    assert spec.clips_itself == hasattr(spec.config(), "clipgrad")
    assert spec.gated == (spec.model_options is not None)
    assert spec.clipgrad == REFERENCE_CLIPGRAD[name] > 0


def test_register_refuses_a_taken_name(toy):
    with pytest.raises(ConfigError, match="already registered"):
        register(toy_strategy.SPEC)
    assert STRATEGIES["toy"] is toy and REFERENCE_CLIPGRAD["toy"] == toy.clipgrad


def test_toy_strategy_runs_resumes_and_is_reported(toy, in_tmp, monkeypatch, capsys):
    assert cli.main([*RUN, "--strategies", "toy,joint", "--out", "whole"]) == 0
    rec = read_record(record_path(in_tmp / "whole", SCENARIO, "toy", 0))
    assert rec["strategy"] == "toy"
    assert rec["params"]["toy"] == {"pull": 0.01}
    assert rec["params"]["train"]["clipgrad"] == toy.clipgrad
    assert len(rec["accuracy"]) == 5 and rec["memory_samples"] is None

    # killed after the checkpoint of task 2, resumed from task 3: the same record
    real = checkpoint_store.after_save

    def after_save(done):
        real(done)
        if done == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(checkpoint_store, "after_save", after_save)
        assert cli.main([*RUN, "--strategies", "toy", "--out", "cut"]) == 130
    capsys.readouterr()
    assert cli.main([*RUN, "--strategies", "toy", "--out", "cut"]) == 0
    assert "from task 3/5" in capsys.readouterr().out
    cut = read_record(record_path(in_tmp / "cut", SCENARIO, "toy", 0))
    assert comparable(cut) == comparable(rec)

    # the report lists it
    assert reports_main(["--results", "whole", "--out", "report", "--jobs", "1"]) == 0
    texts = [p.read_text(encoding="utf-8") for p in (in_tmp / "report").rglob("*.md")]
    assert any("toy" in t for t in texts)


def test_toy_strategy_is_tuned_over_its_space(toy, in_tmp):
    args = ["tune", "--scenario", SCENARIO, "--strategies", "toy", "--seeds", "100",
            "--epochs", "1", "--no-progress", "--threads", "1", "--jobs", "1",
            "--out", "tuned", "--preset", "toy.yaml"]
    assert cli.main(args) == 0
    runs = sorted(p.name for p in (in_tmp / "tuned" / "runs").iterdir())
    assert len(runs) == len(toy.space["pull"]) and all("__toy__" in r for r in runs)
    preset = (in_tmp / "toy.yaml").read_text(encoding="utf-8")
    assert "toy" in preset and "pull" in preset
