"""Results must not change: fixed seeded runs reproduce the recorded accuracy matrices exactly.

The expected values live in tests/expected_results.csv (written by
scripts/record_expected.py). A speed-up or refactoring that changes any number fails here.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict

import pytest

from tests.support import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from record_expected import CSV, RUNS, overrides_text  # noqa: E402

from benchmark.experiment import Experiment  # noqa: E402
from benchmark.run.runner import run_experiment  # noqa: E402


def _expected() -> dict:
    table = defaultdict(dict)
    with CSV.open() as fh:
        for r in csv.DictReader(fh):
            key = (r["scenario"], r["strategy"], int(r["seed"]), r["overrides"])
            table[key][(int(r["after_task"]), int(r["task"]))] = float(r["accuracy"])
    return table


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("run", RUNS, ids=lambda r: f"{r[0]}-{r[1]}-s{r[2]}")
def test_accuracy_matrix_unchanged(run):
    scenario, strategy, seed, over = run
    expected = _expected()[(scenario, strategy, seed, overrides_text(over))]
    rec = run_experiment(Experiment(scenario, strategy, seed, over))
    got = {(t, u): acc for t, row in enumerate(rec["accuracy"]) for u, acc in enumerate(row)}
    assert got == expected
