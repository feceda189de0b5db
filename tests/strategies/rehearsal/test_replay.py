"""Experience replay (strategies/rehearsal/replay.py): ``ReplayPlugin``'s experience-balanced
memory, each experience a group cut to its share of the budget."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.rehearsal.memory import (
    GroupMemory,
    balanced_quotas,
)
from tests.support.rehearsal import _stream
from tests.support.trunks import (
    keep_subnormals,  # noqa: F401  (autouse fixture)
)

# one torch thread (conftest's fixture): much faster for these tiny networks on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=6), capacity=st.integers(1, 80),
       seed=st.integers(0, 2**16))
def test_experience_balanced_memory_of_replay(sizes, capacity, seed):
    """``ReplayPlugin``'s rule: each experience a group, every group cut to its share."""
    torch.manual_seed(seed)
    memory = GroupMemory()
    for g, (x, y, t) in enumerate(_stream([(e, 0, n) for e, n in enumerate(sizes)])):
        memory.add(x, y, t, g)
        memory.shrink(balanced_quotas(memory.counts(g + 1), capacity))
        held = memory.counts(g + 1)
        assert sum(held) == min(capacity, sum(sizes[: g + 1]))
        cut = [h for h, n in zip(held, sizes, strict=False) if h < n]
        assert not cut or max(held) <= min(cut) + 1
    x, _, t = memory.tensors
    assert torch.equal(x[:, 1].long(), t)
