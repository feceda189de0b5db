"""The synthetic records (reports/synthetic.py) follow the registry's facts about each
strategy; reports/ must not import strategies/, so this test holds them together."""

from __future__ import annotations

from reports.synthetic import NO_AGNOSTIC, NO_CLASS, REHEARSAL
from strategies import STRATEGIES


def test_synthetic_strategy_facts_match_the_registry():
    assert set(NO_AGNOSTIC) == {n for n, s in STRATEGIES.items() if not s.task_agnostic}
    assert set(REHEARSAL) == {n for n, s in STRATEGIES.items() if s.rehearsal}


def test_synthetic_class_records_only_for_strategies_of_the_class_protocol():
    """make_class_record refuses exactly the strategies the runner refuses in the class
    protocol (``StrategySpec.class_protocol`` None)."""
    import pytest

    from reports.synthetic import make_class_record

    refused = {n for n, s in STRATEGIES.items() if s.class_protocol is None}
    assert refused == set(NO_CLASS)
    for name in STRATEGIES:
        if name in refused:
            with pytest.raises(ValueError):
                make_class_record("syn", name, 0, 2)
        else:
            assert make_class_record("syn", name, 0, 2)["params"]["scenario"] == {
                "protocol": "class"}
