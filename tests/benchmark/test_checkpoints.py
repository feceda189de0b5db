"""Per-experience checkpoints and resuming inside a run (benchmark/checkpoints/), in-process:
what a checkpoint holds (the live run's state, restored into a freshly built strategy), atomic
writes, state that cannot be checkpointed, settings refused on resume, ``--restart``,
``--keep-checkpoints``, removal after the record, the W&B run continued (a fake wandb), and
``tune`` resuming. The kill tests in real processes are in
``tests/system/test_checkpoints_kill.py``.
"""

from __future__ import annotations

import random
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from avalanche.core import SupervisedPlugin

from benchmark import checkpoints, cli, tracking
from benchmark.checkpoints import CheckpointError
from benchmark.checkpoints import state as checkpoint_state
from benchmark.checkpoints import store as checkpoint_store
from benchmark.experiment import Experiment
from benchmark.records import read_record, record_name, record_path
from benchmark.run import executors, runner
from strategies import STRATEGIES
from tests.support.cli import tree
from tests.support.records import comparable
from tests.support.runs import BASE_ONE_THREAD as BASE

SCENARIO = "split-digits"
@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One torch thread, as the command line's default ``--threads 1``."""


class Stop(Exception):
    """Ends a run at a chosen point of a test."""


def stop_after(monkeypatch, task: int, exc: type[BaseException] = KeyboardInterrupt) -> None:
    """The run stops right after its checkpoint of ``task`` (1-based) is written, as the
    process would at ``HATBENCH_KILL_AFTER_TASK``."""
    real = checkpoints.after_save

    def after_save(done):
        real(done)
        if done == task:
            raise exc

    monkeypatch.setattr(checkpoint_store, "after_save", after_save)


def run(exp: Experiment, out: Path, **kw) -> dict:
    path = record_path(out, exp.scenario, exp.strategy, exp.seed, exp.tag)
    return executors.run_and_write(exp, path, None, out=out, data_root=Path("data"),
                                device="cpu", log=kw.pop("log", lambda m: None), **kw)


# ------------------------------------------------------------------ comparing live states
def _same(a: Any, b: Any, ka, kb, where: str, depth: int = 0) -> None:
    """``a`` (the live run's) and ``b`` (the restored run's) hold the same state: live
    objects are the same ones (by their key in each strategy), tensors equal, modules with
    equal state dicts, everything else equal or made of equal parts."""
    if depth > 12:
        return
    ha, hb = ka.by_id.get(id(a)), kb.by_id.get(id(b))
    if ha is not None and ha[1] is a:
        assert hb is not None and hb[1] is b and hb[0] == ha[0], f"{where}: live {ha[0]}"
        return
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where}: tensors differ"
        sa, sb = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
        live_a = ka.storages.get((str(a.device), sa))
        if live_a is not None:  # a view of a live tensor stays a view of its counterpart
            live_b = kb.storages.get((str(b.device), sb))
            assert live_b is not None and live_b[0] == live_a[0], f"{where}: not a view"
    elif isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb), where
        for k in sa:
            _same(sa[k], sb[k], ka, kb, f"{where}.{k}", depth + 1)
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            _same(a[k], b[k], ka, kb, f"{where}[{k!r}]", depth + 1)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, ka, kb, f"{where}[{i}]", depth + 1)
    elif isinstance(a, types.MethodType):
        assert a.__func__ is b.__func__, where
        _same(a.__self__, b.__self__, ka, kb, f"{where}.__self__", depth + 1)
    elif isinstance(a, int | float | str | bool | bytes | set | frozenset | torch.device
                    | torch.dtype | type(None) | types.BuiltinFunctionType | types.FunctionType):
        assert a == b or (a != a and b != b), f"{where}: {a!r} vs {b!r}"  # (NaN == NaN)
    elif hasattr(a, "__dict__"):
        _same(vars(a), vars(b), ka, kb, where, depth + 1)
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_same_state(live, own_live, restored, own_restored) -> None:
    """The restored strategy continues from where the live one was."""
    ka, kb = checkpoint_state._Relink(live), checkpoint_state._Relink(restored)
    sa, sb = live.model.state_dict(), restored.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"model {k}"
    _same(checkpoint_state._module_attributes(live.model),
          checkpoint_state._module_attributes(restored.model), ka, kb, "model attributes")
    names_a = {id(p): n for n, p in live.model.named_parameters()}
    names_b = {id(p): n for n, p in restored.model.named_parameters()}
    assert type(live.optimizer) is type(restored.optimizer)
    assert ([[names_a[id(p)] for p in g["params"]] for g in live.optimizer.param_groups]
            == [[names_b[id(p)] for p in g["params"]] for g in restored.optimizer.param_groups])
    state_a = {names_a[id(p)]: s for p, s in live.optimizer.state.items()}
    state_b = {names_b[id(p)]: s for p, s in restored.optimizer.state.items()}
    _same(state_a, state_b, ka, kb, "optimizer state")
    assert (list(live.optimized_param_id or {}) == list(restored.optimized_param_id or {}))
    kept_a = checkpoint_state._kept_plugins(live, own_live)
    kept_b = checkpoint_state._kept_plugins(restored, own_restored)
    assert [type(p) for _, p in kept_a] == [type(p) for _, p in kept_b]
    assert len(kept_a) >= 2  # the strategy's own plugin(s) and Avalanche's clock at least
    for (_, pa), (_, pb) in zip(kept_a, kept_b, strict=True):
        skip = checkpoint_state._transient(pa)
        _same({k: v for k, v in vars(pa).items() if k not in skip},
              {k: v for k, v in vars(pb).items() if k not in skip}, ka, kb,
              type(pa).__name__)
    extra = sorted(set(vars(live)) - checkpoints.TEMPLATE_ATTRIBUTES)
    _same({k: getattr(live, k) for k in extra}, {k: getattr(restored, k) for k in extra},
          ka, kb, "strategy")


#: strategies whose plugins keep state of different kinds (Fisher/anchors, importances and
#: trajectories, a teacher model, gates and masks, merged trunks, a feature extractor, a
#: rehearsal memory when one is registered), under an optimizer with state across tasks
CONTENT = [s for s in ("ewc", "si", "lwf", "hat", "imm-mode", "lfl", "replay")
           if s in STRATEGIES]


@pytest.mark.parametrize("strategy", CONTENT)
def test_checkpoint_holds_the_runs_state_and_restores_it(tmp_path, monkeypatch, strategy):
    exp = Experiment(SCENARIO, strategy, 0, {"train": {
        "epochs": 1, "recipe": "fixed", "momentum": 0.9}})
    live: list = []
    real_capture = runner.capture_strategy

    def capture(strategy_, own):
        live.append((strategy_, own))
        return real_capture(strategy_, own)

    monkeypatch.setattr(runner, "capture_strategy", capture)
    stop_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(exp, tmp_path)
    # nothing drew since the checkpoint was written
    rng_at_save = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    folder = checkpoints.run_folder(tmp_path, exp)
    assert [p.name for p in folder.iterdir()] == ["task-002.pt"]
    state = checkpoints.read(folder / "task-002.pt")
    assert state["fingerprint"] == checkpoints.fingerprint(exp, "cpu", 1)
    assert (state["tasks_done"], state["n_tasks"]) == (2, 5)
    assert len(state["progress"]["accuracy"]) == len(state["progress"]["history"]) == 2
    assert torch.equal(state["rng"]["torch"], rng_at_save[0])
    assert np.array_equal(state["rng"]["numpy"][1].numpy(), rng_at_save[1])
    assert tuple(state["rng"]["python"][1]) == rng_at_save[2][1]
    assert state["strategy"]["optimizer"]["state"]["state"], "momentum buffers are kept"

    restored: list = []
    real_resume = runner.resume_checkpoint

    def resume(state_, progress, strategy_, own, tests, device):
        done = real_resume(state_, progress, strategy_, own, tests, device)
        rng = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        restored.append((strategy_, own, rng, done))
        raise Stop

    monkeypatch.setattr(runner, "resume_checkpoint", resume)
    with pytest.raises(Stop):
        run(exp, tmp_path)
    strategy_b, own_b, rng_b, done = restored[0]
    assert done == 2 and torch.equal(rng_b[0], rng_at_save[0])
    assert np.array_equal(rng_b[1], rng_at_save[1]) and rng_b[2] == rng_at_save[2]
    strategy_a, own_a = live[-1]
    assert strategy_b is not strategy_a
    assert_same_state(strategy_a, own_a, strategy_b, own_b)


@pytest.mark.parametrize(("strategy", "train", "protocol"), [
    ("naive", {"optimizer": "adam", "recipe": "fixed", "lr": 0.01}, "task"),
    ("hat", {"optimizer": "adamw", "recipe": "fixed", "lr": 0.01}, "task"),
    ("lwf", {}, "task"),
    ("lwf", {}, "class"),  # the teacher's and the model's expanding heads
    ("der", {}, "class"),  # logits stored over fewer classes than the head has now
    ("icarl", {}, "class"),
])
def test_resumed_run_gives_the_uninterrupted_record(tmp_path, monkeypatch, strategy, train,
                                                    protocol):
    """In one process (the kill tests do it across processes, for every strategy): optimizer
    state carried across tasks (recipe=fixed) and the paper's recipe, in both protocols."""
    exp = Experiment(SCENARIO, strategy, 0, {"train": {"epochs": 2, **train},
                                             "scenario": {"protocol": protocol}})
    whole = run(exp, tmp_path / "whole")
    with monkeypatch.context() as mp:
        stop_after(mp, 3)
        with pytest.raises(KeyboardInterrupt):
            run(exp, tmp_path / "cut")
    saved = checkpoints.read(checkpoints.checkpoint_path(
        checkpoints.run_folder(tmp_path / "cut", exp), 3))
    lines: list[str] = []
    resumed = run(exp, tmp_path / "cut", log=lines.append)
    name = record_name(SCENARIO, strategy, 0, protocol=protocol)
    assert lines == [f"resume {name} from task 4/5"]
    assert comparable(resumed) == comparable(whole)
    assert resumed["seconds"][:3] == saved["progress"]["seconds"]  # the original times
    assert not (tmp_path / "cut" / "checkpoints").exists()  # removed with the record


# ------------------------------------------------------------------ writes
def test_write_is_atomic_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints" / "run"
    checkpoints.write(folder, 1, {"fingerprint": {"a": 1}, "x": torch.arange(3)})
    real_save = torch.save

    def torn(obj, f, *a, **kw):  # half a file, then the process is interrupted
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.write(folder, 2, {"fingerprint": {"a": 2}})
    monkeypatch.setattr(torch, "save", real_save)
    assert tree(folder) == ["task-001.pt"]
    assert checkpoints.latest(folder) == folder / "task-001.pt"
    assert torch.equal(checkpoints.read(folder / "task-001.pt")["x"], torch.arange(3))
    # a SIGKILL leaves a temporary file; one between os.replace and the deletion leaves the
    # older checkpoint: the newest complete one is used, the next write removes the rest
    (folder / ".task-002.abc.pt").write_bytes(b"partial")
    checkpoints.write(folder, 3, {"fingerprint": {"a": 3}})
    assert tree(folder) == ["task-003.pt"]
    (folder / "task-001.pt").write_bytes((folder / "task-003.pt").read_bytes())
    assert checkpoints.latest(folder) == folder / "task-003.pt"
    checkpoints.write(folder, 4, {"fingerprint": {"a": 4}})
    assert tree(folder) == ["task-004.pt"]
    checkpoints.remove(folder)
    assert not (tmp_path / "checkpoints").exists()  # the empty parent goes too


# ------------------------------------------------------------------ what cannot be saved
class Holder(SupervisedPlugin):
    """A plugin holding ``value`` across experiences."""

    def __init__(self, value):
        super().__init__()
        self.value = value


class Scratch(Holder):
    checkpoint_transient = ("value",)


def _built_strategy(strategy: str = "naive"):
    """A strategy as the runner builds it (before training), and the runner's plugins."""
    exp = Experiment(SCENARIO, strategy, 0, {"train": {"epochs": 1}})
    got: dict = {}
    real = runner._make_strategy

    def make(*args, **kw):
        got["strategy"] = real(*args, **kw)
        got["own"] = args[4]
        raise Stop

    runner._make_strategy = make
    try:
        with pytest.raises(Stop):
            runner.run_experiment(exp)
    finally:
        runner._make_strategy = real
    return got["strategy"], got["own"]


def _generator():
    yield 1


@pytest.mark.parametrize(("value", "why"), [
    (lambda: 0, "lambda"),
    (_generator(), "generator"),
    ("experience", "holds a"),
])
def test_state_that_cannot_be_restored_fails_naming_the_plugin(value, why):
    strategy, own = _built_strategy()
    if value == "experience":
        from benchmark.data.scenarios import get_scenario, to_benchmark

        value = to_benchmark(get_scenario(SCENARIO).build(0, Path("data"))).train_stream[0]
    strategy.plugins.append(Holder(value))
    with pytest.raises(CheckpointError) as err:
        checkpoints.capture(strategy, own)
    msg = str(err.value)
    assert "test_checkpoints.Holder, attribute value" in msg and why in msg, msg


def test_declared_scratch_is_left_out_views_stay_views_generators_continue():
    strategy, own = _built_strategy()
    weight = strategy.model.heads["0"].weight
    view = weight.data[1]  # a plugin's view of a live parameter
    gen = torch.Generator().manual_seed(5)
    torch.rand(3, generator=gen)
    strategy.plugins += [Scratch(lambda: 0),
                         Holder({"row": view, "param": weight, "generator": gen})]
    state = checkpoints.capture(strategy, own)
    expected = torch.rand(4, generator=gen)
    fresh, own_b = _built_strategy()
    fresh.plugins += [Scratch(None), Holder(None)]
    checkpoints.restore(fresh, state, own_b)
    assert fresh.plugins[-2].value is None  # not saved: the fresh value stays
    held = fresh.plugins[-1].value
    new_weight = fresh.model.heads["0"].weight
    assert held["param"] is new_weight
    assert torch.equal(held["row"], new_weight.data[1])
    with torch.no_grad():
        new_weight[1].add_(1.0)
    assert torch.equal(held["row"], new_weight.data[1])  # shares the new parameter's storage
    assert torch.equal(torch.rand(4, generator=held["generator"]), expected)


# ------------------------------------------------------------------ command line
def _interrupted_cli(monkeypatch, out: Path, strategy: str, task: int, *extra: str) -> int:
    with monkeypatch.context() as mp:
        stop_after(mp, task)
        return cli.main(["run", *BASE, "--scenario", SCENARIO, "--strategies", strategy,
                         "--epochs", "1", "--out", str(out), *extra])


def test_other_settings_are_refused_and_restart_discards_only_this_commands(
        in_tmp, monkeypatch, capsys):
    out = in_tmp / "out"
    assert _interrupted_cli(monkeypatch, out, "naive", 2) == 130
    assert _interrupted_cli(monkeypatch, out, "hat", 1) == 130
    capsys.readouterr()
    before = tree(out)
    ckpt = checkpoints.run_folder(out, Experiment(SCENARIO, "naive", 0)) / "task-002.pt"
    assert str(ckpt.relative_to(out)) in before
    for extra, key, old, new in [
        (["--set", "train.lr=0.1"], "params.train.lr", "0.05", "0.1"),
        (["--threads", "2"], "threads", "1", "2"),
        (["--epochs", "3"], "params.train.epochs", "1", "3"),
    ]:
        code = cli.main(["run", *BASE, "--scenario", SCENARIO, "--strategies", "naive",
                         "--epochs", "1", "--out", str(out), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert err[0] == (f"error: {ckpt} is a checkpoint of a run with {key}={old}, this "
                          f"command runs {key}={new}; use --restart to discard it"), err
        assert tree(out) == before  # nothing written
    code = cli.main(["run", *BASE, "--scenario", SCENARIO, "--strategies", "naive",
                     "--epochs", "1", "--out", str(out), "--set", "train.lr=0.1",
                     "--restart"])
    assert code == 0
    assert "resume" not in capsys.readouterr().out  # trained from the first task
    rec = read_record(record_path(out, SCENARIO, "naive", 0))
    assert rec["params"]["train"]["lr"] == 0.1
    fresh = runner.run_experiment(Experiment(SCENARIO, "naive", 0, {
        "train": {"epochs": 1, "lr": 0.1}}))
    assert comparable(rec) == comparable(fresh)
    # hat's checkpoint is not this command's: kept
    hat = checkpoints.run_folder(out, Experiment(SCENARIO, "hat", 0))
    assert [p.name for p in hat.iterdir()] == ["task-001.pt"]
    assert not checkpoints.run_folder(out, Experiment(SCENARIO, "naive", 0)).exists()


def test_checkpoints_written_per_task_removed_after_the_record_or_kept(
        in_tmp, monkeypatch, capsys):
    written: list[int] = []
    real = checkpoints.write

    def write(folder, done, state):
        written.append(done)
        path = real(folder, done, state)
        assert [p.name for p in Path(folder).iterdir()] == [path.name]  # the previous gone
        return path

    monkeypatch.setattr(checkpoint_store, "write", write)
    args = ["run", *BASE, "--scenario", SCENARIO, "--strategies", "si", "--epochs", "1"]
    assert cli.main([*args, "--out", "a"]) == 0
    assert written == [1, 2, 3, 4, 5]
    assert tree(in_tmp / "a") == ["runs", "runs/split-digits__si__s0.json"]
    assert cli.main([*args, "--out", "b", "--keep-checkpoints"]) == 0
    folder = checkpoints.run_folder(in_tmp / "b", Experiment(SCENARIO, "si", 0))
    assert [p.name for p in folder.iterdir()] == ["task-005.pt"]
    first = read_record(record_path(in_tmp / "b", SCENARIO, "si", 0))
    # the record is rebuilt from the last checkpoint without training again
    record_path(in_tmp / "b", SCENARIO, "si", 0).unlink()
    capsys.readouterr()
    assert cli.main([*args, "--out", "b"]) == 0
    out = capsys.readouterr().out
    assert "resume split-digits__si__s0.json: all 5 tasks trained" in out
    again = read_record(record_path(in_tmp / "b", SCENARIO, "si", 0))
    assert comparable(again) == comparable(first) and again["seconds"] == first["seconds"]
    assert tree(in_tmp / "b") == tree(in_tmp / "a")  # removed this time


def test_tune_resumes_its_runs(in_tmp, monkeypatch, capsys):
    args = ["tune", "--scenario", SCENARIO, "--strategies", "lwf", "--grid", "lwf.alpha=1,2",
            "--grid", "lwf.temperature=2", "--seeds", "100", "--epochs", "1",
            "--no-progress", "--threads", "1"]
    assert cli.main([*args, "--out", "whole", "--preset", "whole.yaml"]) == 0
    with monkeypatch.context() as mp:
        stop_after(mp, 2)
        assert cli.main([*args, "--out", "cut", "--preset", "cut.yaml"]) == 130
    capsys.readouterr()
    assert cli.main([*args, "--out", "cut", "--preset", "cut.yaml"]) == 0
    assert "from task 3/5" in capsys.readouterr().out
    whole = sorted((in_tmp / "whole" / "runs").iterdir())
    cut = sorted((in_tmp / "cut" / "runs").iterdir())
    assert [p.name for p in whole] == [p.name for p in cut] and len(whole) == 2
    for a, b in zip(whole, cut, strict=True):
        assert comparable(read_record(a)) == comparable(read_record(b))
    chosen = [line for line in (in_tmp / "whole.yaml").read_text().splitlines()
              if "lwf." in line and "alpha" in line]
    assert chosen and chosen == [line for line in (in_tmp / "cut.yaml").read_text().splitlines()
                                 if "lwf." in line and "alpha" in line]


# ------------------------------------------------------------------ W&B: one run, continued
class _FakeRun:
    def __init__(self, wandb: FakeWandb, kwargs: dict, folder: Path):
        self.kwargs, self.id, self.rows, self.exit_codes = kwargs, kwargs["id"], [], []
        self.offline = kwargs.get("mode") == "offline"
        self.disabled = False
        self.dir = str(folder)
        self.settings = types.SimpleNamespace(sync_file=str(folder / "none.wandb"))
        self.config = types.SimpleNamespace(update=lambda *a, **k: None)
        self.summary = types.SimpleNamespace(update=lambda *a, **k: None)
        wandb.runs.append(self)

    def log(self, data):
        self.rows.append(dict(data))

    def define_metric(self, *a, **k):
        pass

    def log_artifact(self, art):
        pass

    def finish(self, exit_code=0):
        self.exit_codes.append(exit_code)


class FakeWandb(types.ModuleType):
    """What ``benchmark.tracking`` uses of wandb, recording every run started."""

    def __init__(self, folder: Path):
        super().__init__("wandb")
        self.folder, self.runs = folder, []
        self.Settings = lambda **kw: types.SimpleNamespace(**kw)
        self.Table = lambda **kw: kw
        self.Image = lambda *a, **kw: a
        self.Artifact = lambda *a, **kw: types.SimpleNamespace(add_file=lambda *a, **k: None)

    def setup(self, settings=None):
        pass

    def login(self, *a, **k):
        return True

    def init(self, **kwargs):
        return _FakeRun(self, kwargs, self.folder)


def test_wandb_run_resumes_with_its_id_and_continues_its_history(tmp_path, monkeypatch):
    fake = FakeWandb(tmp_path / "wandb-files")
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    exp = Experiment(SCENARIO, "hat", 0, {"train": {"epochs": 2}})
    out = tmp_path / "out"

    def factory():
        return tracking.TrackerFactory("offline", "p", None, out)

    with monkeypatch.context() as mp:
        stop_after(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            executors.run_all([exp], out, progress=False, tracker_factory=factory(),
                           log=lambda m: None)
    assert len(fake.runs) == 1 and fake.runs[0].exit_codes == [1]  # aborted
    assert "resume" not in fake.runs[0].kwargs
    executors.run_all([exp], out, progress=False, tracker_factory=factory(), log=lambda m: None)
    first, second = fake.runs
    assert second.id == first.id and second.kwargs["resume"] == "allow"
    assert second.exit_codes == [0]
    rec = read_record(record_path(out, SCENARIO, "hat", 0))
    epochs = [r for run_ in (first, second) for r in run_.rows if "epoch" in r]
    # the resumed part continues the global step; the interrupted part's last task (whose
    # checkpoint was written) is not logged twice
    assert [r["global_step"] for r in epochs] == list(range(1, sum(rec["epochs"]) + 1))
    tasks = [r["task"] for r in epochs]
    assert tasks == [t for t, n in enumerate(rec["epochs"]) for _ in range(n)]
    after = [r["trained_tasks"] for run_ in (first, second) for r in run_.rows
             if "trained_tasks" in r]
    assert after == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ integrity
@pytest.mark.parametrize("damage", ["flip", "truncate", "unsealed"])
def test_a_damaged_checkpoint_is_refused_in_one_line_and_no_record_is_written(
        in_tmp, monkeypatch, capsys, damage):
    out = in_tmp / "o"
    assert _interrupted_cli(monkeypatch, out, "hat", 2) == 130
    path = out / "checkpoints" / f"{SCENARIO}__hat__s0" / "task-002.pt"
    data = bytearray(path.read_bytes())
    if damage == "flip":  # 400 bytes inside the payload (a weight), the digest kept
        mid = len(data) // 2
        data[mid:mid + 400] = bytes(b ^ 0xFF for b in data[mid:mid + 400])
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:  # the bare torch file of an older version: no digest
        data = data[: data.rindex(checkpoint_store.DIGEST_TAG)]
    path.write_bytes(bytes(data))
    capsys.readouterr()
    code = cli.main(["run", *BASE, "--scenario", SCENARIO, "--strategies", "hat",
                     "--epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and str(path) in err and "--restart" in err
    assert ("damaged" if damage == "flip" else "no checkpoint digest") in err
    assert "_use_new_zipfile_serialization" not in err
    assert not record_path(out, SCENARIO, "hat", 0).exists()
    # --restart discards it and the run completes
    assert cli.main(["run", *BASE, "--scenario", SCENARIO, "--strategies", "hat",
                     "--epochs", "1", "--out", str(out), "--restart"]) == 0
    assert record_path(out, SCENARIO, "hat", 0).exists()


def test_the_digest_covers_every_byte():
    payload = b"checkpoint bytes"
    sealed = checkpoint_store.seal(payload)
    assert checkpoint_store.unseal(sealed, Path("x")) == payload
    for i in range(len(payload)):
        bad = bytearray(sealed)
        bad[i] ^= 1
        with pytest.raises(CheckpointError, match="damaged"):
            checkpoint_store.unseal(bytes(bad), Path("x"))


# ------------------------------------------------------------------ scratch left out
@pytest.mark.parametrize("forwards", [0, 1, 3, 5, 9])
def test_dropout_masks_are_drawn_again_on_resume_not_saved(monkeypatch, forwards):
    """A checkpoint keeps where the dropout is in its pre-drawn chunk and the generator state
    the chunk came from, not the chunk; the resumed module continues with the same masks
    (across chunk boundaries) and leaves the global generator where the live one does."""
    from benchmark.networks import Dropout

    monkeypatch.setattr(Dropout, "CHUNK", 40)  # a 12-element input: 3 forwards per chunk
    torch.manual_seed(3)
    live = torch.nn.Sequential(Dropout(0.5))
    x = torch.ones(3, 4)
    for _ in range(forwards):
        live(x)
    attrs = checkpoint_state._module_attributes(live)
    assert "_masks" not in attrs["0"]
    resumed = torch.nn.Sequential(Dropout(0.5))
    resumed(x)  # masks of its own before the restore: not kept
    checkpoint_state.restore_module_attributes(resumed, attrs)
    rng = torch.get_rng_state()
    want = [live(x) for _ in range(7)]
    after = torch.get_rng_state()
    torch.set_rng_state(rng)
    got = [resumed(x) for _ in range(7)]
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert torch.equal(torch.get_rng_state(), after)


#: a checkpoint's bytes beyond the copies of the model counted below (the RNG states, the
#: progress rows, settings, the plugins' small tensors, containers): measured 37-63 kB here,
#: where the dropout masks alone were 12.6 MB
CHECKPOINT_OVERHEAD = 100_000


@pytest.mark.parametrize("strategy", ["naive", "hat", "ewc", "lwf"])
def test_checkpoints_hold_state_not_scratch(tmp_path, monkeypatch, strategy):
    """A checkpoint is the state a resume needs (weights, optimizer state, the plugin's own
    tensors: EWC's Fisher and anchors, LwF's teacher, HAT's cumulative masks) plus a small
    overhead: no pre-drawn dropout masks and no HAT step buffers."""
    exp = Experiment(SCENARIO, strategy, 0, {"train": {"epochs": 1, "momentum": 0.9}})
    stop_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(exp, tmp_path)
    path = checkpoints.run_folder(tmp_path, exp) / "task-002.pt"
    state = checkpoints.read(path)
    model = sum(t.numel() * t.element_size() for t in state["strategy"]["model"].values())
    # weights and momentum, plus EWC's Fisher and anchors per task trained (2 here) and LwF's
    # teacher
    copies = {"naive": 2, "hat": 2, "ewc": 6, "lwf": 3}[strategy]
    assert path.stat().st_size <= copies * model + CHECKPOINT_OVERHEAD, (
        path.stat().st_size, model)
