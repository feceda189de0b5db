"""Runs in tests: the command line's base arguments, few epochs, and memoised experiments for
the tests that only read a record."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from benchmark.experiment import Experiment
from benchmark.run import executors
from benchmark.run.runner import run_experiment

#: no progress bar, no W&B
BASE = ["--no-progress", "--wandb", "disabled"]
#: ``BASE`` with one torch thread (the command line's default for workers)
BASE_ONE_THREAD = [*BASE, "--threads", "1"]
#: two epochs a task: enough for the tiny embedded scenarios to leave chance level
FAST = {"train": {"epochs": 2}}

_cache: dict = {}


def run_cached(scenario: str, strategy: str, seed: int = 0, overrides=None) -> dict:
    """run_experiment (``FAST`` unless ``overrides``), memoised for tests that only read the
    record: callers must not modify it (copy it first)."""
    overrides = overrides or FAST
    key = (scenario, strategy, seed, json.dumps(overrides, sort_keys=True))
    if key not in _cache:
        _cache[key] = run_experiment(Experiment(scenario, strategy, seed, overrides))
    return _cache[key]


def count_runs(monkeypatch: pytest.MonkeyPatch, key: Callable[[Experiment], Any]) -> list:
    """From now on every experiment the executors run is run as usual and ``key(exp)`` appended
    to the list returned."""
    ran: list = []
    original = executors.run_experiment

    def counting(exp, *args, **kwargs):
        ran.append(key(exp))
        return original(exp, *args, **kwargs)

    monkeypatch.setattr(executors, "run_experiment", counting)
    return ran
