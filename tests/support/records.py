"""Run records and report files in tests: records compared without their timing fields, CSV
files read back, confidence intervals computed by hand (not with reports.metrics)."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from scipy import stats

from benchmark.records import TIMING_FIELDS, read_record


def comparable(rec: dict) -> dict:
    """The record without the fields that differ between identical runs (times, the
    process's peak memory, the creation time)."""
    return {k: v for k, v in rec.items() if k not in TIMING_FIELDS}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def hand_ci(values):
    """Mean and half-width of the 95% Student-t interval (nan for fewer than two values)."""
    n = len(values)
    if n < 2:
        return statistics.fmean(values), math.nan
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return statistics.fmean(values), half


def read_comparable(path: Path) -> dict:
    """:func:`comparable` of the record in ``path``."""
    return comparable(read_record(path))
