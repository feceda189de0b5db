"""Tests of the run-record contract (benchmark/records.py, docs/record-schema.md): schema
validation, atomic writes, file names and the completeness check used to skip finished runs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from benchmark import records
from benchmark.records import (
    RecordError,
    is_complete,
    read_record,
    record_name,
    record_path,
    validate_record,
    write_record,
)
from reports import io as report_io

T = 3

#: the fields docs/record-schema.md lists as required by the validator, with their JSON types
SCHEMA_FIELDS = {
    "schema": int, "scenario": str, "strategy": str, "seed": int, "tag": str, "params": dict,
    "task_names": list, "accuracy": list, "random_accuracy": list, "epochs": list,
    "seconds": list, "versions": dict, "created": str,
}


def good_record(n: int = T) -> dict:
    """A small valid record with ``n`` tasks (lower-triangular learning, some forgetting)."""
    acc = [[round(0.5 + 0.1 * (u <= t) - 0.02 * (t - u) * (u <= t), 3) for u in range(n)]
           for t in range(n)]
    return {
        "schema": 1,
        "scenario": "split-digits",
        "strategy": "hat",
        "seed": 0,
        "tag": "",
        "params": {"train": {"lr": 0.05}, "hat": {"smax": 400.0}, "model": {"hidden": 100}},
        "task_names": [f"digits:{2 * k}-{2 * k + 1}" for k in range(n)],
        "accuracy": acc,
        "random_accuracy": [0.5] * n,
        "epochs": [2] * n,
        "seconds": [0.1] * n,
        "history": [[{"epoch": 1, "train_loss": 0.7, "train_acc": 0.5, "valid_loss": None,
                      "lr": 0.05}] for _ in range(n)],
        "hat": None,
        "versions": {"python": "3.11", "torch": "x", "avalanche": "0.6.0", "suite": "0.1.0"},
        "device": "cpu",
        "created": "2024-01-01T00:00:00+00:00",
    }


def test_good_record_is_accepted_and_returned():
    rec = good_record()
    assert validate_record(rec) is rec
    one = good_record(1)
    assert validate_record(one) is one


def test_integers_in_accuracy_are_accepted():
    rec = good_record()
    rec["accuracy"][0][0] = 1
    rec["accuracy"][1][1] = 0
    validate_record(rec)


@pytest.mark.parametrize("key", sorted(SCHEMA_FIELDS))
def test_missing_field_is_rejected(key):
    rec = good_record()
    del rec[key]
    with pytest.raises(RecordError, match=key):
        validate_record(rec)


def _wrong_value(typ):
    return {int: "1", str: 1, dict: [], list: {}}[typ]


@pytest.mark.parametrize("key", sorted(SCHEMA_FIELDS))
def test_wrong_field_type_is_rejected(key):
    rec = good_record()
    rec[key] = _wrong_value(SCHEMA_FIELDS[key])
    with pytest.raises(RecordError, match=key):
        validate_record(rec)


@pytest.mark.parametrize("key", ["seed", "schema"])
def test_bool_is_not_an_int(key):
    rec = good_record()
    rec[key] = True
    with pytest.raises(RecordError, match=key):
        validate_record(rec)


@pytest.mark.parametrize("value", [None, [], "record", 3])
def test_non_object_is_rejected(value):
    with pytest.raises(RecordError):
        validate_record(value)


def _drop_row(rec):
    rec["accuracy"].pop()


def _extra_row(rec):
    rec["accuracy"].append([0.5] * T)


def _short_row(rec):
    rec["accuracy"][1].pop()


def _long_row(rec):
    rec["accuracy"][2].append(0.5)


def _row_not_list(rec):
    rec["accuracy"][0] = 0.5


def _non_square(rec):
    rec["accuracy"] = [[0.5] * (T + 1) for _ in range(T - 1)]


def _flat(rec):
    rec["accuracy"] = [0.5] * T


def _no_tasks(rec):
    rec["task_names"] = []
    rec["accuracy"] = []
    rec["random_accuracy"] = rec["epochs"] = rec["seconds"] = []


def _more_names(rec):
    rec["task_names"].append("extra")


@pytest.mark.parametrize("mutate", [_drop_row, _extra_row, _short_row, _long_row, _row_not_list,
                                    _non_square, _flat, _no_tasks, _more_names])
def test_accuracy_must_be_t_by_t(mutate):
    rec = good_record()
    mutate(rec)
    with pytest.raises(RecordError, match="accuracy"):
        validate_record(rec)


@pytest.mark.parametrize("value", [-0.01, 1.01, 2, -1, float("nan"), float("inf"),
                                   -float("inf"), None, "0.5", [0.5], True])
@pytest.mark.parametrize("where", [(0, 0), (0, T - 1), (T - 1, 1)])
def test_accuracy_entries_must_be_numbers_in_unit_interval(value, where):
    rec = good_record()
    rec["accuracy"][where[0]][where[1]] = value
    with pytest.raises(RecordError, match="accuracy"):
        validate_record(rec)


@pytest.mark.parametrize("key", ["random_accuracy", "epochs", "seconds"])
@pytest.mark.parametrize("length", [0, T - 1, T + 1])
def test_per_task_lists_need_one_entry_per_task(key, length):
    rec = good_record()
    rec[key] = (rec[key] * 2)[:length]
    assert len(rec[key]) == length
    with pytest.raises(RecordError, match=key):
        validate_record(rec)


def test_validation_does_not_modify_the_record():
    rec = good_record()
    before = copy.deepcopy(rec)
    validate_record(rec)
    assert rec == before


# ----------------------------------------------------------------------------- writing


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_write_then_read_round_trip(tmp_path):
    path = tmp_path / "deep" / "runs" / "a.json"
    rec = good_record()
    assert write_record(path, rec) == path
    assert read_record(path) == rec
    assert json.loads(path.read_text()) == rec
    assert is_complete(path)
    assert _files(path.parent) == ["a.json"]  # no temporary file left


def test_write_of_invalid_record_writes_nothing(tmp_path):
    rec = good_record()
    rec["accuracy"][0][0] = 1.5
    path = tmp_path / "runs" / "a.json"
    with pytest.raises(RecordError):
        write_record(path, rec)
    assert not path.exists()
    assert _files(tmp_path / "runs") == []


def _exploding_fsync(fd):
    # the temporary file holds the whole text by now: the failure comes mid-write, before
    # the rename
    raise OSError("disk full")


def test_failure_mid_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "a.json"
    monkeypatch.setattr(report_io.os, "fsync", _exploding_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_record(path, good_record())
    assert not path.exists()
    assert _files(path.parent) == []


def test_failure_mid_write_keeps_the_existing_record(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "a.json"
    old = good_record()
    write_record(path, old)
    before = path.read_bytes()
    new = good_record()
    new["seed"] = 7
    monkeypatch.setattr(report_io.os, "fsync", _exploding_fsync)
    with pytest.raises(OSError):
        write_record(path, new)
    assert path.read_bytes() == before
    assert read_record(path) == old
    assert _files(path.parent) == ["a.json"]


def test_interrupt_mid_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    path = tmp_path / "a.json"
    monkeypatch.setattr(report_io.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_record(path, good_record())
    assert _files(tmp_path) == []


def test_failed_replace_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    write_record(path, good_record())
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("replace failed")

    monkeypatch.setattr(report_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="replace failed"):
        write_record(path, good_record(4))
    assert path.read_bytes() == before
    assert _files(tmp_path) == ["a.json"]


def test_unserialisable_record_leaves_no_file(tmp_path):
    rec = good_record()
    rec["params"]["train"]["lr"] = object()  # valid per schema, fails in json.dump
    path = tmp_path / "a.json"
    with pytest.raises(TypeError):
        write_record(path, rec)
    assert _files(tmp_path) == []


def test_write_replaces_an_older_record(tmp_path):
    path = tmp_path / "a.json"
    write_record(path, good_record(2))
    write_record(path, good_record(4))
    assert len(read_record(path)["task_names"]) == 4
    assert _files(tmp_path) == ["a.json"]


@pytest.mark.issue(28)
def test_an_unreadable_file_at_the_path_is_moved_aside_not_overwritten(tmp_path, capsys):
    """Not JSON, then JSON that is no record: each is kept under its own name, with one
    warning line naming both paths, and the new record takes the path."""
    path = tmp_path / "a.json"
    junk = ["my notes, not a record", json.dumps({"scenario": "x"})]
    for n, text in enumerate(junk, start=1):
        path.write_text(text, encoding="utf-8")
        write_record(path, good_record(2))
        aside = tmp_path / f"a.json.unreadable-{n}"
        assert aside.read_text(encoding="utf-8") == text
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("warning:"), lines
        assert str(path) in lines[0] and str(aside) in lines[0]
        assert read_record(path)["task_names"] == good_record(2)["task_names"]
    assert _files(tmp_path) == ["a.json", "a.json.unreadable-1", "a.json.unreadable-2"]
    write_record(path, good_record(3))  # a readable record is replaced, with no warning
    assert capsys.readouterr().err == ""
    assert _files(tmp_path) == ["a.json", "a.json.unreadable-1", "a.json.unreadable-2"]


@pytest.mark.issue(28)
def test_a_tracked_runs_record_moves_an_unreadable_file_aside_too(tmp_path, capsys):
    """A tracked run's record takes its path from a staged file once its W&B run finished:
    an unreadable file there is kept as well."""
    from benchmark.run.executors import _write_tracked

    class Tracker:
        def finish(self, rec, out):
            assert path.read_text(encoding="utf-8") == "junk"  # untouched until now

    path = tmp_path / "runs" / "a.json"
    path.parent.mkdir()
    path.write_text("junk", encoding="utf-8")
    _write_tracked(path, good_record(2), Tracker(), tmp_path)
    assert (path.parent / "a.json.unreadable-1").read_text(encoding="utf-8") == "junk"
    assert read_record(path)["task_names"] == good_record(2)["task_names"]
    assert _files(path.parent) == ["a.json", "a.json.unreadable-1"]
    assert "a.json.unreadable-1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- names


def test_record_name_without_tag():
    assert record_name("split-digits", "hat", 3) == "split-digits__hat__s3.json"
    assert record_name("split-digits", "hat", 3, "") == "split-digits__hat__s3.json"


def test_record_name_with_grid_tag():
    tag = "hat.c=0.1,hat.smax=25"
    assert record_name("pmnist", "hat", 12, tag) == f"pmnist__hat__s12__{tag}.json"


@pytest.mark.parametrize("tag", ["a/b", "../../escape", "x y", "a\\b", "ü:?*"])
def test_record_name_tag_cannot_leave_the_runs_folder(tag, tmp_path):
    name = record_name("split-digits", "ewc", 0, tag)
    assert name.startswith("split-digits__ewc__s0__") and name.endswith(".json")
    assert "/" not in name and "\\" not in name and " " not in name
    path = record_path(tmp_path, "split-digits", "ewc", 0, tag)
    assert path.parent == tmp_path / "runs"
    assert path.name == name


def test_tags_that_differ_only_in_replaced_characters_get_different_names():
    names = {record_name("s", "hat", 0, t) for t in ("hat.a=-", "hat.a=:", "hat.a=?", "a:b", "a-b")}
    assert len(names) == 5
    assert record_name("s", "hat", 0, "hat.a=-") == "s__hat__s0__hat.a=-.json"  # kept as is
    assert record_name("s", "hat", 0, "a:b") == record_name("s", "hat", 0, "a:b")


def test_different_tags_give_different_names():
    a = record_name("s", "hat", 0, "hat.smax=25")
    b = record_name("s", "hat", 0, "hat.smax=50")
    c = record_name("s", "hat", 0)
    assert len({a, b, c}) == 3


def test_record_path_is_under_runs(tmp_path):
    assert record_path(tmp_path, "split-digits", "naive", 1) == (
        tmp_path / "runs" / "split-digits__naive__s1.json"
    )


# ----------------------------------------------------------------------------- completeness


def test_is_complete_on_missing_file(tmp_path):
    assert not is_complete(tmp_path / "nothing.json")


@pytest.mark.parametrize("content", [
    b"", b"{", b'{"schema": 1, "scenario": "split-', b"not json at all", b"\xff\xfe\x00\x01",
    b"null", b"[]", b'"a string"',
])
def test_is_complete_on_corrupt_file(tmp_path, content):
    path = tmp_path / "a.json"
    path.write_bytes(content)
    assert not is_complete(path)
    with pytest.raises(RecordError):
        read_record(path)


def test_is_complete_on_truncated_record(tmp_path):
    path = tmp_path / "a.json"
    write_record(path, good_record())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    assert not is_complete(path)


def test_is_complete_on_valid_json_but_invalid_record(tmp_path):
    rec = good_record()
    rec["accuracy"][2][0] = math.nan
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rec))  # json writes NaN, json.loads reads it back
    assert not is_complete(path)
    rec = good_record()
    del rec["created"]
    path.write_text(json.dumps(rec))
    assert not is_complete(path)


def test_is_complete_on_a_folder(tmp_path):
    (tmp_path / "a.json").mkdir()
    assert not is_complete(tmp_path / "a.json")


def test_is_complete_on_good_record(tmp_path):
    path = tmp_path / "a.json"
    write_record(path, good_record())
    assert is_complete(path)


def test_versions_and_timestamp():
    v = records.versions()
    assert set(v) == {"python", "torch", "avalanche", "suite"}
    assert all(isinstance(x, str) and x for x in v.values())
    stamp = records.now_iso()
    from datetime import datetime

    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0


def test_a_class_incremental_record_has_its_own_name_beside_the_task_ones():
    assert record_name("s", "naive", 0, protocol="class") == "s__naive__s0__class.json"
    assert record_name("s", "naive", 0, "a=1", "class") == "s__naive__s0__class__a=1.json"
    assert record_name("s", "naive", 0, protocol="task") == record_name("s", "naive", 0)
