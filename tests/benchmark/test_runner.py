"""Tests of the experiment runner (benchmark/run/runner.py, executors.py) on the embedded
digits scenarios: determinism, the accuracy matrix, HAT's protection, joint training, recorded
parameters, and ``run_all``'s skip / resume / interruption behaviour. Few epochs, one CPU
thread."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torchvision
from avalanche.training.supervised.joint_training import JointTraining

from benchmark import experiment
from benchmark.data.scenarios import get_scenario, random_accuracy
from benchmark.errors import RunsFailed
from benchmark.experiment import Experiment, resolve
from benchmark.networks import CifarResNet
from benchmark.records import is_complete, read_record, record_path, validate_record
from benchmark.run import executors, runner
from benchmark.run.executors import run_all
from benchmark.run.runner import RunHooks, run_experiment
from reports.schema import field_names
from strategies import STRATEGIES, ConfigError, HATNet, TrainConfig, get_strategy
from tests.support.records import comparable
from tests.support.runs import FAST, count_runs, run_cached


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster for these tiny networks on shared cores
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("strategy", ["naive", "hat"])
def test_same_seed_gives_identical_record(strategy):
    a = run_experiment(Experiment("split-digits", strategy, 3, FAST))
    b = run_experiment(Experiment("split-digits", strategy, 3, FAST))
    assert set(a) == set(b)
    assert comparable(a) == comparable(b)
    # history entries are compared fully: they hold no timing fields
    assert a["history"] == b["history"]
    assert all(len(h) == e for h, e in zip(a["history"], a["epochs"], strict=True))


def test_different_seed_gives_different_accuracy():
    a = run_cached("split-digits", "naive", 0)
    b = run_cached("split-digits", "naive", 1)
    assert a["accuracy"] != b["accuracy"]
    assert a["seed"] == 0 and b["seed"] == 1


def test_prebuilt_scenario_gives_the_same_record():
    scen = get_scenario("split-digits").build(0)
    rec = run_experiment(Experiment("split-digits", "naive", 0, FAST), scen)
    assert comparable(rec) == comparable(run_cached("split-digits", "naive", 0))


# ----------------------------------------------------------------------------- the record


@pytest.mark.parametrize("strategy", ["naive", "hat", "joint"])
def test_record_shape_and_ranges(strategy):
    rec = run_cached("split-digits", strategy)
    validate_record(rec)
    assert tuple(rec) == field_names("task")  # the record contract's fields, in its order
    scen = get_scenario("split-digits").build(0)
    n = scen.n_tasks
    assert n == 5
    assert rec["scenario"] == "split-digits" and rec["strategy"] == strategy
    assert rec["task_names"] == [t.name for t in scen.tasks]
    acc = np.asarray(rec["accuracy"], dtype=float)
    assert acc.shape == (n, n)
    assert np.isfinite(acc).all() and (acc >= 0).all() and (acc <= 1).all()
    assert len(rec["epochs"]) == len(rec["seconds"]) == len(rec["history"]) == n
    assert all(1 <= e <= 2 for e in rec["epochs"])
    assert all(s >= 0 for s in rec["seconds"])
    assert rec["device"] == "cpu"
    assert rec["tag"] == ""
    assert json.loads(json.dumps(rec)) == rec  # plain JSON types only


@pytest.mark.parametrize("seed", [0, 2])
def test_random_accuracy_matches_scenario(seed):
    rec = run_cached("split-digits", "naive", seed)
    scen = get_scenario("split-digits").build(seed)
    assert rec["random_accuracy"] == [random_accuracy(t) for t in scen.tasks]
    # independent check: stratified random classifier, sum_c p_train(c) p_test(c)
    for task, r in zip(scen.tasks, rec["random_accuracy"], strict=True):
        ptr = np.bincount(task.train_y.numpy(), minlength=task.n_classes) / len(task.train_y)
        pte = np.bincount(task.test_y.numpy(), minlength=task.n_classes) / len(task.test_y)
        assert r == pytest.approx(float((ptr * pte).sum()), abs=1e-12)


def test_history_entries():
    rec = run_cached("split-digits", "hat")
    for task_hist, epochs in zip(rec["history"], rec["epochs"], strict=True):
        assert [e["epoch"] for e in task_hist] == list(range(1, epochs + 1))
        for entry in task_hist:
            assert {"epoch", "train_loss", "train_acc", "valid_loss", "lr", "hat_s",
                    "hat_reg"} <= set(entry)
            assert 0 <= entry["train_acc"] <= 1 and entry["train_loss"] >= 0
            assert entry["valid_loss"] is not None  # paper recipe holds out validation data
            assert 0 < entry["hat_s"] <= 400.0
            # monitoring, per gated layer (2): used fraction, and reuse (none on task 1)
            assert len(entry["hat_used"]) == len(entry["hat_reuse"]) == 2
            assert all(0 <= u <= 1 for u in entry["hat_used"] + entry["hat_reuse"])
    assert all(r == 0.0 for e in rec["history"][0] for r in e["hat_reuse"])
    assert any(r > 0 for e in rec["history"][-1] for r in e["hat_reuse"])
    naive = run_cached("split-digits", "naive")
    assert all("hat_s" not in e and "hat_used" not in e for h in naive["history"] for e in h)


# ----------------------------------------------------------------------------- forgetting


def test_hat_never_changes_earlier_task_accuracy():
    over = {"train": {"epochs": 10, "recipe": "fixed"}}
    rec = run_cached("split-digits", "hat", 0, over)
    acc = rec["accuracy"]
    n = len(acc)
    for u in range(n):
        for t in range(u, n):
            assert acc[t][u] == acc[u][u], (t, u)
    # not vacuous: HAT learned its tasks (well above the random classifier)
    diag = np.diag(np.asarray(acc))
    assert diag.mean() > np.mean(rec["random_accuracy"]) + 0.2


def test_naive_forgets_on_permuted_digits():
    over = {"train": {"epochs": 3, "recipe": "fixed"}}
    rec = run_cached("permuted-digits", "naive", 0, over)
    acc = np.asarray(rec["accuracy"])
    assert acc.shape == (5, 5)
    assert rec["epochs"] == [3] * 5
    changed = [(t, u) for u in range(5) for t in range(u + 1, 5) if acc[t, u] != acc[u, u]]
    assert changed
    # and it learned each task when trained on it (10 classes: random is about 0.1)
    assert (np.diag(acc) > 0.3).all()


# ----------------------------------------------------------------------------- joint


def test_joint_trains_from_scratch_on_tasks_up_to_t(monkeypatch):
    calls = []
    original = JointTraining.train

    def spy(self, experiences, *args, **kwargs):
        exps = list(experiences)
        init = {k: v.clone() for k, v in self.model.trunk.state_dict().items()}
        calls.append(([e.task_label for e in exps], sum(len(e.dataset) for e in exps),
                      self.model, init))
        return original(self, exps, *args, **kwargs)

    monkeypatch.setattr(JointTraining, "train", spy)
    rec = run_experiment(Experiment("split-digits", "joint", 0, FAST))
    n = len(rec["task_names"])
    assert [labels for labels, *_ in calls] == [list(range(t + 1)) for t in range(n)]
    sizes = [size for _, size, *_ in calls]
    assert all(b > a for a, b in zip(sizes, sizes[1:], strict=False))
    models = [m for _, _, m, _ in calls]
    assert len({id(m) for m in models}) == n  # a fresh model for every t
    # ... with the same initialisation for every t
    inits = [init for *_, init in calls]
    for init in inits[1:]:
        assert init.keys() == inits[0].keys()
        assert all(torch.equal(init[k], inits[0][k]) for k in init)
    acc = np.asarray(rec["accuracy"])
    assert acc.shape == (n, n)
    # row t: the tasks trained so far beat the tasks not trained yet
    for t in range(n - 1):
        assert acc[t, : t + 1].mean() > acc[t, t + 1 :].mean() + 0.1, t


def test_joint_first_row_is_training_on_task_one_alone():
    joint = run_cached("split-digits", "joint")
    naive = run_cached("split-digits", "naive")
    # same seed, same initialisation, both trained on task 1 only
    assert joint["accuracy"][0] == naive["accuracy"][0]
    assert joint["history"][0] == naive["history"][0]
    assert joint["hat"] is None


# ----------------------------------------------------------------------------- parameters


def test_params_hold_every_key_with_overrides():
    over = {"train": {"epochs": "1", "lr": "0.02", "momentum": "0.5"},
            "hat": {"smax": "50", "c": 1}}
    rec = run_experiment(Experiment("split-digits", "hat", 0, over))
    params = rec["params"]
    assert set(params) == {"train", "model", "hat"}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(params["train"]) == train_keys
    assert set(params["hat"]) == set(get_strategy("hat").defaults())
    assert params["hat"]["smax"] == 50.0 and isinstance(params["hat"]["smax"], float)
    assert params["hat"]["c"] == 1.0
    assert params["train"]["lr"] == 0.02 and params["train"]["momentum"] == 0.5
    assert params["train"]["epochs"] == 1 and rec["epochs"] == [1] * 5
    assert params["train"]["valid_fraction"] == get_scenario("split-digits").valid_fraction
    assert params["train"]["valid_fraction"] is not None
    # untouched keys keep their defaults
    defaults = get_strategy("hat").defaults()
    assert params["hat"]["thres_emb"] == defaults["thres_emb"]
    assert params["train"]["optimizer"] == TrainConfig().optimizer
    assert params["model"]["family"] == "mlp" and params["model"]["hidden"] is not None
    # and the overrides were used in training, not only recorded
    entries = [e for h in rec["history"] for e in h]
    assert all(e["hat_s"] <= 50.0 for e in entries)
    assert all(e["lr"] == 0.02 for e in entries)
    assert json.loads(json.dumps(params)) == params


@pytest.mark.parametrize("strategy", ["naive", "joint"])
def test_params_of_strategies_without_own_keys(strategy):
    rec = run_cached("split-digits", strategy)
    assert rec["params"][strategy] == {}
    assert set(rec["params"]) == {"train", "model", strategy}
    assert rec["params"]["train"]["epochs"] == 2


def test_explicit_valid_fraction_is_kept():
    spec = get_scenario("split-digits")
    cfg = resolve(Experiment("split-digits", "hat", 0, {"train": {"valid_fraction": "0.25"}}),
                  spec.valid_fraction, spec.embedded, spec.network)
    assert cfg.train.valid_fraction == 0.25
    cfg = resolve(Experiment("mixture", "hat", 0, {}), 0.15, False, "alexnet")
    assert cfg.train.valid_fraction == 0.15


@pytest.mark.parametrize("scenario,family,hidden", [
    ("split-digits", "mlp", 100), ("pmnist", "mlp", 2000), ("cifar", "alexnet", 2048),
])
def test_model_defaults_follow_the_scenario(scenario, family, hidden):
    spec = get_scenario(scenario)
    cfg = resolve(Experiment(scenario, "naive", 0, {}), spec.valid_fraction, spec.embedded,
                  spec.network)
    assert (cfg.model.family, cfg.model.hidden) == (family, hidden)
    cfg = resolve(Experiment(scenario, "naive", 0, {"model": {"hidden": "7"}}),
                  spec.valid_fraction, spec.embedded, spec.network)
    assert cfg.model.hidden == 7


@pytest.mark.parametrize("overrides", [
    {"hat": {"foo": 1}}, {"hat": {"smax": -1}}, {"train": {"lr": "abc"}},
    {"train": {"optimizer": "rmsprop"}}, {"model": {"family": "resnet"}},
    {"bogus": {"x": 1}}, {"train": {"epochs": 0}},
])
def test_resolve_rejects_bad_overrides(overrides):
    with pytest.raises(ConfigError):
        resolve(Experiment("split-digits", "hat", 0, overrides), 0.1, True, "mlp")


@pytest.mark.parametrize("key", ["layers", "dropout", "input_dropout"])
def test_mlp_only_model_settings_are_refused_for_alexnet(key):
    spec = get_scenario("cifar")
    value = "3" if key == "layers" else "0.3"
    with pytest.raises(ConfigError, match=f"model.{key} applies to the MLP only"):
        resolve(Experiment("cifar", "naive", 0, {"model": {key: value}}), spec.valid_fraction,
                spec.embedded, spec.network)
    # the MLP takes them
    over = {"model": {"family": "mlp", key: value}}
    cfg = resolve(Experiment("cifar", "naive", 0, over), spec.valid_fraction, spec.embedded,
                  spec.network)
    assert getattr(cfg.model, key) == float(value)


@pytest.mark.parametrize("strategy,over,flushed", [
    ("naive", {}, True), ("hat", {}, True), ("hat", {"hat": {"flush_denormal": "false"}}, False),
])
def test_denormal_flushing_follows_the_strategy_setting(strategy, over, flushed):
    from strategies.hat import flushing_denormals

    seen = []
    hooks = RunHooks(on_epoch=lambda task, entry: seen.append(flushing_denormals()))
    torch.set_flush_denormal(False)
    run_experiment(Experiment("split-digits", strategy, 0,
                              {"train": {"epochs": 1}, **over}),
                   hooks=hooks)
    assert seen and all(s == flushed for s in seen)
    assert not flushing_denormals()  # the caller's mode is back


def test_resolve_ignores_other_strategies_sections():
    cfg = resolve(Experiment("split-digits", "naive", 0, {"hat": {"smax": "25"}}), 0.1, True,
                  "mlp")
    assert dataclasses.fields(cfg.strategy) == ()


# ----------------------------------------------------------------------------- HAT stats


def test_hat_statistics_block():
    over = {"train": {"epochs": 1}, "model": {"layers": 3}}
    rec = run_experiment(Experiment("split-digits", "hat", 0, over))
    stats = rec["hat"]
    n = len(rec["task_names"])
    n_layers = 3  # model.layers=3: three gated hidden layers
    assert len(stats["layers"]) == n_layers
    assert stats["tasks"] == list(range(n))
    for key in ("used", "overlap"):
        assert len(stats[key]) == n_layers, key
        assert all(len(row) == n for row in stats[key]), key
        assert all(0 <= v <= 1 for row in stats[key] for v in row), key
    assert len(stats["weights_kept"]) == n
    assert all(0 <= v <= 1 for v in stats["weights_kept"])
    assert stats["units"] == [100] * n_layers
    # the first task cannot reuse units of earlier tasks
    assert all(row[0] == 0 for row in stats["overlap"])
    assert json.loads(json.dumps(stats)) == stats


def test_non_hat_record_has_no_hat_block():
    assert run_cached("split-digits", "naive")["hat"] is None


# ----------------------------------------------------------------------------- hooks


def test_hooks_see_every_epoch_and_row():
    epochs, rows = [], []
    hooks = RunHooks(on_epoch=lambda t, e: epochs.append((t, e)),
                     on_experience=lambda t, r: rows.append((t, r)))
    rec = run_experiment(Experiment("split-digits", "naive", 0, FAST), hooks=hooks)
    assert [t for t, _ in rows] == list(range(5))
    assert [r for _, r in rows] == rec["accuracy"]
    assert [e for _, e in epochs] == [e for h in rec["history"] for e in h]
    assert [t for t, _ in epochs] == [t for t, h in enumerate(rec["history"]) for _ in h]


# ----------------------------------------------------------------------------- run_all


class FakeTracker:
    def __init__(self, fail_at_task: int | None = None):
        self.fail_at_task = fail_at_task
        self.epochs, self.rows, self.finished, self.aborted = [], [], [], 0

    def avalanche_loggers(self):
        return []

    def log_epoch(self, task, entry):
        self.epochs.append((task, entry))

    def log_experience(self, task, row):
        if task == self.fail_at_task:
            raise KeyboardInterrupt("stopped by the user")
        self.rows.append((task, row))

    def finish(self, rec, out):
        self.finished.append(rec)

    def abort(self):
        self.aborted += 1


def _exps():
    return [Experiment("split-digits", s, 0, FAST) for s in ("naive", "hat")]


def test_run_all_writes_records_and_skips_complete_ones(tmp_path, monkeypatch):
    out = tmp_path / "out"
    log: list[str] = []
    trackers = {}

    def factory(exp):
        trackers[exp.strategy] = FakeTracker()
        return trackers[exp.strategy]

    paths = run_all(_exps(), out, progress=False, log=log.append, tracker_factory=factory)
    assert paths == [record_path(out, "split-digits", s, 0) for s in ("naive", "hat")]
    for path, strategy in zip(paths, ("naive", "hat"), strict=True):
        rec = read_record(path)
        assert rec["strategy"] == strategy
        tr = trackers[strategy]
        assert tr.finished == [rec] and tr.aborted == 0
        assert [r for _, r in tr.rows] == rec["accuracy"]
        assert len(tr.epochs) == sum(rec["epochs"])
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(p.name for p in paths)
    assert len(log) == 2 and not any("skip" in m for m in log)
    stamps = [p.stat().st_mtime_ns for p in paths]

    def must_not_run(*args, **kwargs):
        raise AssertionError("run_experiment called for a complete record")

    monkeypatch.setattr(executors, "run_experiment", must_not_run)
    monkeypatch.setattr(executors, "get_scenario", must_not_run)  # not even the data are built
    log.clear()
    again = run_all(_exps(), out, progress=False, log=log.append)
    assert again == paths
    assert len(log) == 2 and all(m.startswith("skip") for m in log)
    assert [p.stat().st_mtime_ns for p in paths] == stamps


def test_run_all_reruns_a_corrupt_record(tmp_path, monkeypatch):
    out = tmp_path / "out"
    paths = run_all(_exps(), out, progress=False, log=lambda m: None)
    naive_path, hat_path = paths
    hat_before = hat_path.read_bytes()
    naive_path.write_text(naive_path.read_text()[:100])  # truncated
    assert not is_complete(naive_path)

    ran = count_runs(monkeypatch, lambda exp: exp.strategy)
    log: list[str] = []
    run_all(_exps(), out, progress=False, log=log.append)
    assert ran == ["naive"]
    assert is_complete(naive_path)
    assert hat_path.read_bytes() == hat_before
    assert sum(m.startswith("skip") for m in log) == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_run_leaves_no_record(tmp_path, exc):
    out = tmp_path / "out"
    trackers = []

    class Failing(FakeTracker):
        def log_epoch(self, task, entry):
            super().log_epoch(task, entry)
            if task == 2:
                raise exc("interrupted in the middle")

    def factory(e):
        trackers.append(Failing())
        return trackers[-1]

    exps = [Experiment("split-digits", "hat", 0, FAST)]
    # an interrupt stops the command; a failing run is reported after the others ran
    with pytest.raises(KeyboardInterrupt if exc is KeyboardInterrupt else RunsFailed):
        run_all(exps, out, progress=False, log=lambda m: None, tracker_factory=factory)
    path = record_path(out, "split-digits", "hat", 0)
    assert not path.exists()
    assert [p.name for p in (out / "runs").iterdir()] == []  # no temporary files either
    assert trackers[0].aborted == 1 and trackers[0].finished == []
    assert {t for t, _ in trackers[0].epochs} == {0, 1, 2}
    # the next call runs it (nothing marks it complete)
    run_all(exps, out, progress=False, log=lambda m: None)
    assert is_complete(path)


def test_interruption_keeps_earlier_finished_records(tmp_path):
    out = tmp_path / "out"

    def factory(exp):
        return FakeTracker(fail_at_task=1 if exp.strategy == "hat" else None)

    with pytest.raises(KeyboardInterrupt):
        run_all(_exps(), out, progress=False, log=lambda m: None, tracker_factory=factory)
    assert is_complete(record_path(out, "split-digits", "naive", 0))
    assert not record_path(out, "split-digits", "hat", 0).exists()
    assert len(list((out / "runs").iterdir())) == 1


def test_experiments_for_orders_seeds_outermost():
    exps = experiment.experiments_for("split-digits", ["naive", "hat"], [0, 1], FAST, tag="x")
    assert [(e.seed, e.strategy) for e in exps] == [(0, "naive"), (0, "hat"), (1, "naive"),
                                                    (1, "hat")]
    assert all(e.tag == "x" and e.overrides == FAST for e in exps)


# ----------------------------------------------------------------------------- ResNets
#: a small ResNet-32-family net (8 layers, width 4) and the stock ResNet-18 on the digits
RESNET_MODEL = {"resnet32": {"family": "resnet32", "blocks": "1", "hidden": "4"},
                "resnet18": {"family": "resnet18"}}
OLD_MODEL_KEYS = {"family", "hidden", "layers", "dropout", "input_dropout"}


def tiny_digits(n_tasks: int = 2, n_train: int = 40, n_test: int = 20):
    """The first tasks of split-digits, cut to a few samples: every strategy in seconds."""
    scen = get_scenario("split-digits").build(0)
    tasks = [dataclasses.replace(t, train_x=t.train_x[:n_train], train_y=t.train_y[:n_train],
                                 test_x=t.test_x[:n_test], test_y=t.test_y[:n_test])
             for t in scen.tasks[:n_tasks]]
    return dataclasses.replace(scen, tasks=tasks)


def _resolve(scenario: str, strategy: str = "naive", model=None, **kw):
    spec = get_scenario(scenario)
    over = {"model": dict(model)} if model is not None else {}
    return resolve(Experiment(scenario, strategy, 0, over), spec.valid_fraction, spec.embedded,
                   spec.network, **kw)


@pytest.mark.parametrize("scenario,model,hidden,blocks,stem", [
    ("split-digits", {}, 100, None, None),
    ("split-digits", {"family": "resnet32"}, 16, 5, None),
    ("split-digits", {"family": "resnet32", "blocks": "1", "hidden": "8"}, 8, 1, None),
    ("split-digits", {"family": "resnet18"}, None, None, "auto"),
    ("cifar", {"family": "resnet32"}, 16, 5, None),
    ("cifar", {"family": "resnet18", "stem": "imagenet"}, None, None, "imagenet"),
    ("cifar", {"family": "mlp"}, 2000, None, None),
    ("cifar", {}, 2048, None, None),
])
def test_model_defaults_per_family(scenario, model, hidden, blocks, stem):
    """The embedded default hidden=100 is the MLP's; each ResNet keeps its own."""
    cfg = _resolve(scenario, model=model)
    assert (cfg.model.hidden, cfg.model.blocks, cfg.model.stem) == (hidden, blocks, stem)


@pytest.mark.parametrize("family", ["resnet18", "resnet32"])
@pytest.mark.parametrize("key", ["layers", "dropout", "input_dropout"])
def test_mlp_only_model_settings_are_refused_for_resnets(family, key):
    value = "3" if key == "layers" else "0.3"
    with pytest.raises(ConfigError, match=f"model.{key} applies to the MLP only: {family}"):
        _resolve("split-digits", model={"family": family, key: value})


@pytest.mark.parametrize("model", [{"blocks": "2"}, {"family": "mlp", "blocks": "2"},
                                   {"family": "alexnet", "blocks": "2"},
                                   {"family": "resnet18", "blocks": "2"}])
def test_blocks_is_refused_for_families_other_than_resnet32(model):
    with pytest.raises(ConfigError, match="model.blocks applies to resnet32 only"):
        _resolve("cifar", model=model)


def test_hidden_is_refused_for_resnet18_with_the_fix():
    with pytest.raises(ConfigError) as info:
        _resolve("cifar", model={"family": "resnet18", "hidden": "64"})
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("model.hidden=64 does not apply to resnet18")
    assert "remove model.hidden" in msg and "model.family=resnet32" in msg


@pytest.mark.parametrize("family", ["resnet18", "resnet32"])
def test_resnets_on_flat_inputs_are_one_config_error(family):
    with pytest.raises(ConfigError, match=f"model.family={family} needs image inputs"):
        _resolve("split-digits", model={"family": family}, input_shape=(64,))
    _resolve("split-digits", model={"family": "mlp"}, input_shape=(64,))  # the MLP takes them
    # through the runner: refused before anything trains
    scen = tiny_digits()
    flat = dataclasses.replace(scen, input_shape=(64,), tasks=[
        dataclasses.replace(t, train_x=t.train_x.flatten(1), test_x=t.test_x.flatten(1))
        for t in scen.tasks])
    seen = []
    exp = Experiment("split-digits", "naive", 0,
                     {"train": {"epochs": 1}, "model": {"family": family}})
    with pytest.raises(ConfigError, match="needs image inputs"):
        run_experiment(exp, flat, hooks=RunHooks(on_epoch=lambda t, e: seen.append(e)))
    assert seen == []


@pytest.mark.parametrize("strategy", ["pnn", "pathnet"])
@pytest.mark.parametrize("family", ["resnet18", "resnet32"])
def test_layerwise_strategies_refuse_resnets(strategy, family):
    with pytest.raises(ConfigError) as info:
        _resolve("split-digits", strategy, model={"family": family})
    msg = str(info.value)
    assert msg.startswith(f"{strategy} rebuilds the trunk layer by layer")
    assert "model.family mlp or alexnet only, not " + family in msg and "\n" not in msg
    for ok in ("mlp", "alexnet"):
        assert get_strategy(strategy).families == ("mlp", "alexnet")
        _resolve("cifar", strategy, model={"family": ok})


def test_layerwise_refusal_comes_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from benchmark import cli

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["run", "--no-progress", "--wandb", "disabled", "--scenario",
                     "split-digits", "--strategies", "naive,pnn", "--set",
                     "model.family=resnet32", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: pnn rebuilds the trunk layer by layer")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("model,keys", [
    ({}, OLD_MODEL_KEYS),
    ({"family": "resnet32"}, OLD_MODEL_KEYS | {"blocks"}),
    ({"family": "resnet18"}, OLD_MODEL_KEYS - {"hidden"} | {"stem"}),
])
def test_record_keeps_only_the_model_keys_that_apply(model, keys):
    """Records of the MLP and the AlexNet-like net keep exactly their keys (earlier results
    folders stay resumable); ResNet records add theirs."""
    exp = Experiment("split-digits", "naive", 0, {"model": model} if model else {})
    spec = get_scenario("split-digits")
    params = experiment.record_params(exp, resolve(exp, spec.valid_fraction, spec.embedded,
                                               spec.network))
    assert set(params["model"]) == keys
    assert None not in params["model"].values()


def test_naive_trains_a_resnet8_on_split_digits_in_one_epoch():
    over = {"train": {"epochs": "1"}, "model": {"family": "resnet32", "blocks": "1"}}
    rec = run_experiment(Experiment("split-digits", "naive", 0, over))
    validate_record(rec)
    assert rec["params"]["model"]["family"] == "resnet32"
    assert rec["params"]["model"]["blocks"] == 1 and rec["params"]["model"]["hidden"] == 16
    assert rec["epochs"] == [1] * 5
    acc = np.asarray(rec["accuracy"])
    assert np.isfinite(acc).all() and acc.shape == (5, 5)
    # it learns: each task right after training it, well above the 0.5 of a digit pair
    assert np.diag(acc).mean() > 0.75


@pytest.mark.parametrize("family", ["resnet32", "resnet18"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_trains_a_resnet_or_refuses_it(strategy, family, monkeypatch):
    """Every registered strategy builds and trains with the ResNet trunk (hat: per-task
    BatchNorm, waits on the HAT side), or refuses it with one ConfigError before training."""
    built = []
    real = runner.build_model

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(runner, "build_model", spy)
    over = {"train": {"epochs": "1", "batch_size": "16"}, "model": RESNET_MODEL[family]}
    if strategy == "packnet":  # (its 10 retraining epochs after pruning: one is enough here)
        over["packnet"] = {"post_prune_epochs": "1"}
    exp = Experiment("split-digits", strategy, 0, over)
    if get_strategy(strategy).families is not None:
        with pytest.raises(ConfigError, match=f"^{strategy} rebuilds the trunk"):
            run_experiment(exp, tiny_digits())
        assert built == []
        return
    rec = run_experiment(exp, tiny_digits())
    validate_record(rec)
    acc = np.asarray(rec["accuracy"])
    assert acc.shape == (2, 2) and np.isfinite(acc).all()
    assert all(len(h) == 1 for h in rec["history"])
    assert rec["params"]["model"]["family"] == family
    trunk_type = torchvision.models.ResNet if family == "resnet18" else CifarResNet
    assert built and all(isinstance(m.trunk, trunk_type) for m in built)
    assert all(isinstance(m, HATNet) == (strategy == "hat") for m in built)
