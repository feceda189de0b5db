"""Compression and monitoring numbers from known masks: HATNet.mask_statistics and the per-epoch
history keys (``hat_used``/``hat_reuse``, HATPlugin.epoch_metrics) on a network whose
embeddings are set by hand, and the report's compression-alone and monitoring data built from
them (reports.tables)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reports.tables import compute_report
from strategies import HATNet, HATPlugin


def _set_units(net: HATNet, task: int, on: list[int]) -> None:
    """Embeddings of ``task``: +1 for the first ``on[l]`` units of layer l, -1 for the rest."""
    with torch.no_grad():
        for layer, k in zip(net.gated_layers, on, strict=True):
            e = layer.embedding(task)
            e.fill_(-1.0)
            e[:k] = 1.0


def _mlp() -> HATNet:
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU())
    return HATNet.wrap(trunk, (1, 4, 4), [3, 3])


def _conv() -> HATNet:
    trunk = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 6), nn.ReLU())
    return HATNet.wrap(trunk, (2, 8, 8), [2])


def test_compression_rates_of_a_known_mask():
    net = _mlp()
    _set_units(net, 0, [4, 2])
    stats = net.mask_statistics([0])
    assert stats["used"] == [[0.4], [0.25]]
    assert stats["units_kept"] == [pytest.approx(6 / 18)]
    # weights joining kept units: 4 of 10 units read all 16 inputs; 2 of 8 read the 4 kept
    assert stats["weights_kept"] == [pytest.approx((4 * 16 + 2 * 4) / (10 * 16 + 8 * 10))]


def _brute_force_layer_weights(net: HATNet, task: int) -> list[float]:
    out, prev = [], None
    for layer, m in zip(net.gated_layers, net.masks(task), strict=True):
        on = m > 0.5
        inp = torch.ones(layer.in_width, dtype=torch.bool) if prev is None else (
            prev.repeat_interleave(layer.input_repeat))
        keep = on.view(-1, 1) & inp.view(1, -1)
        keep = keep.view(keep.shape + (1,) * (layer.weight.dim() - 2)).expand_as(layer.weight)
        out.append(float(keep.float().mean()))
        prev = on
    return out


def _alone_record(net: HATNet, seed: int, task_name: str) -> dict:
    stats = net.mask_statistics([0])
    return {
        "schema": 1, "scenario": "toy", "strategy": "hat", "seed": seed,
        "tag": f"scenario.task={task_name}",
        "params": {"hat": {"smax": 400.0, "c": 1.5}, "scenario": {"task": task_name}},
        "task_names": [task_name], "accuracy": [[0.9]], "random_accuracy": [0.5],
        "epochs": [1], "seconds": [0.1], "history": [[]], "hat": stats,
        "created": f"2024-01-01T00:00:0{seed}+00:00",
    }


@pytest.mark.parametrize("make,masks", [(_mlp, ([4, 2], [10, 8], [1, 7])),
                                        (_conv, ([1, 3], [4, 6], [3, 1]))])
def test_report_compression_per_layer_from_known_masks(make, masks):
    recs = []
    for seed, on in enumerate(masks):
        net = make()
        _set_units(net, 0, on)
        recs.append((on, _brute_force_layer_weights(net, 0), _alone_record(net, seed, "a")))
    rep = compute_report([r for _, _, r in recs])["toy"]
    comp = rep.compression
    assert comp is not None and comp.tasks == ["a"] and comp.n == len(masks)
    assert rep.strategies == [] and rep.grid is None  # alone records feed nothing else
    units = [layer.units for layer in make().gated_layers]
    expected_used = np.mean([[k / u for k, u in zip(on, units, strict=True)]
                             for on, _, _ in recs], axis=0)
    np.testing.assert_allclose(comp.used[:, 0], expected_used)
    # per-layer weights kept = used[l] · used[l-1], checked against counting the weights
    np.testing.assert_allclose(comp.layer_weights_kept[:, 0],
                               np.mean([bf for _, bf, _ in recs], axis=0))
    np.testing.assert_allclose(comp.units_kept, [np.mean([sum(on) / sum(units)
                                                          for on, _, _ in recs])])
    np.testing.assert_allclose(comp.weights_kept,
                               [np.mean([r["hat"]["weights_kept"][0] for _, _, r in recs])])


def test_alone_records_are_kept_apart_from_the_sequence():
    net = _mlp()
    _set_units(net, 0, [5, 4])
    alone = _alone_record(net, 0, "b")
    seq = dict(alone, tag="", params={"hat": {"smax": 400.0, "c": 0.75}},
               task_names=["a", "b"], accuracy=[[0.9, 0.5], [0.9, 0.8]],
               random_accuracy=[0.5, 0.5], epochs=[1, 1], seconds=[0.1, 0.1],
               history=[[], []], hat=net.mask_statistics([0, 1]))
    rep = compute_report([alone, seq])["toy"]
    assert rep.n_tasks == 2 and rep.strategies == ["hat"]
    assert rep.compression.tasks == ["b"] and rep.capacity.tasks == ["0", "1"]
    assert not any("T = 1" in n for n in rep.notes)


def test_capacity_metrics_of_the_task_being_trained():
    net = _mlp()
    _set_units(net, 0, [4, 2])
    net.update_cumulative(0)  # task 0 trained: its units are taken
    with torch.no_grad():  # task 1: units 2..6 of layer 1 (2 reused), units 0..3 of layer 2
        for layer, on in zip(net.gated_layers, (range(2, 7), range(0, 4)), strict=True):
            layer.embedding(1).fill_(-2.0)
            layer.embedding(1)[list(on)] = 0.5
    plugin = HATPlugin()
    plugin._net, plugin.task = net, 1  # as before_training_exp of task 1 leaves them
    m = plugin.epoch_metrics()
    assert m["hat_used"] == [0.5, 0.5]
    assert m["hat_reuse"] == [pytest.approx(2 / 5), pytest.approx(2 / 4)]
    plugin.task = 0
    assert plugin.epoch_metrics()["hat_used"] == [0.4, 0.25]
    # before any experience: s and R only
    assert set(HATPlugin().epoch_metrics()) == {"hat_s", "hat_reg"}


def test_monitoring_means_over_seeds_of_unequal_length():
    def rec(seed, hist):
        return {
            "schema": 1, "scenario": "toy", "strategy": "hat", "seed": seed, "tag": "",
            "params": {"hat": {"smax": 400.0, "c": 0.75}}, "task_names": ["a", "b"],
            "accuracy": [[0.9, 0.5], [0.9, 0.8]], "random_accuracy": [0.5, 0.5],
            "epochs": [len(h) for h in hist], "seconds": [0.1, 0.1], "created": "x",
            "hat": {"layers": ["l1", "l2"], "tasks": [0, 1], "used": [[0.5, 0.5], [0.5, 0.5]]},
            "history": [[{"epoch": i + 1, "hat_used": u, "hat_reuse": r}
                         for i, (u, r) in enumerate(h)] for h in hist],
        }

    a = rec(0, [[([0.2, 0.4], [0, 0]), ([0.4, 0.6], [0, 0])], [([0.5, 0.5], [1.0, 0.5])]])
    b = rec(1, [[([0.4, 0.2], [0, 0])], [([0.1, 0.3], [0.0, 0.5])]])
    mon = compute_report([a, b])["toy"].monitoring
    assert mon.layers == ["l1", "l2"] and mon.tasks == ["a", "b"] and mon.n == 2
    np.testing.assert_allclose(mon.used[0], [[0.3, 0.3], [0.4, 0.6]])
    np.testing.assert_allclose(mon.seeds[0], [2, 1])
    np.testing.assert_allclose(mon.used[1], [[0.3, 0.4]])
    np.testing.assert_allclose(mon.reuse[1], [[0.5, 0.5]])
