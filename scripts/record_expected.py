"""Record the expected accuracy matrices that tests/system/test_expected_results.py checks.

Run only when a change is *meant* to change results (say so in the commit):
    python scripts/record_expected.py
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmark.experiment import Experiment  # noqa: E402
from benchmark.run.runner import run_experiment  # noqa: E402

CSV = ROOT / "tests" / "expected_results.csv"
#: (scenario, strategy, seed, overrides): small, fast, deterministic runs
RUNS = [
    ("split-digits", "naive", 0, {"train": {"epochs": 3}}),
    ("split-digits", "hat", 0, {"train": {"epochs": 3}}),
    ("permuted-digits", "hat", 1, {"train": {"epochs": 2, "optimizer": "adamw", "lr": 0.01,
                                             "weight_decay": 0.01}}),
]


def overrides_text(over: dict) -> str:
    return " ".join(f"{sec}.{k}={v}" for sec, kv in over.items() for k, v in sorted(kv.items()))


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for scenario, strategy, seed, over in RUNS:
        rec = run_experiment(Experiment(scenario, strategy, seed, over))
        for t, row in enumerate(rec["accuracy"]):
            for u, acc in enumerate(row):
                rows.append([scenario, strategy, seed, overrides_text(over), t, u, repr(acc)])
    with CSV.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["scenario", "strategy", "seed", "overrides", "after_task", "task", "accuracy"])
        w.writerows(rows)
    print(f"wrote {CSV} ({len(rows)} entries)")


if __name__ == "__main__":
    main()
