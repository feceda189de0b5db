"""Task inference's cost for HAT, measured side by side in one run: T separate task-aware passes
(``forward_single_task`` once per task) vs one batched all-task pass
(``HATNet.all_task_logits``: the masks stacked, T row blocks), and one task-aware pass (the
Task-IL cost), on a briefly trained HATNet:

- ``mlp``: the embedded MLP 64-100-100 on the 8×8 digits' shape;
- ``alexnet``: the AlexNet-like network on 3×32×32;
- ``resnet32`` (only with ``--cases``): the CIFAR ResNet-32 with per-task BatchNorm.

Each model learns every task for a few mini-batches of random data (``--train-steps``, through
the suite's HAT strategy: masks shaped by the regulariser, weights conditioned), then the sides
are timed in interleaved rounds (separate, batched, chunked, one, separate, …) on a batch of
``--batch`` samples, each side ``--reps`` times per round (chunked: the batched pass over
chunks of at most ``--max-rows`` rows, T × samples); the table shows medians per sample
and the ratios: batched / separate (with its spread: the same ratio from each round's own
calls), and each side in task-aware passes (side / one pass). The machines are shared: compare
ratios from the same run only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    "mlp": dict(family="mlp", hidden=100, input_shape=(1, 8, 8)),
    "alexnet": dict(family="alexnet", hidden=2048, input_shape=(3, 32, 32)),
    "resnet32": dict(family="resnet32", hidden=None, input_shape=(3, 32, 32)),
}


def trained_model(case: str, n_tasks: int, steps: int, device: torch.device):
    """A HATNet of ``case`` with ``n_tasks`` heads of 10 classes, each task trained for
    ``steps`` mini-batches of 64 random samples by the suite's HAT strategy."""
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.training.plugins import EvaluationPlugin

    from benchmark.networks import ModelConfig, build_model
    from strategies import HAT, FastDataPlugin

    c = CASES[case]
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=c["family"], hidden=c["hidden"]), c["input_shape"],
                        [10] * n_tasks, gated=True).to(device)
    if steps > 0:
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(64 * steps, *c["input_shape"], generator=g),
                 torch.randint(0, 10, (64 * steps,), generator=g)) for _ in range(n_tasks)]
        bm = tensors_benchmark(train_tensors=data, test_tensors=data,
                               task_labels=list(range(n_tasks)), complete_test_set_only=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = EvaluationPlugin()
        strategy = HAT(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05),
                       train_mb_size=64, train_epochs=1, device=device,
                       plugins=[FastDataPlugin()], evaluator=evaluator)
        for exp in bm.train_stream:
            strategy.train(exp, eval_streams=[])
    return model.eval()


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def measure(model, n_tasks: int, batch: int, rounds: int, reps: int, max_rows: int,
            device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each side, over interleaved rounds (one warm-up call each)."""
    shape = model.input_shape
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1)).to(device)
    tasks = list(range(n_tasks))
    # the same values, or the comparison would be moot
    separate = [model.forward_single_task(x, t) for t in tasks]
    if not all(torch.equal(a.argmax(1), b.argmax(1))
               for a, b in zip(separate, model.all_task_logits(x, tasks), strict=True)):
        raise SystemExit("the batched pass predicts other classes than the separate passes")
    sides = {
        "separate": lambda: [model.forward_single_task(x, t) for t in tasks],
        "batched": lambda: model.all_task_logits(x, tasks),
        "chunked": lambda: model.all_task_logits(x, tasks, max_rows=max_rows),
        "one": lambda: model.forward_single_task(x, 0),
    }
    times: dict[str, list[float]] = {s: [] for s in sides}
    with torch.inference_mode():
        for fn in sides.values():
            fn()
        for _ in range(rounds):
            for side, fn in sides.items():
                times[side] += [_timed(fn, device) for _ in range(reps)]
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--cases", default="mlp,alexnet", help=f"among {', '.join(CASES)}")
    p.add_argument("--tasks", default="5,10", help="numbers of tasks T")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--reps", type=int, default=3, help="timed calls per side and round")
    p.add_argument("--train-steps", type=int, default=3,
                   help="mini-batches of 64 trained per task before timing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-rows", type=int, default=256,
                   help="the chunked side's bound on rows per pass (T x samples)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {args.device} ({where}), torch {torch.__version__}, threads "
          f"{args.threads}, batch {args.batch}, {args.rounds} rounds x {args.reps} calls, "
          "medians per sample")
    print(f"{'case':<9} {'T':>3} {'one pass us':>12} {'separate us':>12} {'batched us':>11} "
          f"{'batched/separate (rounds)':>25} {'separate/one':>13} {'batched/one':>12} "
          f"{'chunked us':>11} {'chunked/separate':>17}")
    for case in args.cases.split(","):
        if case not in CASES:
            p.error(f"--cases: unknown case {case!r}; choose among {', '.join(CASES)}")
        for n_tasks in (int(t) for t in args.tasks.split(",")):
            model = trained_model(case, n_tasks, args.train_steps, device)
            times = measure(model, n_tasks, args.batch, args.rounds, args.reps,
                            args.max_rows, device)
            us = {s: statistics.median(v) * 1e6 / args.batch for s, v in times.items()}
            r = args.reps
            rounds = [statistics.median(times["batched"][i:i + r])
                      / statistics.median(times["separate"][i:i + r])
                      for i in range(0, len(times["batched"]), r)]
            print(f"{case:<9} {n_tasks:>3} {us['one']:>12.2f} {us['separate']:>12.2f} "
                  f"{us['batched']:>11.2f} {us['batched'] / us['separate']:>13.3f} "
                  f"({min(rounds):.2f}-{max(rounds):.2f}) "
                  f"{us['separate'] / us['one']:>13.2f} {us['batched'] / us['one']:>12.2f} "
                  f"{us['chunked']:>11.2f} {us['chunked'] / us['separate']:>17.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
