"""The run record: one JSON file per run, the contract between the runner, the checkpoints,
the W&B tracker and the report. Its fields (:data:`FIELDS`), schema versions and the one
validator (:func:`record_problem`, :func:`validate`) are defined here and nowhere else;
``docs/record-schema.md`` is generated from this module (:func:`markdown`).

The validator has two modes:

- **strict** (writing; the runner and the checkpoints): every field the suite writes is
  present with its type, accuracies in [0, 1], one entry per task, optional fields well formed,
  and everything the report checks when it reads the record;
- **lenient** (reading; the report, also for older schemas): only the fields the report needs,
  a tolerance of 1e-9 on accuracies, and a diverged run only needs its identity.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FIELDS",
    "READABLE_SCHEMAS",
    "SCHEMA_VERSION",
    "TIMING_FIELDS",
    "WANDB_ARTIFACT_TYPE",
    "WANDB_ARTIFACT_TYPES_READ",
    "WANDB_RECORD_KEY",
    "Field",
    "RecordError",
    "PROTOCOLS",
    "field_names",
    "is_diverged",
    "markdown",
    "param_text",
    "protocol_of",
    "record_problem",
    "selection_problem",
    "validate",
]

#: the schema written: 2 added ``valid_accuracy`` and ``selection``
SCHEMA_VERSION = 2
#: the schemas read (a schema-1 record reads as having both fields null)
READABLE_SCHEMAS = (1, 2)

#: fields that measure the time or memory of the process: they differ between two runs of one
#: experiment (and after a resume); every other field is the same for the same seed
TIMING_FIELDS = ("seconds", "peak_memory_mb", "created")

#: W&B artifact type of the run record (the tracker logs it, ``reports.wandb_source`` reads it)
WANDB_ARTIFACT_TYPE = "run-record"
#: artifact types read back (older runs used the second spelling)
WANDB_ARTIFACT_TYPES_READ = ("run-record", "run_record")
#: W&B summary key holding the run record as JSON (without its per-epoch ``history``)
WANDB_RECORD_KEY = "run_record"

#: tolerance of the lenient mode on accuracies (records written by older versions)
_READ_TOLERANCE = 1e-9


class RecordError(ValueError):
    """A file or object that is not a valid run record."""


@dataclass(frozen=True)
class Field:
    """One field of the run record.

    ``kind`` is the JSON type as documented; ``py_type`` the Python type the strict mode
    checks for a written field; ``written`` whether the strict mode requires it; ``read``
    whether the lenient mode requires it; ``since`` the schema version that added it (None:
    optional, absent in records written before it existed, within its schema version)."""

    name: str
    kind: str
    meaning: str
    py_type: type | None = None
    written: bool = False
    read: bool = False
    since: int | None = 1
    protocol: str | None = None


FIELDS: tuple[Field, ...] = (
    Field("schema", "int", "record schema version: 2 (version 1 lacked `valid_accuracy` and "
          "`selection`; such records are still read, both fields taken as null)",
          int, written=True),
    Field("scenario", "str", "scenario registry name, e.g. `split-digits`",
          str, written=True, read=True),
    Field("strategy", "str", "strategy registry name, e.g. `hat`, `joint`",
          str, written=True, read=True),
    Field("seed", "int", "the run's seed", int, written=True, read=True),
    Field("tag", "str", "grid-point tag (`\"\"` outside grids): the point's `section.key=value` "
          "pairs, keys sorted, values in their parameter's canonical text, e.g. "
          "`hat.c=0.1,hat.smax=25`", str, written=True),
    Field("params", "object", "every hyperparameter actually used: `{\"train\": {...}, "
          "\"<strategy>\": {...}, \"model\": {...}}`, plus `\"scenario\": {\"task\": \"<name>\"}` "
          "when one task was trained alone (`--set scenario.task=...`, the compression "
          "experiment) and `\"scenario\": {\"protocol\": \"class\"}` for a class-incremental run "
          "(`--set scenario.protocol=class`; absent: the task-incremental protocol); since "
          "version 2 `train.clipgrad` is the gradient-norm bound actually "
          "used (the strategy's reference value unless set); `model` holds only the keys that "
          "apply to its family: `family`, `hidden`, `layers`, `dropout`, `input_dropout`, plus "
          "`blocks` for `resnet32` and `stem` for `resnet18` (which has no `hidden`)",
          dict, written=True),
    Field("task_names", "list[str]", "T task names in training order",
          list, written=True, read=True),
    Field("accuracy", "T×T list[list[float]]", "row t: after training task t (joint: trained "
          "jointly on tasks 1..t; single: trained on task t alone, from the initialisation every "
          "run of the seed starts from); column u: test accuracy on task u in [0, 1]; every "
          "entry filled", list, written=True, read=True),
    Field("valid_accuracy", "T×T list[list[float]] or null", "as `accuracy`, on each task's "
          "held-out validation split (the training recipe's indices: `split_indices(n_train, "
          "valid_fraction, seed, task)`); what `python -m benchmark tune` selects on. Null for "
          "`joint` (its split is drawn over the union of tasks) and with `train.recipe=fixed` "
          "(nothing held out)", since=2),
    Field("random_accuracy", "list[float]", "per task, Σ_c p_train(c)·p_test(c) (stratified "
          "random classifier)", list, written=True, read=True),
    Field("epochs", "list[int]", "epochs trained per task", list, written=True),
    Field("seconds", "list[float]", "wall-clock training seconds per task", list, written=True),
    Field("peak_memory_mb", "list[float]", "per task, peak memory of its training in "
          "MB: on CUDA the allocator's peak (`torch.cuda.max_memory_allocated`, reset per task); "
          "on the CPU the growth of the process's resident set size over its size when the run "
          "started, sampled after every epoch (rough: it misses peaks inside a step); null where "
          "a diverged run's value was lost", since=None),
    Field("state_mb", "list[float]", "per task, MB of the distinct tensor storages "
          "the strategy holds after training it: the model's parameters and buffers, the "
          "optimizer's state and every plugin's tensors (EWC's Fisher and anchors, SI's "
          "importances, LwF's teacher, rehearsal memories); exact and machine-independent",
          since=None),
    Field("memory_samples", "list[int] or null", "per task, the samples the "
          "strategy's rehearsal memory holds after training it (the sum of its plugins' "
          "`memory_samples()`); null for strategies without one", since=None),
    Field("agnostic_accuracy", "list[list[float]] or null", "task-agnostic (Class-IL) test "
          "accuracy (`strategies/training/agnostic.py`): row t (after training task t) has t+1 "
          "entries, one per task 0..t, the prediction ranging over every class of tasks 0..t "
          "(a class is a (task, label) pair) with no task label; null for strategies without a "
          "task-agnostic prediction (their weights depend on the task and no task-inference rule "
          "is implemented) and for `single`. In a class-incremental record this is the "
          "protocol's headline matrix (the model was trained over every class seen) and "
          "`accuracy` is Task-IL read from the same logits", since=None),
    Field("valid_agnostic_accuracy", "list[list[float]] or null", "as `agnostic_accuracy`, "
          "on each task's held-out validation split (the indices of `valid_accuracy`): what "
          "`tune` selects on in the class-incremental protocol; null as `valid_accuracy`",
          since=None, protocol="class"),
    Field("agnostic_random_accuracy", "list[list[float]]", "row t has t+1 entries: on task "
          "u <= t, the accuracy Σ_c p_train(c)·p_test(c) of the stratified random classifier "
          "over every class of tasks 0..t (the reference of ρ on `agnostic_accuracy`)",
          list, written=True, since=None, protocol="class"),
    Field("task_prediction_accuracy", "list[list[float]] (absent but for task inference)",
          "a class-incremental record of a strategy that predicts by task inference (hat, "
          "packnet, pnn, pathnet; `strategies/training/task_inference.py`): row t, entry "
          "u <= t: the share of task u's test samples whose task the score "
          "`params.<strategy>.task_score` infers right among tasks 0..t",
          since=None, protocol="class"),
    Field("task_inference", "object (absent but for task inference)", "the same runs read "
          "by every task score: `score` (the record's, `params.<strategy>.task_score`) and "
          "`scores`: "
          "per score (`max_softmax`, `max_logit`, `energy`, `neg_entropy`), its "
          "`agnostic_accuracy`, `valid_agnostic_accuracy` (or null) and "
          "`task_prediction_accuracy` (rows as above) and `auroc` (after the last task, per "
          "task u: u's test samples against the other tasks', by u's score)",
          since=None, protocol="class"),
    Field("history", "list[list[object]]", "per task, per epoch: `epoch`, `train_loss`, "
          "`train_acc`, `valid_loss` (null without validation), `lr`, and for HAT `hat_s`, "
          "`hat_reg`, `hat_used`, `hat_reuse` (below)"),
    Field("hat", "object or null", "HAT mask statistics (`strategies.hat.HATNet.mask_statistics`): "
          "`{\"layers\": [...], \"tasks\": [...], \"used\": [[...]], \"overlap\": [[...]], "
          "\"weights_kept\": [...]}`, plus (optional for older records) "
          "`layer_weights_kept[l][k]` (fraction of gated layer l's weights joining two units "
          "task k keeps; reports fall back to the chain product of `used` without it) and "
          "`groups[l]` (layer l's gate group: layers a residual sum adds share one gate and "
          "report the same `used`)"),
    Field("selection", "object or null", "null when the strategy's hyperparameters were not "
          "selected on validation (defaults, or values set by hand); otherwise the tuned "
          "preset's block for this strategy plus `preset` (its path): `criterion` (text), "
          "`seeds`, `epochs`, `train` (fixed train settings of the tuning), `suite`, `space` "
          "(`\"<strategy>.<key>\": [values]`), `points` (`[{\"params\": {...}, \"value\": "
          "criterion}]`, every point), `chosen`, `value`", since=2),
    Field("versions", "object", "`python`, `torch`, `avalanche`, `suite`", dict, written=True),
    Field("device", "str", "device the run trained on"),
    Field("threads", "int", "torch CPU threads the run trained with "
          "(`torch.get_num_threads()` during the run: `--threads`, or torch's default with "
          "`--threads 0`); CPU results can differ with it", since=None),
    Field("diverged", "bool", "true when a number of the run became NaN or infinite "
          "(its loss blew up): every such number (e.g. `history[t][e].train_loss`, "
          "`valid_loss`, `hat_reg`) is written as null, never as a `NaN`/`Infinity` token "
          "(records are written with `allow_nan=False`); false for a run without one",
          since=None),
    Field("created", "str", "ISO-8601 UTC timestamp of completion", str, written=True),
)


#: the protocols a record can come from: task-incremental (the paper's; the task label given
#: at test) and class-incremental (one prediction over every class seen, no task label)
PROTOCOLS = ("task", "class")


def protocol_of(rec: dict) -> str:
    """The protocol that produced ``rec``: ``params.scenario.protocol`` (absent: ``task``)."""
    params = rec.get("params")
    scen = params.get("scenario") if isinstance(params, dict) else None
    return scen.get("protocol", "task") if isinstance(scen, dict) else "task"


def field_names(protocol: str | None = None) -> tuple[str, ...]:
    """Every field of a record, in the documented order; with ``protocol``, the fields a
    record of that protocol holds."""
    return tuple(f.name for f in FIELDS
                 if protocol is None or f.protocol in (None, protocol))


_WRITTEN = {f.name: f.py_type for f in FIELDS if f.written and f.protocol is None}
_WRITTEN_IN = {f.name: (f.protocol, f.py_type) for f in FIELDS if f.written and f.protocol}
_READ = tuple(f.name for f in FIELDS if f.read)


# --- values ---------------------------------------------------------------------------------


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    """A finite number (not a boolean)."""
    return _is_number(x) and math.isfinite(x)


def _is_frac(x: object, tol: float = _READ_TOLERANCE) -> bool:
    return _is_num(x) and -tol <= x <= 1 + tol


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_scalar(x: object) -> bool:
    """A parameter value: number, text, boolean or null (e.g. ``ewc.decay_factor=none``)."""
    return x is None or isinstance(x, str | bool) or _is_num(x)


def param_text(v: object) -> str:
    """Canonical text of a hyperparameter value, as grid tags and selections spell it:
    ``25`` for 25 and 25.0, ``0.1``, ``true``; strings as they are; lists and objects as
    compact JSON (``benchmark.grid.format_value`` uses it too)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if math.isfinite(v) and v.is_integer() and abs(v) < 1e15 else repr(v)
    if isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def is_diverged(rec: dict) -> bool:
    """A run whose loss became non-finite: ``"diverged": true``, or (records written before
    the flag existed) an accuracy matrix holding NaN/Infinity tokens. Its numbers are never
    used: the report shows "diverged" for it and leaves it out of every mean."""
    if rec.get("diverged") is True:
        return True
    acc = rec.get("accuracy")
    return isinstance(acc, list) and any(
        isinstance(v, float) and not math.isfinite(v)
        for row in acc if isinstance(row, list) for v in row
    )


# --- parts of a record ----------------------------------------------------------------------


def _matrix_problem(m: object, rows: int, cols: int, name: str) -> str | None:
    """Lenient: ``m`` is rows×cols of numbers in [0, 1] (± the read tolerance)."""
    if not isinstance(m, list) or len(m) != rows:
        return f"'{name}' must be a list of {rows} rows"
    for i, row in enumerate(m):
        if not isinstance(row, list) or len(row) != cols:
            return f"'{name}' row {i} must have {cols} entries"
        if not all(_is_frac(v) for v in row):
            return f"'{name}' row {i} must hold numbers in [0, 1]"
    return None


def _square_problem(m: Any, n: int, name: str) -> str | None:
    """Strict: ``m`` is an n×n matrix of numbers in [0, 1] (every entry filled)."""
    if not isinstance(m, list) or len(m) != n or any(
            not isinstance(r, list) or len(r) != n for r in m):
        return f"'{name}' must be a {n}×{n} matrix"
    if not all(_is_frac(v, 0.0) for row in m for v in row):
        return f"'{name}' entries must be numbers in [0, 1]"
    return None


def _hat_problem(hat: object) -> str | None:
    if not isinstance(hat, dict):
        return "'hat' must be an object or null"
    layers, tasks = hat.get("layers"), hat.get("tasks")
    if not isinstance(layers, list) or not layers or not isinstance(tasks, list) or not tasks:
        return "'hat' needs non-empty 'layers' and 'tasks' lists"
    for key in ("used", "overlap", "layer_weights_kept"):
        if key in hat and hat[key] is not None:
            p = _matrix_problem(hat[key], len(layers), len(tasks), f"hat.{key}")
            if p:
                return p
    wk = hat.get("weights_kept")
    if wk is not None and (
        not isinstance(wk, list) or len(wk) != len(tasks) or not all(_is_frac(v) for v in wk)
    ):
        return f"'hat.weights_kept' must hold {len(tasks)} numbers in [0, 1]"
    return None


def selection_problem(sel: object) -> str | None:
    """Why ``sel`` is not a hyperparameter selection block (as ``benchmark.tuning`` writes it
    into presets and run records), or None."""
    if not isinstance(sel, dict):
        return "'selection' must be an object or null"
    space = sel.get("space")
    if not isinstance(space, dict) or not space or not all(
        isinstance(k, str) and isinstance(v, list) and v and all(_is_scalar(x) for x in v)
        for k, v in space.items()
    ):
        return "'selection.space' must map each key to a non-empty list of numbers or strings"
    keys = set(space)
    points = sel.get("points")
    if not isinstance(points, list) or not points:
        return "'selection.points' must be a non-empty list of {params, value}"
    for i, pt in enumerate(points):
        if not isinstance(pt, dict) or not isinstance(pt.get("params"), dict) or "value" not in pt:
            return f"'selection.points' entry {i} must be an object with 'params' and 'value'"
        if set(pt["params"]) != keys or not all(_is_scalar(v) for v in pt["params"].values()):
            return f"'selection.points' entry {i}: 'params' must set exactly the space's keys"
        v = pt.get("value")
        if not (v is None or _is_num(v) or (isinstance(v, float) and math.isnan(v))):
            return f"'selection.points' entry {i}: 'value' must be a number or null"
    chosen = sel.get("chosen")
    if not isinstance(chosen, dict) or set(chosen) != keys:
        return "'selection.chosen' must be an object setting exactly the space's keys"
    return None


# --- the validator --------------------------------------------------------------------------


def record_problem(rec: object, *, strict: bool) -> str | None:
    """Why ``rec`` is not a valid run record, or None when it is.

    Lenient (``strict=False``, reading): a JSON object with ``scenario``, ``strategy``,
    ``seed``, ``task_names``, ``accuracy`` and ``random_accuracy``; ``schema`` (when present)
    readable; non-empty string ``scenario``/``strategy``; integer ``seed``; ``task_names`` a
    non-empty list of T strings; ``accuracy`` T×T and ``random_accuracy`` length T, numbers in
    [0, 1] (± 1e-9); ``tag`` a string and ``params`` an object when present; ``hat`` null or
    mask statistics whose ``used``/``overlap``/``layer_weights_kept`` are layers×tasks and
    ``weights_kept`` per task; ``valid_accuracy`` null or T×T in [0, 1]; ``selection`` null or
    a block (:func:`selection_problem`); ``diverged`` (when present) true or false. A diverged
    run (:func:`is_diverged`) only needs its identity and ``accuracy``/``random_accuracy``
    lists (its ``hat``/``valid_accuracy`` are never used, so not checked).

    Strict (``strict=True``, writing): first every written field present with its type
    (:data:`FIELDS`), ``schema`` readable, T >= 1, ``accuracy`` (and ``valid_accuracy`` when
    not null) T×T in [0, 1] exactly, one ``random_accuracy``/``epochs``/``seconds`` entry per
    task, the optional fields well formed (``agnostic_accuracy`` row t of t+1 numbers in
    [0, 1]; ``peak_memory_mb`` T numbers >= 0 or null; ``memory_samples`` T integers >= 0),
    ``diverged`` a bool and ``threads`` an integer >= 1; then every lenient rule.
    """
    if strict:
        problem = _write_problem(rec)
        if problem:
            return problem
    return _read_problem(rec)


def validate(rec: Any, *, strict: bool = True) -> dict:
    """``rec`` when it is a valid run record (:func:`record_problem`); else :class:`RecordError`
    with the reason."""
    problem = record_problem(rec, strict=strict)
    if problem:
        raise RecordError(problem)
    return rec


def _write_problem(rec: object) -> str | None:
    """The rules of a record as the suite writes it (checked before the reading rules)."""
    if not isinstance(rec, dict):
        return "a run record is a JSON object"
    for key, typ in _WRITTEN.items():
        if key not in rec:
            return f"missing field '{key}'"
        if not isinstance(rec[key], typ) or (typ is int and isinstance(rec[key], bool)):
            return f"field '{key}' must be {typ.__name__}"
    if rec["schema"] not in READABLE_SCHEMAS:
        return (f"unsupported schema {rec['schema']} (this suite reads "
                f"{', '.join(map(str, READABLE_SCHEMAS))})")
    n = len(rec["task_names"])
    if n == 0:
        return "'accuracy' must be a T×T matrix with T >= 1 (no task_names)"
    problem = _square_problem(rec["accuracy"], n, "accuracy")
    if problem is None and rec.get("valid_accuracy") is not None:
        problem = _square_problem(rec["valid_accuracy"], n, "valid_accuracy")
    if problem:
        return problem
    for key in ("random_accuracy", "epochs", "seconds"):
        if len(rec[key]) != n:
            return f"'{key}' must have one entry per task ({n})"
    problem = _optional_problem(rec, n) or _protocol_problem(rec, n)
    if problem:
        return problem
    if not isinstance(rec.get("diverged", False), bool):
        return "field 'diverged' must be true or false"
    threads = rec.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or threads < 1):
        return "field 'threads' must be an integer >= 1"
    return None


def _optional_problem(rec: dict, n: int) -> str | None:
    """Strict: the optional per-task fields ``agnostic_accuracy``, ``peak_memory_mb`` and
    ``memory_samples`` (absent in older records)."""
    agn = rec.get("agnostic_accuracy")
    if agn is not None:
        if not isinstance(agn, list) or len(agn) != n or any(
                not isinstance(r, list) or len(r) != t + 1 for t, r in enumerate(agn)):
            return "'agnostic_accuracy' must be null or T rows, row t with t+1 entries"
        if not all(_is_frac(v, 0.0) for row in agn for v in row):
            return "'agnostic_accuracy' entries must be numbers in [0, 1]"
    peak = rec.get("peak_memory_mb")
    if peak is not None and (not isinstance(peak, list) or len(peak) != n or any(
            v is not None and (not _is_number(v) or v < 0) for v in peak)):
        return f"'peak_memory_mb' must be a list of {n} numbers >= 0"
    held = rec.get("memory_samples")
    if held is not None and (not isinstance(held, list) or len(held) != n
                             or not all(_is_count(v) for v in held)):
        return f"'memory_samples' must be null or a list of {n} integers >= 0"
    return None


def _triangle_problem(m: object, n: int, name: str) -> str | None:
    """Strict: ``m`` is n rows, row t of t+1 numbers in [0, 1]."""
    if not isinstance(m, list) or len(m) != n or any(
            not isinstance(r, list) or len(r) != t + 1 for t, r in enumerate(m)):
        return f"'{name}' must be {n} rows, row t with t+1 entries"
    if not all(_is_frac(v, 0.0) for row in m for v in row):
        return f"'{name}' entries must be numbers in [0, 1]"
    return None


def _protocol_problem(rec: dict, n: int) -> str | None:
    """Strict: the protocol is known, and the fields of one protocol (``Field.protocol``) are
    written in its records only, well formed."""
    protocol = protocol_of(rec)
    if protocol not in PROTOCOLS:
        return (f"'params.scenario.protocol' must be one of {', '.join(PROTOCOLS)}, "
                f"got {protocol!r}")
    for key, (only, typ) in _WRITTEN_IN.items():
        if only == protocol and not isinstance(rec.get(key), typ):
            return f"missing field '{key}' (a {protocol}-incremental record)"
    for f in FIELDS:
        if f.protocol is not None and f.protocol != protocol and f.name in rec:
            return f"field '{f.name}' belongs to {f.protocol}-incremental records only"
    if protocol == "class":
        if rec.get("agnostic_accuracy") is None:
            return "'agnostic_accuracy' is the Class-IL matrix of a class-incremental record"
        for key in ("valid_agnostic_accuracy", "agnostic_random_accuracy",
                    "task_prediction_accuracy"):
            if rec.get(key) is not None:
                problem = _triangle_problem(rec[key], n, key)
                if problem:
                    return problem
        if "task_inference" in rec:
            return _task_inference_problem(rec["task_inference"], n)
    return None


def _task_inference_problem(ti: object, n: int) -> str | None:
    """Strict: ``task_inference`` holds its score and, per score, its rows and AUROCs."""
    if not isinstance(ti, dict) or not isinstance(ti.get("scores"), dict) or not ti["scores"]:
        return "'task_inference' must be an object with 'score' and a non-empty 'scores'"
    if ti.get("score") not in ti["scores"]:
        return "'task_inference.score' must be one of its 'scores'"
    for name, block in ti["scores"].items():
        where = f"task_inference.scores.{name}"
        if not isinstance(block, dict):
            return f"'{where}' must be an object"
        for key in ("agnostic_accuracy", "valid_agnostic_accuracy", "task_prediction_accuracy"):
            if block.get(key) is None and key != "valid_agnostic_accuracy":
                return f"'{where}.{key}' is missing"
            if block.get(key) is not None:
                problem = _triangle_problem(block[key], n, f"{where}.{key}")
                if problem:
                    return problem
        aur = block.get("auroc")
        if not isinstance(aur, list) or len(aur) != n or not all(
                v is None or _is_frac(v, 0.0) for v in aur):
            return f"'{where}.auroc' must be {n} numbers in [0, 1]"
    return None


def _read_problem(rec: object) -> str | None:
    """The rules of a record the report can use (every readable schema)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    problem = _identity_problem(rec)
    if problem:
        return problem
    if is_diverged(rec):  # its numbers are never used: only their containers are checked
        if not isinstance(rec["accuracy"], list) or not isinstance(rec["random_accuracy"], list):
            return "'accuracy' and 'random_accuracy' must be lists (diverged run)"
        return selection_problem(rec["selection"]) if rec.get("selection") is not None else None
    return _results_problem(rec, len(rec["task_names"]))


def _identity_problem(rec: dict) -> str | None:
    """Lenient: the fields that say which run a record is, and its schema."""
    missing = [k for k in _READ if k not in rec]
    if missing:
        return "missing field(s) " + ", ".join(missing)
    if rec.get("diverged") not in (None, True, False):
        return "'diverged' must be true or false"
    if rec.get("schema", 1) not in READABLE_SCHEMAS or isinstance(rec.get("schema"), bool):
        return f"unsupported schema {rec.get('schema')!r} (expected 1 or 2)"
    for key in ("scenario", "strategy"):
        if not isinstance(rec[key], str) or not rec[key]:
            return f"'{key}' must be a non-empty string"
    if not isinstance(rec["seed"], int) or isinstance(rec["seed"], bool):
        return "'seed' must be an integer"
    names = rec["task_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "'task_names' must be a non-empty list of strings"
    if not isinstance(rec.get("tag", ""), str):
        return "'tag' must be a string"
    if not isinstance(rec.get("params", {}), dict):
        return "'params' must be an object"
    return None


def _results_problem(rec: dict, n: int) -> str | None:
    """Lenient: the numbers of a run that did not diverge (``n`` tasks)."""
    p = _matrix_problem(rec["accuracy"], n, n, "accuracy")
    if p:
        return p + f" (T = {n} from task_names)"
    ra = rec["random_accuracy"]
    if not isinstance(ra, list) or len(ra) != n or not all(_is_frac(v) for v in ra):
        return f"'random_accuracy' must hold {n} numbers in [0, 1]"
    if rec.get("valid_accuracy") is not None:
        p = _matrix_problem(rec["valid_accuracy"], n, n, "valid_accuracy")
        if p:
            return p + f" (T = {n} from task_names)"
    if rec.get("selection") is not None:
        p = selection_problem(rec["selection"])
        if p:
            return p
    if rec.get("hat") is not None:
        return _hat_problem(rec["hat"])
    return None


# --- documentation --------------------------------------------------------------------------

_DOC_INTRO = """\
# Run record schema (version {version})

One JSON file per run under `<out>/runs/`, named
`<scenario>__<strategy>__s<seed>[__class][__<tag>].json` (`__class`: a class-incremental run, \
so that both protocols' records of one experiment share a folder; a tag with characters other \
than letters, digits and `._=-,` has them replaced by `-` plus `~` and 8 hex digits of its \
SHA-1, so distinct tags never share a file: `scenario.task=digits:0-1` gives \
`…digits-0-1~21b67f61.json`), written \
atomically (temporary file in the same folder, then `os.replace`), as strict JSON (no \
`NaN`/`Infinity` tokens: see `diverged`).

`reports/schema.py` defines the fields below and the one validator: strict when the suite \
writes a record (every field marked *written* present with its type), lenient when the report \
reads one (only the fields marked *read*; schemas {readable} are read). This page is generated \
from it: `python -c "from reports.schema import markdown; print(markdown(), end='')" \
> docs/record-schema.md`.

Column *since*: the schema version that added the field; *optional*: absent in records written \
before it existed.
"""

_DOC_HAT = """
## HAT monitoring keys of `history`

Computed once per epoch (after the epoch's last step, before the best-validation weights are
restored) from the embeddings of the task being trained, at s = smax, one value per gated layer
in the order of `hat.layers`:

- `hat_used[l]`: fraction of layer l's units whose mask is on (> 0.5) for the current task
  (its capacity use, as `hat.used` at the end of the task);
- `hat_reuse[l]`: fraction of those units that earlier tasks already use (cumulative mask
  > 0.5), as `hat.overlap`; 0 for the first task and when the task uses no unit.
"""


def markdown() -> str:
    """The text of ``docs/record-schema.md``."""
    rows = ["| field | type | since | required | meaning |", "|---|---|---|---|---|"]
    for f in FIELDS:
        since = "optional" if f.since is None else str(f.since)
        required = ", ".join(m for m, on in (("written", f.written), ("read", f.read)) if on)
        if f.protocol is not None:
            required = f"{f.protocol}-incremental records only" + (
                f" ({required})" if required else "")
        rows.append(f"| `{f.name}` | {f.kind} | {since} | {required or '—'} | {f.meaning} |")
    intro = _DOC_INTRO.format(version=SCHEMA_VERSION,
                              readable=", ".join(map(str, READABLE_SCHEMAS)))
    return intro + "\n" + "\n".join(rows) + "\n" + _DOC_HAT
