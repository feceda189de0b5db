"""The one run-record contract (reports/schema.py): strict mode for writing, lenient mode for
reading, the generated docs/record-schema.md, the W&B constants."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reports import schema
from reports.schema import FIELDS, RecordError, record_problem, validate
from reports.synthetic import (
    make_class_record,
    make_costs,
    make_hat_stats,
    make_record,
    make_selection,
)

ROOT = Path(__file__).resolve().parents[2]


def _written(**changes) -> dict:
    """A complete record as the runner writes it (with the optional fields)."""
    rec = make_record("syn", "hat", 0, 3, hat=make_hat_stats(3, 0), extra=make_costs("hat", 3, 0),
                      selection=make_selection("syn", "hat"))
    rec.update(changes)
    return rec


def test_a_written_record_passes_both_modes():
    rec = _written()
    assert record_problem(rec, strict=True) is None
    assert record_problem(rec, strict=False) is None
    assert validate(rec) is rec


def test_docs_record_schema_is_generated_from_the_schema():
    """docs/record-schema.md equals :func:`reports.schema.markdown` (regenerate it with the
    command the page names)."""
    text = (ROOT / "docs" / "record-schema.md").read_text(encoding="utf-8")
    assert text == schema.markdown()
    for f in FIELDS:
        assert f"| `{f.name}` |" in text


def test_the_fields_cover_what_the_suite_writes_and_reads():
    names = schema.field_names()
    assert len(names) == len(set(names))
    assert set(schema.TIMING_FIELDS) <= set(names)
    read = {f.name for f in FIELDS if f.read}
    written = {f.name for f in FIELDS if f.written}
    assert read <= written  # a field the report needs is always written
    assert set(_written()) <= set(names)


@pytest.mark.parametrize("change", [
    {"schema": 1},  # older schema: valid_accuracy and selection absent
    {"valid_accuracy": None, "selection": None},
    {"agnostic_accuracy": None, "memory_samples": None},
    {"threads": 4, "diverged": False},
])
def test_strict_accepts_the_variants_the_suite_writes(change):
    rec = _written(**change)
    if change.get("schema") == 1:
        del rec["valid_accuracy"], rec["selection"]
    assert record_problem(rec, strict=True) is None


@pytest.mark.parametrize("drop", [f.name for f in FIELDS if f.written and not f.read])
def test_an_older_record_without_a_written_field_is_read_not_written(drop):
    """A field written in one protocol's records only (``Field.protocol``) is dropped from a
    record of that protocol."""
    protocol = next(f.protocol for f in FIELDS if f.name == drop)
    rec = _written() if protocol is None else make_class_record("syn", "ewc", 0, 3)
    del rec[drop]
    assert record_problem(rec, strict=False) is None
    assert record_problem(rec, strict=True) == f"missing field '{drop}'" + (
        "" if protocol is None else f" (a {protocol}-incremental record)")
    with pytest.raises(RecordError, match=drop):
        validate(rec)


def test_the_fields_of_one_protocol_are_written_in_its_records_only():
    cls = make_class_record("syn", "ewc", 0, 3, valid_agnostic_accuracy=[[0.5], [0.5] * 2,
                                                                         [0.5] * 3])
    assert record_problem(cls, strict=True) is None
    assert schema.protocol_of(cls) == "class" and schema.protocol_of(_written()) == "task"
    task = _written(agnostic_random_accuracy=cls["agnostic_random_accuracy"])
    assert "class-incremental records only" in record_problem(task, strict=True)
    assert record_problem(dict(cls, agnostic_accuracy=None), strict=True).startswith(
        "'agnostic_accuracy' is the Class-IL matrix")
    bad = copy.deepcopy(cls)
    bad["agnostic_random_accuracy"][2] = [0.1]
    assert "'agnostic_random_accuracy' must be 3 rows" in record_problem(bad, strict=True)
    other = copy.deepcopy(cls)
    other["params"]["scenario"]["protocol"] = "domain"
    assert "must be one of task, class" in record_problem(other, strict=True)
    assert set(schema.field_names("task")) | {
        "valid_agnostic_accuracy", "agnostic_random_accuracy", "task_prediction_accuracy",
        "task_inference"} == set(schema.field_names("class"))
    # task inference's fields: well formed when present
    ti = copy.deepcopy(cls)
    rows = [[0.5] * (t + 1) for t in range(3)]
    block = {"agnostic_accuracy": rows, "valid_agnostic_accuracy": None,
             "task_prediction_accuracy": rows, "auroc": [0.9, 0.8, 0.7]}
    ti.update(task_prediction_accuracy=rows,
              task_inference={"score": "energy", "scores": {"energy": block}})
    assert record_problem(ti, strict=True) is None
    ti["task_inference"]["score"] = "max_logit"
    assert "'task_inference.score' must be one of" in record_problem(ti, strict=True)
    ti["task_inference"]["score"] = "energy"
    block["auroc"] = [0.9]
    assert "auroc' must be 3 numbers" in record_problem(ti, strict=True)
    assert "task_inference" in record_problem(  # never in a task record
        dict(_written(), task_inference=ti["task_inference"]), strict=True)


def test_lenient_reads_within_a_tolerance_strict_writes_exact_fractions():
    rec = _written()
    rec["accuracy"][0][0] = 1 + 1e-10
    assert record_problem(rec, strict=False) is None
    assert record_problem(rec, strict=True) == "'accuracy' entries must be numbers in [0, 1]"


@pytest.mark.parametrize("change, problem", [
    ({"hat": {"layers": [], "tasks": []}}, "'hat' needs non-empty 'layers' and 'tasks' lists"),
    ({"strategy": ""}, "'strategy' must be a non-empty string"),
    ({"task_names": ["a", 1, "c"]}, "'task_names' must be a non-empty list of strings"),
    ({"selection": {"space": {}}}, "'selection.space' must map each key"),
])
def test_strict_rejects_what_the_report_would_skip(change, problem):
    rec = _written(**change)
    assert record_problem(rec, strict=False).startswith(problem)
    assert record_problem(rec, strict=True).startswith(problem)


@pytest.mark.parametrize("change, problem", [
    ({"peak_memory_mb": [1.0, -1.0, 2.0]}, "'peak_memory_mb' must be a list of 3 numbers >= 0"),
    ({"memory_samples": [1, 2]}, "'memory_samples' must be null or a list of 3 integers >= 0"),
    ({"agnostic_accuracy": [[0.5], [0.5, 0.5], [0.5]]}, "'agnostic_accuracy' must be null"),
    ({"threads": 0}, "field 'threads' must be an integer >= 1"),
    ({"epochs": [1, 1]}, "'epochs' must have one entry per task (3)"),
    ({"versions": []}, "field 'versions' must be dict"),
])
def test_strict_only_rules(change, problem):
    """Rules of a written record that the report does not need (it reads these leniently)."""
    rec = _written(**change)
    assert record_problem(rec, strict=False) is None
    assert record_problem(rec, strict=True).startswith(problem)


def test_a_diverged_record_needs_only_its_identity_to_be_read():
    rec = _written(diverged=True, hat={"layers": "broken"})
    rec["accuracy"] = [[None] * 3 for _ in range(3)]
    assert record_problem(rec, strict=False) is None
    assert record_problem(rec, strict=True) == "'accuracy' entries must be numbers in [0, 1]"


def test_schema_versions():
    assert schema.SCHEMA_VERSION in schema.READABLE_SCHEMAS
    for mode in (True, False):
        assert "unsupported schema" in record_problem(_written(schema=3), strict=mode)


def test_wandb_constants_are_the_tracker_and_reader_ones():
    from reports import wandb_source

    assert schema.WANDB_ARTIFACT_TYPE in schema.WANDB_ARTIFACT_TYPES_READ
    assert wandb_source.ARTIFACT_TYPES == schema.WANDB_ARTIFACT_TYPES_READ
    assert wandb_source.RECORD_KEY == schema.WANDB_RECORD_KEY


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 5), st.floats(allow_nan=True),
    st.sampled_from([0.0, 0.5, 1.0, -1e-10, 1 + 1e-10]), st.text(max_size=3),
    # fresh containers per draw: a shared st.just([]) would be mutated by later draws
    st.builds(list), st.builds(lambda: [0.5]), st.builds(dict),
)


@st.composite
def _mutated(draw) -> dict:
    """A written record with up to three fields, rows or entries replaced or removed."""
    rec = copy.deepcopy(_written())
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(rec)))
        where, path = rec, [key]
        while isinstance(where[path[-1]], list | dict) and where[path[-1]] and draw(st.booleans()):
            inner = where[path[-1]]
            where = inner
            path.append(draw(st.sampled_from(sorted(inner) if isinstance(inner, dict)
                                             else range(len(inner)))))
        if isinstance(where, dict) and draw(st.booleans()):
            del where[path[-1]]
        else:
            where[path[-1]] = draw(_VALUES)
    return rec


@settings(max_examples=300, deadline=None)
@given(_mutated())
def test_strict_accepts_only_records_the_report_reads(rec):
    """Everything written can be read back: strict acceptance implies lenient acceptance
    (equivalently, whatever the report cannot read, the strict mode refuses)."""
    strict, lenient = record_problem(rec, strict=True), record_problem(rec, strict=False)
    if strict is None:
        assert lenient is None
    if lenient is not None:
        assert strict is not None


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_non_finite_accuracies_are_never_written(x):
    rec = _written()
    rec["accuracy"][1][1] = x
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        assert record_problem(rec, strict=True) is not None
