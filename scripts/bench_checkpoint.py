"""Checkpoint size and time per experience (``benchmark.checkpoints``), on the paper's nets.

For each network and strategy a run of 10 tasks × 10 classes is trained through the runner
(``run_experiment`` with checkpoints on) on random tensors of the scenario's input shape
(the numbers of a checkpoint depend on the network, the optimizer and what the strategy
keeps, not on the data): the MLP with 2 hidden layers of 2000 units on pmnist-shaped input
(1×28×28) and the AlexNet-like net on 3×32×32 (the ``pmnist`` and ``cifar`` scenarios'
networks, ``benchmark.networks.build_model``). Every task trains one epoch (``train.recipe
=fixed``) on ``--train`` samples, enough to fill the rehearsal memory of a replay strategy.

After each experience the script records the checkpoint's size on disk (against the model's
own state), the time to collect the strategy's state (``capture``: state dicts, the plugins'
pickled state), the time to write the file (``torch.save`` to a temporary file, fsync, rename)
and the time a resume takes to read it back (``store.read``), of which the SHA-256 check of its
content. The table shows the size after the first and the last task and the mean times per
experience.

    python scripts/bench_checkpoint.py [--nets mlp,alexnet] [--strategies hat,ewc,...]
                                       [--device cpu] [--json results/bench_checkpoint.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (workers first: jax's import skipped, as by the command line)
from benchmark.run import workers  # noqa: E402,F401,I001
from benchmark import checkpoints  # noqa: E402
from benchmark.checkpoints import store  # noqa: E402
from benchmark.experiment import Experiment  # noqa: E402
from benchmark.run import runner  # noqa: E402
from benchmark.data.scenarios import Scenario, TaskData  # noqa: E402
from strategies import STRATEGIES  # noqa: E402

#: network -> (the scenario whose network and input shape it is, input shape)
NETS = {"mlp": ("pmnist", (1, 28, 28)), "alexnet": ("cifar", (3, 32, 32))}
N_TASKS, N_CLASSES = 10, 10
DEFAULT_STRATEGIES = ("naive", "ewc", "lwf", "si", "hat", "replay")


def random_scenario(name: str, shape: tuple[int, ...], n_train: int, n_test: int) -> Scenario:
    """``N_TASKS`` tasks of ``N_CLASSES`` classes of seeded random inputs."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        return torch.rand((n, *shape), generator=g), torch.randint(0, N_CLASSES, (n,),
                                                                     generator=g)

    tasks = []
    for t in range(N_TASKS):
        (tx, ty), (sx, sy) = split(n_train), split(n_test)
        tasks.append(TaskData(f"random-{t}", N_CLASSES, tx, ty, sx, sy,
                              tuple(range(N_CLASSES))))
    return Scenario(name, 0, tuple(shape), tasks, 0.1)


def measure(net: str, strategy: str, n_train: int, n_test: int, device: str) -> list[dict]:
    """Per experience: size (MB), capture and write time (ms) of the checkpoint."""
    scenario_name, shape = NETS[net]
    scenario = random_scenario(scenario_name, shape, n_train, n_test)
    exp = Experiment(scenario_name, strategy, 0, {"train": {"epochs": 1, "recipe": "fixed"}})
    rows: list[dict] = []
    real_capture, real_write = runner.capture_strategy, store.write

    def capture(strategy_, own):
        start = time.perf_counter()
        state = real_capture(strategy_, own)
        rows.append({"capture_ms": 1e3 * (time.perf_counter() - start)})
        return state

    def write(folder, done, state):
        start = time.perf_counter()
        path = real_write(folder, done, state)
        rows[-1].update(task=done, write_ms=1e3 * (time.perf_counter() - start),
                        size_mb=path.stat().st_size / 2**20,
                        model_mb=sum(t.numel() * t.element_size()
                                     for t in state["strategy"]["model"].values()) / 2**20)
        start = time.perf_counter()
        store.read(path)  # what a resume reads: the digest verified, then unpickled
        read_ms = 1e3 * (time.perf_counter() - start)
        data = path.read_bytes()
        start = time.perf_counter()
        store.unseal(data, path)  # the digest alone
        rows[-1].update(read_ms=read_ms, digest_ms=1e3 * (time.perf_counter() - start))
        return path

    runner.capture_strategy, store.write = capture, write
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ck = checkpoints.RunCheckpoints.for_run(Path(tmp), exp, device)
            runner.run_experiment(exp, scenario, device=device, checkpoint=ck)
    finally:
        runner.capture_strategy, store.write = real_capture, real_write
    return rows


def table(results: dict[tuple[str, str], list[dict]]) -> str:
    head = (f"{'net':<8} {'strategy':<9} {'model MB':>8} {'MB task 1':>9} {'MB task 10':>10} "
            f"{'capture ms':>10} {'write ms':>9} {'total ms (mean/max)':>20} "
            f"{'resume read ms':>14} {'of it digest ms':>15}")
    lines = [head, "-" * len(head)]
    for (net, strategy), rows in results.items():
        total = [r["capture_ms"] + r["write_ms"] for r in rows]
        lines.append(
            f"{net:<8} {strategy:<9} {rows[-1]['model_mb']:>8.1f} {rows[0]['size_mb']:>9.1f} "
            f"{rows[-1]['size_mb']:>10.1f} "
            f"{statistics.mean(r['capture_ms'] for r in rows):>10.0f} "
            f"{statistics.mean(r['write_ms'] for r in rows):>9.0f} "
            f"{statistics.mean(total):>11.0f} / {max(total):>6.0f} "
            f"{statistics.mean(r['read_ms'] for r in rows):>14.1f} "
            f"{statistics.mean(r['digest_ms'] for r in rows):>15.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="mlp,alexnet")
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                   help="those not registered are skipped")
    p.add_argument("--train", type=int, default=256, help="training samples per task")
    p.add_argument("--test", type=int, default=32, help="test samples per task")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the per-experience numbers here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    bad = [n for n in nets if n not in NETS]
    if bad:
        p.error(f"unknown net {bad[0]}; use {', '.join(NETS)}")
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip() in STRATEGIES]
    results: dict[tuple[str, str], list[dict]] = {}
    for net in nets:
        for strategy in strategies:
            results[(net, strategy)] = measure(net, strategy, args.train, args.test,
                                               args.device)
            print(f"done {net} {strategy}", file=sys.stderr, flush=True)
    print(f"checkpoint per experience, {N_TASKS} tasks x {N_CLASSES} classes, device "
          f"{args.device}, torch {torch.__version__}")
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {f"{net}/{s}": rows for (net, s), rows in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
