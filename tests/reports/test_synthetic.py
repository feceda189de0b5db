"""The synthetic records (reports/synthetic.py) follow the registry's facts about each
strategy; reports/ must not import strategies/, so this test holds them together."""

from __future__ import annotations

from reports.synthetic import NO_AGNOSTIC, NO_CLASS, REHEARSAL, TASK_INFERENCE, TASK_SCORES
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


def test_synthetic_task_inference_records_as_the_runner_writes_them():
    """The strategies predicting by task inference (``class_protocol`` "inference") get
    ``task_inference`` with every score of the runner and ``task_prediction_accuracy``; every
    synthetic class record passes the strict validator; the others lack both fields."""
    from reports.schema import validate
    from reports.synthetic import make_class_record
    from strategies.registry import INFERENCE
    from strategies.training.task_inference import SCORES

    assert set(TASK_INFERENCE) == {n for n, s in STRATEGIES.items()
                                   if s.class_protocol == INFERENCE}
    assert set(TASK_SCORES) <= set(SCORES)
    for name, spec in STRATEGIES.items():
        if spec.class_protocol is None:
            continue
        rec = make_class_record("syn", name, 1, 3, task_score="max_logit")
        validate(rec, strict=True)
        if name not in TASK_INFERENCE:
            assert "task_inference" not in rec and "task_prediction_accuracy" not in rec
            continue
        ti = rec["task_inference"]
        assert ti["score"] == rec["params"][name]["task_score"] == "max_logit"
        assert list(ti["scores"]) == list(TASK_SCORES)
        for block in ti["scores"].values():
            for key in ("agnostic_accuracy", "valid_agnostic_accuracy",
                        "task_prediction_accuracy"):
                assert [len(r) for r in block[key]] == [1, 2, 3], key
            assert len(block["auroc"]) == 3
        assert rec["task_prediction_accuracy"] == ti["scores"]["max_logit"][
            "task_prediction_accuracy"]
        old = make_class_record("syn", name, 1, 3, task_inference=False)
        validate(old, strict=True)
        assert "task_inference" not in old and "task_prediction_accuracy" not in old
