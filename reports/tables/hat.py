"""HAT's own tables: the smax × c robustness grid, the capacity its masks use (mean mask
statistics), the compression of each task trained alone and the capacity over training
(per-epoch monitoring)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .. import metrics
from ..per_run import finite_float
from .model import HAT, JOINT, Capacity, Duplicate, Grid, Missing, Monitoring, seeds_arg, stat
from .records import ScenarioRecords, dedupe

__all__ = ["capacity", "compression", "grid", "monitoring"]


def _layer_weights(hat: dict) -> np.ndarray:
    """layers × tasks fraction of each layer's weights that join two kept units: as the
    record gives it (``layer_weights_kept``: residual networks, where a layer's input gate is
    not the previous layer's), else from ``used`` along the chain of layers (older records)."""
    given = hat.get("layer_weights_kept")
    if given is not None:
        return np.asarray(given, dtype=float)
    used = np.asarray(hat["used"], dtype=float)
    prev = np.vstack([np.ones((1, used.shape[1])), used[:-1]])
    return used * prev


def compression(
    alone: list[dict], notes: list[str], duplicates: list[Duplicate] | None = None
) -> Capacity | None:
    """Per task trained alone (HAT records with mask statistics): fraction of units per layer
    and overall, and of weights per layer and overall, mean over seeds (diverged runs left
    out, noted)."""
    alone = dedupe(alone, notes, duplicates)
    for r in alone:
        if r.get("diverged"):
            notes.append(f"{r['strategy']} seed {r['seed']} [{r.get('tag', '')}] diverged "
                         "(non-finite loss): left out of the compression data")
    hat = [r for r in alone if r["strategy"] == HAT and r.get("hat") and not r.get("diverged")
           and r["hat"].get("used") is not None and len(r["task_names"]) == 1]
    if not hat:
        return None
    layers = [str(x) for x in hat[0]["hat"]["layers"]]
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in hat:
        if [str(x) for x in r["hat"]["layers"]] != layers:
            notes.append(f"{r.get('_source', '?')}: HAT statistics of other layers; left out")
            continue
        by_task[str(r["task_names"][0])].append(r["hat"])
    tasks = sorted(by_task)
    used = np.array([[np.mean([h["used"][i][0] for h in by_task[t]]) for t in tasks]
                     for i in range(len(layers))])
    layer_w = np.array([
        np.mean([_layer_weights(h)[:, 0] for h in by_task[t]],
                axis=0)
        for t in tasks
    ]).T

    def per_task(key: str) -> np.ndarray | None:
        if any(h.get(key) is None for t in tasks for h in by_task[t]):
            return None
        return np.array([np.mean([h[key][0] for h in by_task[t]]) for t in tasks])

    return Capacity(
        layers=layers, tasks=tasks, used=used, overlap=None,
        weights_kept=per_task("weights_kept"), n=min(len(v) for v in by_task.values()),
        units_kept=per_task("units_kept"), layer_weights_kept=layer_w,
    )


def monitoring(hat_records: list[dict], n_tasks: int) -> Monitoring | None:
    """Per task and epoch, mean ``hat_used``/``hat_reuse`` per layer over the untagged hat
    records whose history has them (records with another layer count are left out)."""
    recs = []
    for r in hat_records:
        hist = r.get("history")
        if not isinstance(hist, list) or len(hist) != n_tasks:
            continue
        if not all(isinstance(e, dict) and isinstance(e.get("hat_used"), list)
                   and isinstance(e.get("hat_reuse"), list) for task in hist for e in task):
            continue
        if not all(hist):
            continue
        recs.append(r)
    if not recs:
        return None
    n_layers = len(recs[0]["history"][0][0]["hat_used"])
    recs = [r for r in recs
            if all(len(e["hat_used"]) == n_layers for task in r["history"] for e in task)]
    hat0 = recs[0].get("hat") or {}
    layers = [str(x) for x in hat0.get("layers", [])]
    if len(layers) != n_layers:
        layers = [f"layer {i + 1}" for i in range(n_layers)]
    used, reuse, seeds = [], [], []
    for t in range(n_tasks):
        n_ep = max(len(r["history"][t]) for r in recs)
        u = np.full((len(recs), n_ep, n_layers), np.nan)
        v = np.full_like(u, np.nan)
        for k, r in enumerate(recs):
            for e, entry in enumerate(r["history"][t]):
                u[k, e] = entry["hat_used"]
                v[k, e] = entry["hat_reuse"]
        used.append(np.nanmean(u, axis=0))
        reuse.append(np.nanmean(v, axis=0))
        seeds.append(np.sum(~np.isnan(u[:, :, 0]), axis=0))
    names = [str(x) for x in recs[0]["task_names"]]
    return Monitoring(layers=layers, tasks=names, used=used, reuse=reuse, seeds=seeds,
                      n=len(recs))


def grid(sr: ScenarioRecords, confidence: float) -> Grid | None:
    """The smax × c grid of HAT records (tagged or not), when at least two points exist."""
    points: dict[tuple[float, float], dict[int, dict]] = defaultdict(dict)
    joint, acc = sr.joint, sr.acc
    for r in sr.records:
        if r["strategy"] != HAT:
            continue
        hp = r.get("params", {}).get(HAT)
        if not isinstance(hp, dict):
            continue
        smax, c = finite_float(hp.get("smax")), finite_float(hp.get("c"))
        if smax is None or c is None:
            continue
        points[(smax, c)].setdefault(r["seed"], r)  # first record per point and seed
    if len(points) < 2:
        return None
    grid_seeds = sorted({sd for p in points.values() for sd in p})
    lacking = [sd for sd in grid_seeds if sd not in joint]
    metric = "final_acc" if lacking else "rho"
    if lacking:
        sr.missing.append(
            Missing(
                "robustness grid shows final accuracy, not rho: no joint record for seed(s) "
                + seeds_arg(lacking),
                sr.command([JOINT], lacking),
            )
        )
    cells = {}
    for key, by_seed in points.items():
        vals = []
        for sd, r in by_seed.items():
            if metric == "rho":
                curve = metrics.mean_forgetting_ratio(
                    acc[id(r)], acc[id(joint[sd])], r["random_accuracy"]
                )
                vals.append(float(curve[-1]))
            else:
                vals.append(metrics.final_average_accuracy(acc[id(r)]))
        cells[key] = stat(vals, confidence)
    return Grid(
        metric=metric,
        smax=sorted({k[0] for k in points}),
        c=sorted({k[1] for k in points}),
        cells=cells,
    )


def capacity(hat_records: list[dict], n_tasks: int, notes: list[str]) -> Capacity | None:
    """Mean HAT mask statistics over the untagged hat records that carry them; records whose
    layers or task count differ from the first such record are left out (noted)."""
    stats = [r for r in hat_records if r.get("hat") and r["hat"].get("used") is not None]
    if not stats:
        return None
    ref = stats[0]["hat"]
    layers = [str(x) for x in ref["layers"]]
    tasks = [str(x) for x in ref["tasks"]]
    keep = []
    for r in stats:
        h = r["hat"]
        if [str(x) for x in h["layers"]] != layers or len(h["tasks"]) != len(tasks):
            notes.append(f"{r.get('_source', '?')}: HAT statistics of other layers/tasks; left out")
        else:
            keep.append(h)
    used = np.mean([np.asarray(h["used"], dtype=float) for h in keep], axis=0)
    ov = [h["overlap"] for h in keep if h.get("overlap") is not None]
    wk = [h["weights_kept"] for h in keep if h.get("weights_kept") is not None]
    return Capacity(
        layers=layers,
        tasks=tasks,
        used=used,
        overlap=np.mean(np.asarray(ov, dtype=float), axis=0) if len(ov) == len(keep) else None,
        weights_kept=np.mean(np.asarray(wk, dtype=float), axis=0) if len(wk) == len(keep) else None,
        n=len(keep),
    )
