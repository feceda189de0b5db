"""Speed benchmark, measured side by side in one run (``make bench``).

1. Epoch time of HAT vs Naive on the same network and data, on the *second* task (where HAT's
   gradient conditioning and update masking are active), batch 64:
   - ``digits``: the embedded MLP 64-100-100 on the permuted-digits scenario's first two
     tasks (real 8×8 digits), with the paper's recipe: 10% held out and a validation pass
     (and best-weights copy) after every epoch;
   - ``mlp``: the MLP 784-800-800-10 on 8,000 samples of 784 features;
   - ``alexnet``: the AlexNet-like network on 2,000 samples of 3×32×32;
   - ``resnet18`` (only with ``--cases``): torchvision's ResNet-18 with the CIFAR stem on 256
     samples of 3×32×32 (HAT: per-task BatchNorm and gate groups; Naive: shared BatchNorm).
2. Epoch time of Naive through the suite (the registry's Avalanche strategy with the suite's
   training plugins, FastDataPlugin and TrainingRecipePlugin, and the runner's per-strategy
   gradient clipping: a global norm per step, as the reference's loops do; the raw loop does
   not clip); without the runner's per-epoch history and accuracy collectors, which add a
   few small operations per step) vs a hand-written eager PyTorch loop over the same tensors
   (same model, ``torch.optim.SGD``, batch size, shuffling and, for ``digits``, the same
   validation split, pass and copy of the best weights).
3. Epoch time of HAT through the suite vs a raw HAT loop (``raw-hat``, sequential trunks:
   not ``resnet18``): the raw loop's batches, split and validation with HAT's step written
   out as the paper gives it (annealed s, gates σ(s·e), c·R, conditioning by the cumulative
   mask, embedding-gradient compensation, clipping, SGD, embedding clamp), after one untimed
   epoch of task 1. suite-HAT / raw-HAT is the suite's machinery around HAT; raw-HAT /
   raw-Naive is the method's own cost.
4. Evaluation throughput (samples/s) and peak memory (peak RSS of a fresh process per case
   on CPU; ``torch.cuda.max_memory_allocated`` on GPU).
5. With ``--unfolded``: HAT again with every gate multiplying its layer's output
   (``HATPlugin.fold_gates`` off, as the reference implementation gates), in the same rounds;
   ``hat-unfolded/hat`` is what folding the gates into the parameters buys.
6. Where the time of a step goes (``--breakdown``, on by default): ms per step of each
   phase of Avalanche's training iteration (forward, loss, backward, optimizer step and the
   plugin callbacks around them), timed in place for Naive and HAT, per case.

Timing runs in one process in interleaved rounds (naive, hat, raw, raw-hat, naive, …), so
that background load hits every side alike; each round trains ``--warmup`` untimed epochs,
then ``--reps`` timed ones; the table shows median and spread (min–max) over all rounds.
Writes ``results/bench.json`` with ``hat_over_naive``, ``suite_over_raw``,
``hat_over_raw_hat`` and ``raw_hat_over_raw`` (medians, MLP case) plus everything else
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    "digits": dict(input_shape=(1, 8, 8), n=None, family="mlp", hidden=100, recipe=True,
                   scenario="permuted-digits"),
    "mlp": dict(input_shape=(1, 28, 28), n=8000, family="mlp", hidden=800),
    "alexnet": dict(input_shape=(3, 32, 32), n=2000, family="alexnet", hidden=2048),
    # opt-in (--cases resnet18): torchvision's ResNet-18, CIFAR stem, per-task BN for HAT
    "resnet18": dict(input_shape=(3, 32, 32), n=256, family="resnet18", hidden=None),
}
#: targets per case (ratios of medians): (HAT/Naive, suite/raw, suite-HAT/raw-HAT)
TARGETS = {"digits": (1.15, 1.05, 1.05), "mlp": (1.05, 1.05, 1.05),
           "alexnet": (1.05, 1.05, 1.05)}
TARGETS_GPU = (1.15, 1.10, 1.10)
#: the printed ratios: result key, label, numerator side, denominator side
RATIOS = (("hat_over_naive", "hat/naive", "hat", "naive"),
          ("suite_over_raw", "suite/raw", "naive", "raw"),
          ("hat_over_raw_hat", "suite-hat/raw-hat", "hat", "raw-hat"),
          ("raw_hat_over_raw", "raw-hat/raw", "raw-hat", "raw"),
          ("unfolded_over_hat", "hat-unfolded/hat", "hat-unfolded", "hat"))
VALID_FRACTION = 0.1


def _data(case: str, seed: int = 0):
    """Two tasks' training tensors (x, y): real digits for ``digits``, else random."""
    c = CASES[case]
    if c.get("scenario"):
        from benchmark.data.scenarios import get_scenario

        tasks = get_scenario(c["scenario"]).build(seed, ROOT / "data").tasks[:2]
        n = c["n"]
        return ([t.train_x[:n].float() for t in tasks], [t.train_y[:n] for t in tasks])
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(c["n"], *c["input_shape"], generator=g) for _ in range(2)]
    ys = [torch.randint(0, 10, (c["n"],), generator=g) for _ in range(2)]
    return xs, ys


def _steps_per_epoch(case: str) -> int:
    n = len(_data(case)[1][1])
    if CASES[case].get("recipe"):
        from strategies.training.recipe import split_indices

        n = len(split_indices(n, VALID_FRACTION, 0, 1)[0])
    return -(-n // 64)


def _stream(case: str):
    from avalanche.benchmarks import tensors_benchmark

    xs, ys = _data(case)
    return tensors_benchmark(
        train_tensors=list(zip(xs, ys, strict=True)),
        test_tensors=list(zip(xs, ys, strict=True)),
        task_labels=[0, 1],
        complete_test_set_only=False,
    )


def _model(case: str, gated: bool, device):
    from benchmark.networks import ModelConfig, build_model

    c = CASES[case]
    cfg = ModelConfig(family=c["family"], hidden=c["hidden"])
    return build_model(cfg, c["input_shape"], [10, 10], gated=gated).to(device)


class _EpochTimer:
    def __init__(self):
        from avalanche.core import SupervisedPlugin

        class P(SupervisedPlugin):
            def __init__(self):
                super().__init__()
                self.times: list[float] = []

            def before_training_epoch(self, strategy, **kw):
                if strategy.device.type == "cuda":
                    torch.cuda.synchronize()
                self._t = time.perf_counter()

            def after_training_epoch(self, strategy, **kw):
                if strategy.device.type == "cuda":
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter() - self._t)

        self.plugin = P()


#: phases of Avalanche's training iteration that the breakdown times (template methods)
PHASES = ("_before_forward", "forward", "criterion", "_before_backward", "backward",
          "_after_backward", "_before_update", "optimizer_step", "_after_update")


def _time_phases(strat, device, totals: dict[str, float]) -> None:
    """Wrap the strategy's phase methods (on the instance) to add their seconds to totals."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name in PHASES:
        method = getattr(strat, name)

        def timed(*args, _m=method, _n=name, **kwargs):
            sync()
            t = time.perf_counter()
            out = _m(*args, **kwargs)
            sync()
            totals[_n] = totals.get(_n, 0.0) + time.perf_counter() - t
            return out

        setattr(strat, name, timed)


def suite_epochs(case: str, strategy: str, epochs: int, device,
                 phases: dict[str, float] | None = None, fold: bool = True) -> list[float]:
    """Per-epoch seconds on task 2 through the suite's strategy and plugins.

    With ``phases``, task 2's phase times are added to it (seconds, see ``PHASES``);
    ``fold=False``: HAT multiplies every layer's output by its gate (``HATPlugin.fold_gates``).
    """
    from avalanche.training.plugins import EvaluationPlugin

    from strategies import FastDataPlugin, RecipeConfig, TrainConfig, TrainingRecipePlugin
    from strategies.registry import BuildContext, get_strategy, make_optimizer

    torch.manual_seed(0)
    spec = get_strategy(strategy)
    model = _model(case, spec.gated, device)
    recipe = "paper" if CASES[case].get("recipe") else "fixed"
    train = TrainConfig(epochs=1, recipe=recipe)
    timer = _EpochTimer()
    recipe_plugin = TrainingRecipePlugin(RecipeConfig(mode=recipe, valid_fraction=VALID_FRACTION))
    plugins = [FastDataPlugin(), recipe_plugin, timer.plugin]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin()
    ctx = BuildContext(model, make_optimizer(model.parameters(), train), train, plugins,
                       device, evaluator)
    config = spec.config()
    strat = spec.build(ctx, config)
    strat.plugins = [p for p in strat.plugins if p is not evaluator]  # as the runner does
    for p in strat.plugins:
        if hasattr(p, "fold_gates"):
            p.fold_gates = fold
    if not hasattr(config, "clipgrad"):  # the runner's per-strategy clipping (HAT: its own)
        from strategies.training.clipping import GradientClipPlugin

        strat.plugins.append(GradientClipPlugin(spec.clipgrad))
    bench = _stream(case)
    strat.train(bench.train_stream[0], eval_streams=[])
    strat.train_epochs = epochs
    timer.plugin.times.clear()
    if phases is not None:
        _time_phases(strat, device, phases)
    strat.train(bench.train_stream[1], eval_streams=[])
    return timer.plugin.times


def breakdown(case: str, epochs: int, device) -> dict:
    """ms per training step of each phase, Naive and HAT, timed in place (task 2)."""
    n_steps = epochs * _steps_per_epoch(case)
    out = {}
    for side in ("naive", "hat"):
        totals: dict[str, float] = {}
        times = suite_epochs(case, side, epochs, device, totals)
        step = {name.strip("_"): totals.get(name, 0.0) * 1e3 / n_steps for name in PHASES}
        step["rest"] = sum(times) * 1e3 / n_steps - sum(step.values())
        step["step"] = sum(times) * 1e3 / n_steps
        out[side] = step
    return out


def _recipe_split(case: str, x, y, device):
    """``(x, y, xv, yv)``: with the recipe (``digits``) the suite's held-out split of one
    task, else all of it for training and no validation (``xv``, ``yv`` None)."""
    if not CASES[case].get("recipe"):
        return x, y, None, None
    from strategies.training.recipe import split_indices

    tr, va = split_indices(len(x), VALID_FRACTION, 0, 1)
    tr, va = torch.as_tensor(tr, device=device), torch.as_tensor(va, device=device)
    return x[tr], y[tr], x[va], y[va]


def _valid_loss(model, forward, loss_fn, xv, yv) -> float:
    """Mean validation loss of ``forward(x)`` in evaluation mode, batches of 256."""
    model.eval()
    with torch.no_grad():
        total = sum(float(loss_fn(forward(xv[i : i + 256]), yv[i : i + 256]))
                    * len(yv[i : i + 256]) for i in range(0, len(xv), 256))
    model.train()
    return total / len(xv)


def _raw_loop_epochs(model, x, y, xv, yv, n_epochs: int, device, step, forward,
                     loss_fn) -> list[float]:
    """Seconds of each epoch of the raw loops: ``step(idx, i)`` on each randperm-shuffled
    batch of 64 (``i``: the position of its first sample); with validation data (``xv``) a
    validation pass of ``forward`` after each epoch and a copy of the weights when it
    improves, the best weights loaded at the end (as the recipe ends an experience)."""
    import copy

    best, best_state, times = float("inf"), None, []
    for _ in range(n_epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        order = torch.randperm(len(x)).to(device)
        for i in range(0, len(x), 64):
            step(order[i : i + 64], i)
        if xv is not None:
            loss = _valid_loss(model, forward, loss_fn, xv, yv)
            if loss < best:
                best, best_state = loss, copy.deepcopy(model.state_dict())
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    if best_state is not None:
        model.load_state_dict(best_state)
    return times


def raw_epochs(case: str, epochs: int, device) -> list[float]:
    """Per-epoch seconds of a hand-written loop: same model, ``torch.optim.SGD``, batch 64,
    randperm shuffle; with the recipe (``digits``) the same held-out split, a validation
    pass after each epoch and a copy of the weights when it improves."""
    torch.manual_seed(0)
    model = _model(case, False, device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    xs, ys = _data(case)
    x, y, xv, yv = _recipe_split(case, xs[1].to(device), ys[1].to(device), device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(idx, _i):
        opt.zero_grad()
        loss_fn(model(x[idx], 1), y[idx]).backward()
        opt.step()

    return _raw_loop_epochs(model, x, y, xv, yv, epochs, device, step,
                            lambda v: model(v, 1), loss_fn)


class _RawHATNet(torch.nn.Module):
    """The suite's plain network (``nn.Sequential`` trunk, one head per task) with one
    embedding per gated unit and task, gated in its own explicit forward as the authors' code
    does: each Linear/Conv2d output times a = σ(s·e) (Eq. 1); binary masks in evaluation."""

    def __init__(self, case: str, device):
        super().__init__()
        net = _model(case, False, device)
        if not isinstance(net.trunk, torch.nn.Sequential):
            raise ValueError(f"raw HAT loop: case {case!r} has no sequential trunk")
        self.trunk, self.heads = net.trunk, net.heads
        self.gated = [m for m in self.trunk if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        units = [m.weight.shape[0] for m in self.gated]
        self.emb = torch.nn.ParameterList(  # emb[task][layer]
            torch.nn.ParameterList(torch.nn.Parameter(torch.randn(u, device=device))
                                   for u in units) for _ in range(2))

    def forward(self, x, task: int, s: float):
        """Logits and gates; in evaluation mode the gates are the binary masks (``masks``)."""
        gates = ([torch.sigmoid(s * e) for e in self.emb[task]] if self.training
                 else [(e.detach() > 0).float() for e in self.emb[task]])
        k = 0
        for m in self.trunk:
            x = m(x)
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                g = gates[k]
                x = x * (g if x.dim() == 2 else g.view(1, -1, 1, 1))
                k += 1
        return self.heads[str(task)](x), gates

    def masks(self, task: int) -> list:
        """Binary masks at s = smax (gate > 0.5, i.e. e > 0), as the suite's default."""
        return [(e.detach() > 0).float() for e in self.emb[task]]

    def gradient_factors(self, cumulative: list) -> list:
        """Eq. 2: (parameter, 1 − min(a^{<t}_out_i, a^{<t}_in_j)) for every gated weight, and
        1 − a^{<t}_out_i for its bias; the first layer's input is ungated."""
        pairs, prev = [], None
        for m, out in zip(self.gated, cumulative, strict=True):
            w = m.weight
            if prev is None:
                pair = out.view(-1, 1).expand(w.shape[0], w.shape[1])
            else:
                inp = prev.repeat_interleave(w.shape[1] // len(prev))  # conv → flatten → fc
                pair = torch.minimum(out.view(-1, 1), inp.view(1, -1))
            pairs.append((w, (1 - pair).view(pair.shape + (1,) * (w.dim() - 2))
                          .expand_as(w).contiguous()))
            pairs.append((m.bias, 1 - out))
            prev = out
        return pairs


def raw_hat_epochs(case: str, epochs: int, device, smax: float = 400.0, c: float = 0.75,
                   thres_cosh: float = 50.0, thres_emb: float = 6.0,
                   clipgrad: float = 10000.0) -> list[float]:
    """Per-epoch seconds of HAT's step written out as the paper gives it, in a plain eager
    loop (the loop of ``raw_epochs``, same batches, split and validation), on task 2 after one
    untimed epoch of task 1: s annealed per batch (Eq. 3, from the batch's first sample
    index), gates σ(s·e), loss CE + c·R (Eq. 5), backward, weight and bias gradients times
    the cumulative mask's factors (Eq. 2), embedding gradients compensated (Eq. 6, cosh
    clamped at ``thres_cosh``), global-norm clipping, ``torch.optim.SGD`` step, embeddings
    clamped to ±``thres_emb``. Sequential trunks only (not ``resnet18``)."""
    torch.manual_seed(0)
    model = _RawHATNet(case, device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs, ys = _data(case)
    cumulative = [torch.zeros(m.weight.shape[0], device=device) for m in model.gated]
    times: list[float] = []
    for task, n_epochs in ((0, 1), (1, epochs)):
        x, y, xv, yv = _recipe_split(case, xs[task].to(device), ys[task].to(device), device)
        factors = model.gradient_factors(cumulative) if task > 0 else []
        free = [1 - a for a in cumulative]
        n_free = float(sum(f.sum() for f in free))
        embs = list(model.emb[task])
        params = list(model.parameters())

        def step(idx, i, x=x, y=y, task=task, factors=factors, free=free, n_free=n_free,
                 embs=embs, params=params):
            s = 1 / smax + (smax - 1 / smax) * i / len(x)  # Eq. 3
            opt.zero_grad()
            out, gates = model(x[idx], task, s)
            loss = loss_fn(out, y[idx])
            if n_free > 0:  # Eq. 5
                loss = loss + c * sum((a * f).sum() for a, f in zip(gates, free,
                                                                    strict=True)) / n_free
            loss.backward()
            with torch.no_grad():
                for p, f in factors:  # Eq. 2
                    p.grad.mul_(f)
                for e in embs:  # Eq. 6
                    num = torch.cosh(torch.clamp(s * e, -thres_cosh, thres_cosh)) + 1
                    e.grad.mul_(smax / s * num / (torch.cosh(e) + 1))
            torch.nn.utils.clip_grad_norm_(params, clipgrad)
            opt.step()
            with torch.no_grad():
                for e in embs:
                    e.clamp_(-thres_emb, thres_emb)

        task_times = _raw_loop_epochs(model, x, y, xv, yv, n_epochs, device, step,
                                      lambda v, t=task: model(v, t, 0.0)[0], loss_fn)
        if task > 0:
            times += task_times
        cumulative = [torch.maximum(a, m) for a, m in zip(cumulative, model.masks(task),
                                                          strict=True)]
    return times


def eval_throughput(case: str, strategy: str, device, reps: int = 3) -> float:
    from strategies.registry import get_strategy

    model = _model(case, get_strategy(strategy).gated, device).eval()
    xs, _ = _data(case)
    x = xs[0].to(device)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(reps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for i in range(0, len(x), 256):
                model(x[i : i + 256], 0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    return len(x) / best


def _round_ratios(a: list[float], b: list[float], reps: int) -> list[float]:
    """Per interleaved round: median of ``a``'s epochs over median of ``b``'s."""
    return [statistics.median(a[i : i + reps]) / statistics.median(b[i : i + reps])
            for i in range(0, len(a), reps)]


def _stats(times: list[float], warmup: int) -> dict:
    t = times[warmup:]
    return {"median": statistics.median(t), "min": min(t), "max": max(t), "n": len(t)}


def run_case(case: str, side: str, epochs: int, device) -> list[float]:
    if side == "raw":
        return raw_epochs(case, epochs, device)
    if side == "raw-hat":
        return raw_hat_epochs(case, epochs, device)
    if side == "hat-unfolded":
        return suite_epochs(case, "hat", epochs, device, fold=False)
    return suite_epochs(case, side, epochs, device)


def child(args) -> None:
    """Peak memory and evaluation throughput of one side, in a fresh process; prints JSON."""
    device = torch.device(args.device)
    run_case(args.case, args.side, 2, device)
    out = {}
    if not args.side.startswith("raw"):
        out["eval_samples_per_s"] = eval_throughput(args.case, args.side, device)
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out["peak_mem_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per round")
    p.add_argument("--reps", type=int, default=2, help="timed epochs per round")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per case")
    p.add_argument("--cases", default="digits,mlp,alexnet")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                   help="time the phases of a training step (default: on)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench.json")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per task instead of the case's (a quick smoke run)")
    p.add_argument("--unfolded", action="store_true",
                   help="also time HAT with every gate on its layer's output "
                        "(HATPlugin.fold_gates off): hat-unfolded/hat is what folding buys")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--side", help=argparse.SUPPRESS)
    return p


def main() -> int:
    p = _parser()
    args = p.parse_args()
    if args.samples is not None:
        if args.samples < 1:
            p.error(f"--samples must be >= 1, got {args.samples}")
        for c in CASES.values():
            c["n"] = args.samples
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the runner does, for every strategy alike
    if args.case:
        child(args)
        return 0
    device = torch.device(args.device)
    results: dict = {"device": args.device, "machine": platform.processor() or platform.machine(),
                     "cpus": os.cpu_count(), "threads": args.threads,
                     "torch": torch.__version__, "rounds": args.rounds, "reps": args.reps,
                     "samples": {k: len(_data(k)[1][1]) for k in args.cases.split(",")
                                 if k in CASES},
                     "cases": {}}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(0)
    for case in args.cases.split(","):
        if case not in CASES:
            p.error(f"--cases: unknown case {case!r}; choose among {', '.join(CASES)}")
        results["cases"][case] = _measure_case(case, args, device)
    mlp = results["cases"].get("mlp", {})
    for key, *_ in RATIOS:
        results[key] = mlp.get(key)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(args.out)
    _print_report(results, args)
    return 0


def _measure_case(case: str, args: argparse.Namespace, device: torch.device) -> dict:
    """One case: epoch times (interleaved rounds in this process), memory and evaluation
    throughput (a fresh process per side), the step breakdown and the ratios."""
    sides = ["naive", "hat", "raw"]
    if CASES[case]["family"] != "resnet18":  # the raw HAT loop gates sequential trunks
        sides.append("raw-hat")
    if args.unfolded:
        sides.append("hat-unfolded")
    samples: dict[str, list[float]] = {s: [] for s in sides}
    # timing: interleaved rounds in this process (A, B, C, A, B, C, …)
    for _ in range(args.rounds):
        for side in sides:
            samples[side] += run_case(case, side, args.warmup + args.reps, device)[
                args.warmup:]
    case_res = {s: _stats(samples[s], 0) for s in sides}
    # memory and evaluation throughput: one fresh process per side
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for side in sides:
        if side == "hat-unfolded":  # timing only: its memory and evaluation are HAT's
            continue
        cmd = [sys.executable, __file__, "--case", case, "--side", side,
               "--device", args.device, "--threads", str(args.threads)]
        if args.samples is not None:
            cmd += ["--samples", str(args.samples)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env,
                              cwd=ROOT)
        case_res[side].update(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.breakdown:
        case_res["breakdown_ms_per_step"] = breakdown(case, args.warmup + args.reps, device)
    targets = TARGETS_GPU if device.type == "cuda" else TARGETS.get(case)
    for k, (key, _, num, den) in enumerate(RATIOS):
        if num not in sides or den not in sides:
            continue
        case_res[key] = case_res[num]["median"] / case_res[den]["median"]
        # spread of the ratio: the same ratio from each round's own epochs
        case_res[f"{key}_rounds"] = _round_ratios(samples[num], samples[den], args.reps)
        if targets is not None and k < len(targets):
            case_res.setdefault("targets", {})[key] = targets[k]
    return case_res


def _print_report(results: dict, args: argparse.Namespace) -> None:
    """The tables of ``results``: epoch times, the ratios against their targets, the step
    breakdowns."""
    where = results.get("gpu", results["machine"])
    print(f"device {results['device']} ({where}), torch threads {args.threads}, "
          f"{args.rounds} rounds x {args.reps} timed epochs")
    print(f"{'case':<8} {'side':<8} {'epoch s (median)':>17} {'min-max':>17} "
          f"{'eval samples/s':>15} {'peak MB':>8}")
    for case, cr in results["cases"].items():
        for side in ("naive", "hat", "raw", "raw-hat", "hat-unfolded"):
            if side not in cr:
                continue
            r = cr[side]
            ev = f"{r['eval_samples_per_s']:.0f}" if "eval_samples_per_s" in r else "-"
            mem = f"{r['peak_mem_mb']:.0f}" if "peak_mem_mb" in r else "-"
            print(f"{case:<8} {side:<8} {r['median']:>17.4f} {r['min']:>8.4f}-{r['max']:<8.4f} "
                  f"{ev:>15} {mem:>8}")
    print(f"\n{'case':<8} {'ratio of medians':<18} {'median':>7} {'(rounds)':>15} {'target':>7}")
    for case, cr in results["cases"].items():
        tg = cr.get("targets", {})
        for key, label, _, _ in RATIOS:
            if key not in cr:
                continue
            rounds = cr[f"{key}_rounds"]
            target = tg.get(key)
            mark = "" if target is None else (" ok" if cr[key] <= target else " MISS")
            print(f"{case:<8} {label:<18} {cr[key]:>7.3f} {min(rounds):>7.3f}-{max(rounds):<7.3f} "
                  f"{'' if target is None else f'<={target}':>7}{mark}")
    for case, cr in results["cases"].items():
        if "breakdown_ms_per_step" not in cr:
            continue
        bd = cr["breakdown_ms_per_step"]
        print(f"\n{case} step breakdown, ms per step (task 2, timed in place):")
        print(f"{'phase':<16} {'naive':>8} {'hat':>8} {'hat-naive':>10}")
        for name in bd["naive"]:
            a, b = bd["naive"][name], bd["hat"][name]
            print(f"{name:<16} {a:>8.3f} {b:>8.3f} {b - a:>+10.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
