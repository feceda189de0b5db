"""The rehearsal memories (strategies/rehearsal/memory.py): balanced quotas, the class-balanced
and reservoir memories keep their invariants (size, balance, intact rows, no duplicates,
determinism under a seed), the reservoir keeps every sample with equal probability, and the
memories survive ``torch.save``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import ERACEPlugin
from strategies.rehearsal.memory import (
    ClassBalancedMemory,
    ReservoirMemory,
    balanced_quotas,
)
from tests.support.rehearsal import _stream
from tests.support.trunks import (
    keep_subnormals,  # noqa: F401  (autouse fixture)
)

# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 60), min_size=1, max_size=12), capacity=st.integers(0, 300))
def test_balanced_quotas_are_as_equal_as_the_groups_allow(counts, capacity):
    quotas = balanced_quotas(counts, capacity)
    assert sum(quotas) == min(capacity, sum(counts))
    assert all(0 <= q <= c for q, c in zip(quotas, counts, strict=True))
    for g, (q, c) in enumerate(zip(quotas, counts, strict=True)):
        if q < c:  # a group cut short holds at least as much as any other, less one
            assert all(other <= q + 1 for other in quotas), (g, quotas)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(1, 40)),
                        min_size=1, max_size=8),
       capacity=st.integers(1, 60), seed=st.integers(0, 2**16))
def test_class_balanced_memory_invariants(batches, capacity, seed):
    def fill():
        torch.manual_seed(seed)
        memory = ClassBalancedMemory(capacity)
        offered: dict[tuple[int, int], int] = {}
        for x, y, t in _stream(batches):
            memory.add(x, y, t)
            key = (int(t[0]), int(y[0]))
            offered[key] = offered.get(key, 0) + len(y)
            held = memory.class_counts()
            assert len(memory) <= capacity
            assert len(memory) == min(capacity, sum(offered.values()))
            for cls, n in held.items():
                if n < offered[cls]:  # cut short: no class holds more than one more
                    assert max(held.values()) <= n + 1, held
        return memory

    memory = fill()
    x, y, t = memory.tensors
    assert torch.equal(x[:, 1].long(), t) and torch.equal(x[:, 2].long(), y)  # rows intact
    assert len(torch.unique(x[:, 0])) == len(x)  # no sample twice
    again = fill()  # the same seed: the same memory
    assert all(torch.equal(a, b) for a, b in zip(memory.tensors, again.tensors, strict=True))


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=10), capacity=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_reservoir_memory_invariants(sizes, capacity, seed):
    def fill():
        torch.manual_seed(seed)
        memory = ReservoirMemory(capacity)
        seen = 0
        for x, y, t in _stream([(0, 1, n) for n in sizes]):
            logits = torch.stack((x[:, 0], -x[:, 0]), dim=1)  # a function of the sample
            memory.add(x, y, t, logits)
            seen += len(y)
            assert len(memory) == min(capacity, seen) and memory.seen == seen
        return memory

    memory = fill()
    assert len(torch.unique(memory.x[:, 0])) == len(memory)
    assert torch.equal(memory.logits[:, 0], memory.x[:, 0])  # each row's own logits
    again = fill()
    assert torch.equal(memory.x, again.x) and torch.equal(memory.logits, again.logits)


def test_reservoir_keeps_every_sample_with_equal_probability():
    """After n samples each is held with probability capacity / n (a later duplicate slot in
    a batch overwrites an earlier one, as one-by-one insertion would)."""
    torch.manual_seed(0)
    n, capacity, trials = 60, 15, 200
    hits = torch.zeros(n)
    for _ in range(trials):
        memory = ReservoirMemory(capacity)
        for x, y, t in _stream([(0, 0, 7)] * 8 + [(0, 0, 4)]):
            memory.add(x, y, t, x[:, :1])
        hits[memory.x[:, 0].long()] += 1
    freq = hits / trials
    assert abs(float(freq.mean()) - capacity / n) < 1e-6
    assert float(freq.min()) > 0.12 and float(freq.max()) < 0.38, freq


def test_reservoir_slot_draws_cover_zero_to_position():
    """Sample number ``pos`` (0-based) draws its slot uniformly in ``[0, pos]``, ``pos``
    included (Vitter's algorithm R); while the memory fills, slot ``pos`` itself."""
    torch.manual_seed(0)
    memory = ReservoirMemory(capacity=3)
    slot = memory.slots(20000)
    pos = torch.arange(20000)
    assert torch.equal(slot[:3], pos[:3])
    assert (slot >= 0).all() and (slot <= pos).all()
    assert int((slot[3:] == pos[3:]).sum()) > 0  # the top of the range is drawn too
    u = (slot[3:].double() + 0.5) / (pos[3:] + 1)
    assert abs(float(u.mean()) - 0.5) < 0.01


def test_memories_survive_torch_save(tmp_path):
    torch.manual_seed(0)
    plugin = ERACEPlugin(mem_size=10)
    for x, y, t in _stream([(0, 0, 8), (0, 1, 8), (1, 0, 8)]):
        plugin.memory.add(x, y, t)
    torch.save(plugin.state_dict(), tmp_path / "m.pt")
    restored = ERACEPlugin(mem_size=10)
    restored.load_state_dict(torch.load(tmp_path / "m.pt"))
    assert all(torch.equal(a, b) for a, b in zip(plugin.memory.tensors,
                                                 restored.memory.tensors, strict=True))
    assert restored.memory.class_counts() == plugin.memory.class_counts()
