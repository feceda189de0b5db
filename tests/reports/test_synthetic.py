"""The synthetic records (reports/synthetic.py) follow the registry's facts about each
strategy; reports/ must not import strategies/, so this test holds them together."""

from __future__ import annotations

from reports.synthetic import NO_AGNOSTIC, REHEARSAL
from strategies import STRATEGIES


def test_synthetic_strategy_facts_match_the_registry():
    assert set(NO_AGNOSTIC) == {n for n, s in STRATEGIES.items() if not s.task_agnostic}
    assert set(REHEARSAL) == {n for n, s in STRATEGIES.items() if s.rehearsal}
