"""The hyperparameter table (what each strategy ran with and where the values come from) and
the sensitivity data (the validation criterion over a strategy's search space, from its
selection block or its tagged grid records)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import metrics
from ..per_run import finite_float
from ..schema import param_text
from .model import (
    DIFFERS,
    NOT_SELECTED,
    NOTHING_TO_SELECT,
    HyperRow,
    Sensitivity,
    on_edge,
    order,
)

__all__ = ["hyperparameters", "selection_source", "sensitivity"]


def _chosen_value(sel: dict) -> float:
    """Criterion value of the selection's chosen point (NaN when no point matches)."""
    want = {k: param_text(v) for k, v in sel["chosen"].items()}
    for pt in sel["points"]:
        if {k: param_text(v) for k, v in pt["params"].items()} == want:
            v = finite_float(pt.get("value"))
            return math.nan if v is None else v
    return math.nan


def selection_source(sel: dict) -> str:
    """``selected on validation (<preset>, seeds 0,1, ≤20 epochs, criterion value 0.953)``,
    leaving out what the selection block does not say."""
    parts = []
    if isinstance(sel.get("preset"), str) and sel["preset"]:
        parts.append(sel["preset"])
    seeds = sel.get("seeds")
    if isinstance(seeds, list) and seeds:
        parts.append(f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}")
    if isinstance(sel.get("epochs"), int) and not isinstance(sel["epochs"], bool):
        parts.append(f"≤{sel['epochs']} epochs")
    value = _chosen_value(sel)
    if not math.isnan(value):
        parts.append(f"criterion value {value:.3f}")
    return "selected on validation" + (f" ({', '.join(parts)})" if parts else "")


def _agreed(texts: Iterable[str]) -> str:
    """The one text all seeds agree on, else :data:`DIFFERS`."""
    distinct = set(texts)
    return distinct.pop() if len(distinct) == 1 else DIFFERS


def _param(rec: dict, section: str, key: str) -> str:
    sec = rec.get("params", {}).get(section)
    return param_text(sec[key]) if isinstance(sec, dict) and key in sec else "n/a"


def hyperparameters(
    by_strategy: dict[str, dict[int, dict]], strategies: list[str], notes: list[str]
) -> list[HyperRow]:
    """Per untagged strategy: its own section of ``params``, ``train.clipgrad`` and the
    ``train`` settings that differ across strategies, with where they come from."""

    def values(recs: list[dict], section: str, key: str) -> str:
        return _agreed(_param(r, section, key) for r in recs)

    recs_of = {s: list(by_strategy[s].values()) for s in strategies}
    train_keys = sorted(
        {k for recs in recs_of.values() for r in recs
         if isinstance(r["params"].get("train"), dict) for k in r["params"]["train"]}
        - {"clipgrad"}
    )
    train = {s: {k: values(recs_of[s], "train", k) for k in train_keys} for s in strategies}
    differing = [k for k in train_keys
                 if len({train[s][k] for s in strategies}) > 1
                 or any(train[s][k] == DIFFERS for s in strategies)]
    rows = []
    for s in strategies:
        recs = recs_of[s]
        own = sorted({k for r in recs if isinstance(r["params"].get(s), dict)
                      for k in r["params"][s]})
        params = {f"{s}.{k}": values(recs, s, k) for k in own}
        params["train.clipgrad"] = values(recs, "train", "clipgrad")
        params.update({f"train.{k}": train[s][k] for k in differing})
        sels = [r.get("selection") for r in recs]
        source = _agreed(selection_source(x) if x else NOT_SELECTED for x in sels)
        if not own and not any(sels):
            source = NOTHING_TO_SELECT
        selected = all(sels) and source != DIFFERS
        row = HyperRow(strategy=s, seeds=sorted(by_strategy[s]), params=params, source=source,
                       selected=bool(selected))
        if selected:
            sel = sels[0]
            row.preset = sel.get("preset") if isinstance(sel.get("preset"), str) else None
            row.criterion_value = _chosen_value(sel)
            row.edges = on_edge(sel["space"], sel["chosen"])
            for key, v in sel["chosen"].items():
                section, _, name = key.partition(".")
                have = values(recs, section, name)
                if have not in (DIFFERS, "n/a", param_text(v)):
                    notes.append(f"{s}: ran with {key}={have}, but its selection chose "
                                 f"{param_text(v)}")
        rows.append(row)
    return rows


def _axis(values: Iterable[Any]) -> list[Any]:
    """Distinct values (by canonical text) in first-seen order; sorted floats when numeric."""
    seen: dict[str, Any] = {}
    for v in values:
        seen.setdefault(param_text(v), v)
    vals = list(seen.values())
    if all(finite_float(v) is not None for v in vals):
        return sorted(float(v) for v in vals)
    return vals


def _from_text(text: str) -> Any:
    """A grid tag's value: a float when it reads as a finite number, else the text."""
    try:
        v = float(text)
    except ValueError:
        return text
    return v if math.isfinite(v) else text


def _parse_tag(tag: str) -> dict[str, str] | None:
    """``hat.c=0.1,hat.smax=25`` -> {"hat.c": "0.1", "hat.smax": "25"}; None when the tag
    is not made of ``section.key=value`` pairs."""
    out = {}
    for part in tag.split(","):
        key, sep, value = part.partition("=")
        if not sep or "." not in key or not value:
            return None
        out[key] = value
    return out


def _from_selection(strategy: str, sel: dict) -> Sensitivity:
    keys = list(sel["space"])
    axes = [_axis(list(sel["space"][k]) + [pt["params"][k] for pt in sel["points"]])
            for k in keys]
    values: dict[tuple[str, ...], float] = {}
    for pt in sel["points"]:
        v = finite_float(pt.get("value"))
        values[tuple(param_text(pt["params"][k]) for k in keys)] = math.nan if v is None else v
    seeds = sel.get("seeds")
    n = len(seeds) if isinstance(seeds, list) else None
    preset = sel.get("preset")
    return Sensitivity(
        strategy=strategy, keys=keys, axes=axes, values=values,
        chosen=tuple(param_text(sel["chosen"][k]) for k in keys), source="selection",
        where=preset if isinstance(preset, str) and preset else "selection",
        n_seeds=dict.fromkeys(values, n),
    )


def _from_grid(strategy: str, records: list[dict]) -> Sensitivity | None:
    """Mean over seeds of the validation criterion per tagged grid point (≥ 2 points)."""
    by_keys: dict[tuple[str, ...], list[tuple[dict[str, str], dict]]] = defaultdict(list)
    for r in records:
        tag = _parse_tag(r.get("tag", "")) if r.get("tag") else None
        if tag is not None and r.get("valid_accuracy") is not None:
            by_keys[tuple(sorted(tag))].append((tag, r))
    if not by_keys:
        return None
    keys, entries = max(by_keys.items(), key=lambda kv: len(kv[1]))
    crit: dict[tuple[str, ...], list[float]] = defaultdict(list)
    for tag, r in entries:
        point = tuple(param_text(_from_text(tag[k])) for k in keys)
        crit[point].append(metrics.validation_criterion(r["valid_accuracy"]))
    if len(crit) < 2:
        return None
    values = {p: float(np.mean(v)) for p, v in crit.items()}
    axes = [_axis(_from_text(tag[k]) for tag, _ in entries) for k in keys]
    sens = Sensitivity(
        strategy=strategy, keys=list(keys), axes=axes, values=values, chosen=None,
        source="grid", where="tagged grid records",
        n_seeds={p: len(v) for p, v in crit.items()},
    )
    finite = [sens.point_key(p) for p in sens.points() if math.isfinite(sens.value(p))]
    if finite:
        sens.chosen = max(finite, key=lambda p: values[p])  # first of equal maxima
    return sens


def sensitivity(
    all_records: list[dict], grid_records: list[dict], notes: list[str]
) -> list[Sensitivity]:
    """Per strategy, its selection's search space (the newest record's selection when records
    disagree), else its tagged grid records with ``valid_accuracy``."""
    selections: dict[str, list[dict]] = defaultdict(list)
    for r in all_records:
        if r.get("selection"):
            selections[r["strategy"]].append(r)
    grids: dict[str, list[dict]] = defaultdict(list)
    for r in grid_records:
        if r.get("tag") and r["strategy"] not in selections:
            grids[r["strategy"]].append(r)
    out = []
    for s in order(set(selections) | set(grids)):
        if s in selections:
            recs = selections[s]
            newest = max(recs, key=lambda r: (str(r.get("created", "")), r.get("_source", "")))
            dumps = {json.dumps(r["selection"], sort_keys=True) for r in recs}
            if len(dumps) > 1:
                notes.append(f"{s}: records disagree on the hyperparameter selection; using "
                             f"the newest, {newest.get('_source', '?')}")
            out.append(_from_selection(s, newest["selection"]))
        else:
            sens = _from_grid(s, grids[s])
            if sens is not None:
                out.append(sens)
    return out
