"""YAML presets (``--config``): reading and checking them, layering their overrides and grid
under the command line's, and their hyperparameter selection blocks."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from reports.schema import selection_problem
from strategies import ConfigError, TrainConfig
from strategies.common.config import from_overrides

from .. import grid as gridlib
from ..errors import BenchmarkError
from .args import parse_set


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping (plain YAML keeps the
    last value without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: YAML's own error follows
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    "while reading the mapping", node.start_mark,
                    f"key {key!r} is given twice (first at line {first.line + 1}, column "
                    f"{first.column + 1}): keep one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_preset(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - safe
    except OSError as err:
        raise BenchmarkError(f"cannot read --config {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise BenchmarkError(f"cannot read --config {path}: not a UTF-8 text file") from None
    except yaml.YAMLError as err:
        raise BenchmarkError(f"--config {path} is not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise BenchmarkError(f"--config {path} must be a YAML mapping of run options")
    allowed = {"scenario", "strategies", "seeds", "epochs", "set", "grid", "jobs", "out",
               "data_root", "device", "description", "selection"}
    extra = set(data) - allowed
    if extra:
        raise BenchmarkError(
            f"--config {path}: unknown key '{sorted(extra)[0]}'; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    for key in ("scenario", "out", "data_root", "device"):
        if key in data and not isinstance(data[key], str):
            raise BenchmarkError(f"--config {path}: '{key}' must be a string, got {data[key]!r}")
    for key in ("scenario", "strategies", "seeds", "out", "data_root", "device"):
        if key in data and (data[key] is None or not str(data[key]).strip() or data[key] == []):
            raise BenchmarkError(
                f"--config {path}: '{key}' is empty; give a value, or drop the key for its "
                "default")
    if "jobs" in data and (isinstance(data["jobs"], bool) or not isinstance(data["jobs"], int)
                           or data["jobs"] < 1):
        raise BenchmarkError(f"--config {path}: 'jobs' must be an integer >= 1, "
                             f"got {data['jobs']!r}")
    if "grid" in data:
        data["grid"] = gridlib.grid_from_mapping(data["grid"], f"--config {path}")
    if "selection" in data:
        _check_selection(data["selection"], path)
        data["_path"] = str(path)
    return data


def yaml_problem(err: yaml.YAMLError) -> str:
    """YAML's complaint in one line, with where it is: ``line 4, column 12: mapping values
    are not allowed here`` (and where the construct it was reading began, when YAML says)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or not problem:
        return str(err).splitlines()[0]
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and (start.line, start.column) != (mark.line, mark.column):
        text += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
    elif context:
        text += f" ({context})"
    return text


def _check_selection(sel: Any, path: Path) -> None:
    """A preset's ``selection`` as ``tune`` writes it: per strategy a block the report can
    read (space, points, chosen) whose keys are that strategy's own ``<strategy>.<key>``."""
    blocks = sel.get("strategies") if isinstance(sel, dict) else None
    problem = None if isinstance(blocks, dict) else "'strategies' must map names to blocks"
    for name, block in (blocks or {}).items() if problem is None else ():
        problem = selection_problem(block)
        if problem is None and any(str(k).split(".", 1)[0] != name or "." not in str(k)
                                   for k in block["chosen"]):
            problem = f"the keys of '{name}' must read {name}.<parameter>"
        if problem is not None:
            problem = f"strategy '{name}': {problem}"
            break
    if problem is not None:
        raise BenchmarkError(
            f"--config {path}: 'selection' is not as python -m benchmark tune writes it "
            f"({problem}); regenerate the preset with tune"
        )


def _merge_layers(preset: dict, args: argparse.Namespace):
    """Overrides and grid from the preset, then the command line: a command-line entry for a
    key (``--set``, ``--epochs`` or ``--grid``) replaces the preset's entry for that key."""
    preset_set = preset.get("set") or {}
    if not isinstance(preset_set, dict):
        raise BenchmarkError("--config: 'set' must be a mapping of section.key: value")
    p_over = parse_set([f"{k}={v}" for k, v in preset_set.items()])
    if preset.get("epochs") is not None:
        if "epochs" in p_over.get("train", {}):
            raise BenchmarkError(
                f"--config gives both 'epochs: {preset['epochs']}' and 'set: train.epochs: "
                f"{p_over['train']['epochs']}'; give one")
        p_over.setdefault("train", {})["epochs"] = preset["epochs"]
    p_grid = dict(preset.get("grid") or {})
    c_over = parse_set(list(args.set))
    if args.epochs is not None:
        if "epochs" in c_over.get("train", {}):
            raise BenchmarkError(
                f"--epochs {args.epochs} and --set train.epochs={c_over['train']['epochs']} both "
                "set the maximum epochs per task; give one")
        try:  # (the bound named as given: --epochs, which sets train.epochs)
            from_overrides(TrainConfig, {"epochs": args.epochs}, "train")
        except ConfigError as err:
            raise BenchmarkError(f"invalid --epochs {args.epochs}: {err}") from None
        c_over.setdefault("train", {})["epochs"] = args.epochs
    c_grid = gridlib.parse_grid(args.grid)

    def keys(over):
        return {f"{sec}.{k}" for sec, values in over.items() for k in values}

    for where, over, grid in (("--config", p_over, p_grid), ("the command line", c_over, c_grid)):
        both = sorted(keys(over) & set(grid))
        if both:
            raise BenchmarkError(
                f"{where} gives '{both[0]}' both as a fixed value (set/--set/epochs) and as "
                "a grid; give one"
            )
    c_keys = keys(c_over) | set(c_grid)
    overrides: dict[str, dict] = {}
    for sec, values in p_over.items():
        for k, v in values.items():
            if f"{sec}.{k}" not in c_keys:
                overrides.setdefault(sec, {})[k] = v
    for sec, values in c_over.items():
        overrides.setdefault(sec, {}).update(values)
    grid_raw = {k: v for k, v in p_grid.items() if k not in c_keys}
    grid_raw.update(c_grid)
    # a fixed task to train alone is a one-point grid: its record is tagged, so it never takes
    # the file name of the whole sequence's record
    if "task" in overrides.get("scenario", {}):
        grid_raw["scenario.task"] = [overrides["scenario"].pop("task")]
        if not overrides["scenario"]:
            del overrides["scenario"]
    return overrides, grid_raw


def _attach_selection(experiments: list, preset: dict) -> list:
    """Experiments whose strategy's values are those a tuned preset chose carry the preset's
    selection block (copied into their records); a value changed on the command line (or a
    grid over it) means the run's hyperparameters were not selected: no block."""
    blocks = (preset.get("selection") or {}).get("strategies") or {}
    out = []
    for exp in experiments:
        block = blocks.get(exp.strategy)
        if block is not None and any(f"{k}=" in exp.tag for k in block["chosen"]):
            block = None  # a grid over a selected key: these values were not selected
        if block is not None:
            given = exp.overrides.get(exp.strategy, {})
            keys = {key: key.split(".", 1)[1] for key in block["chosen"]}
            if all(name in given and gridlib.canonical_value(exp.strategy, name, given[name])
                   == gridlib.canonical_value(exp.strategy, name, block["chosen"][key])
                   for key, name in keys.items()):
                exp = replace(exp, selection={"preset": preset["_path"], **block})
        out.append(exp)
    return out


def _warn_selection_settings(preset: dict, overrides: dict, notes: list[str]) -> None:
    """One line when the run trains differently from how its preset's values were selected."""
    blocks = ((preset.get("selection") or {}).get("strategies") or {}).values()
    block = next(iter(blocks), None)  # one tuning: every block has its epochs
    if block is None:
        return
    tuned_epochs = block.get("epochs") or TrainConfig().epochs
    epochs = overrides.get("train", {}).get("epochs", TrainConfig().epochs)
    if str(epochs) != str(tuned_epochs):
        notes.append(f"warning: {preset['_path']} was selected with at most {tuned_epochs} "
                     f"epochs per task; this run uses {epochs}")
