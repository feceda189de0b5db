"""The ``python -m benchmark run`` commands that ``index.md`` gives for missing runs.

A command reproduces the settings of the records it completes, so that following it writes
records that match them: ``--out`` the results folder the records were read from, ``--epochs``
their ``train.epochs``, ``--config`` the tuned preset their ``selection`` names, ``--threads``
and ``--device`` when they agree on other than the command's defaults (1, cpu), and a
``--set`` for every value of their ``params`` that differs from what the run would use
without it. Those defaults come from :mod:`reports.run_defaults` (the suite's ``TrainConfig``,
``ModelConfig``, scenario registry and strategy defaults; ``tests/reports/test_commands.py``
checks it against them, since the report never imports ``benchmark`` or ``strategies``). A
value whose default is not known there (an unknown scenario or strategy) is always spelled
out: an extra ``--set`` of a default changes nothing.

Which records give the settings of a strategy: its own records of the scenario when it has
some; otherwise (e.g. no ``joint`` record at all) the ``train`` and ``model`` values every
record of the scenario agrees on, less ``train.clipgrad`` (a per-strategy reference value).
A value those records disagree on cannot be reproduced by one command: it is left out and
named. Strategies that need different ``train``/``model`` values, epochs or presets get
one command each, joined by ``&&``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .run_defaults import DEFAULTS
from .schema import param_text

__all__ = ["default_params", "results_folder", "run_command"]

RUN = "python -m benchmark run --scenario {scenario} --strategies {strategies} --seeds {seeds}"
#: sections of ``params`` shared by every strategy of a command (``--set train.x`` applies to
#: all of them); a strategy's own section only applies to that strategy
SHARED = ("train", "model")
_DISAGREE = object()


def default_params(scenario: str, strategy: str, family: str | None) -> dict[str, dict]:
    """The ``params`` a run of ``strategy`` on ``scenario`` (network ``family``, as the record
    says) records when nothing is set, per section; keys whose default is unknown are absent."""
    d = DEFAULTS
    sc = d["scenarios"].get(scenario)
    st = d["strategies"].get(strategy)
    train = {k: v for k, v in d["train"].items() if v is not None}
    if sc is not None:
        train["valid_fraction"] = sc["valid_fraction"]
    if st is not None:
        train["clipgrad"] = st["clipgrad"]
    model = dict(d["model"])
    if sc is not None:
        model["family"] = sc["network"]
    if family in d["hidden"] and (family != "mlp" or sc is not None):
        embedded = sc is not None and sc["embedded"]
        model["hidden"] = (d["embedded_hidden"] if family == "mlp" and embedded
                           else d["hidden"][family])
    model.update(d["family"].get(family or "", {}))
    out = {"train": train, "model": model}
    if st is not None:
        out[strategy] = dict(st["params"])
    return out


def results_folder(records: Iterable[dict]) -> str | None:
    """The ``--out`` folder the records were written to (``<out>/runs/<file>.json``, as their
    ``_source`` says), when they all agree; None otherwise (e.g. records from W&B)."""
    folders = set()
    for r in records:
        src = str(r.get("_source", ""))
        if not src.endswith(".json") or src.startswith("wandb:"):
            return None
        parent = Path(src).parent
        folders.add(str(parent.parent if parent.name == "runs" else parent))
    return folders.pop() if len(folders) == 1 else None


def _agreed(records: Sequence[dict], section: str) -> dict[str, Any]:
    """Per key of ``params[section]``: the value every record has, else :data:`_DISAGREE`
    (also when a record lacks the key)."""
    secs = [r.get("params", {}).get(section) for r in records]
    secs = [s if isinstance(s, dict) else {} for s in secs]
    keys = {k for s in secs for k in s}
    out: dict[str, Any] = {}
    for k in sorted(keys):
        texts = {param_text(s[k]) if k in s else None for s in secs}
        out[k] = secs[0][k] if len(texts) == 1 and None not in texts else _DISAGREE
    return out


def _option(records: Sequence[dict], key: str, default: object) -> str | None:
    """The records' common ``key`` (``threads``, ``device``) when it is not ``default``."""
    values = {json.dumps(r.get(key)) for r in records}
    if len(values) != 1:
        return None
    v = records[0].get(key)
    if isinstance(v, bool) or not isinstance(v, int | str) or v == default or v == "":
        return None
    return str(v)


def _preset(records: Sequence[dict]) -> str | None:
    presets = {(r.get("selection") or {}).get("preset") for r in records}
    p = presets.pop() if len(presets) == 1 else None
    return p if isinstance(p, str) and p else None


def _settings(
    scenario: str, strategy: str, own: Sequence[dict], shared: Sequence[dict]
) -> tuple[tuple, dict[str, Any], list[str]]:
    """(group key: epochs, preset, shared settings), own settings, keys left out."""
    src = own or shared
    values = {sec: _agreed(src, sec) for sec in SHARED}
    # the protocol (``params.scenario.protocol``, absent in task-incremental records)
    protocol = _agreed(src, "scenario").get("protocol")
    if protocol is not None:
        values["scenario"] = {"protocol": protocol}
    if not own:
        values["train"].pop("clipgrad", None)
    if own:
        values[strategy] = _agreed(own, strategy)
    fam = values["model"].get("family")
    defaults = default_params(scenario, strategy, fam if isinstance(fam, str) else None)
    epochs = values["train"].pop("epochs", None)
    unclear = ["train.epochs"] if epochs is _DISAGREE else []
    sets: dict[str, dict[str, Any]] = {}
    for sec, vals in values.items():
        for k, v in vals.items():
            if v is _DISAGREE:
                unclear.append(f"{sec}.{k}")
            elif k not in defaults.get(sec, {}) or param_text(v) != param_text(defaults[sec][k]):
                sets.setdefault(sec, {})[k] = v
    own_sets = sets.pop(strategy, {})
    if "clipgrad" in own_sets and "clipgrad" in sets.get("train", {}):
        own_sets.pop("clipgrad")  # hat.clipgrad mirrors train.clipgrad
    shared_items = tuple(sorted(
        (f"{sec}.{k}", param_text(v)) for sec, vals in sets.items() for k, v in vals.items()
    ))
    epochs_text = None if epochs in (None, _DISAGREE) else param_text(epochs)
    preset = _preset(own) if own else None
    machine = (_option(src, "threads", 1), _option(src, "device", "cpu"))
    return ((epochs_text, preset, machine, shared_items),
            {f"{strategy}.{k}": param_text(v) for k, v in own_sets.items()}, unclear)


def run_command(
    scenario: str,
    strategies: Sequence[str],
    seeds: str,
    own: dict[str, Sequence[dict]],
    shared: Sequence[dict],
    out: str | None,
) -> tuple[str, list[str]]:
    """The command(s) running ``strategies`` × ``seeds`` on ``scenario`` with the settings of
    the existing records (``own[strategy]``: that strategy's records; ``shared``: every record
    of the scenario) into ``out``; and the settings that could not be reproduced (the records
    disagree on them). Several commands are joined by `` && ``."""
    groups: dict[tuple, tuple[list[str], dict[str, str]]] = {}
    unclear: list[str] = []
    for s in strategies:
        key, own_sets, bad = _settings(scenario, s, list(own.get(s, [])), shared)
        names, sets = groups.setdefault(key, ([], {}))
        names.append(s)
        sets.update(own_sets)
        unclear += [f"{s}: {k}" for k in bad]
    cmds = []
    for (epochs, preset, (threads, device), shared_items), (names, own_sets) in groups.items():
        cmd = RUN.format(scenario=shlex.quote(scenario), strategies=shlex.quote(",".join(names)),
                         seeds=seeds)
        if preset:
            cmd += f" --config {shlex.quote(preset)}"
        if epochs:
            cmd += f" --epochs {shlex.quote(epochs)}"
        if out:
            cmd += f" --out {shlex.quote(out)}"
        if threads:
            cmd += f" --threads {shlex.quote(threads)}"
        if device:
            cmd += f" --device {shlex.quote(device)}"
        pairs = [f"{k}={v}" for k, v in shared_items] + [f"{k}={v}" for k, v in own_sets.items()]
        if pairs:
            cmd += " --set " + " ".join(shlex.quote(p) for p in pairs)
        cmds.append(cmd)
    return " && ".join(cmds), unclear
