"""Rehearsal memories as plain tensors for the replay family (ER, A-GEM, DER++, ER-ACE, GDumb).

Avalanche keeps a memory as ``AvalancheDataset`` subsets and reads it through ``DataLoader``s
one sample at a time (``ReplayDataLoader``, ``GroupBalancedInfiniteDataLoader``), which costs
more than a training step of the suite's small networks. Here a memory is a few tensors on the
strategy's device, batches are taken by indexing, and every random draw comes from torch's
global CPU generator (``torch.rand``/``torch.randperm``, then moved to the device): a seeded
run repeats exactly, on any device. Everything a memory holds is tensors and Python numbers
(``state_dict``/``load_state_dict``), so ``torch.save`` can checkpoint it.

- ``GroupMemory``: samples in groups (an experience, or a class = a (task label, label) pair:
  the suite's tasks all use labels 0..n-1, so a label alone would merge classes of different
  tasks), each with a random priority drawn when it enters. ``shrink(quotas)`` keeps the
  ``quota`` highest priorities of each group: a uniform random subset of what the group held,
  which is what Avalanche's ``ReservoirSamplingBuffer`` keeps (its weights are these
  priorities).
- ``balanced_quotas``: equal shares of a capacity, the remainder to the first groups (as
  Avalanche's ``BalancedExemplarsBuffer.get_group_lengths``); a group with fewer samples than
  its share keeps them all and the spare share goes to the others.
- ``ReservoirMemory``: reservoir sampling over a stream of batches (Vitter's algorithm R, as
  in DER's code), with each sample's logits kept beside it (DER++).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Batch = tuple[Tensor, Tensor, Tensor]


def random_subset(n: int, k: int, device: torch.device | str = "cpu") -> Tensor:
    """``min(k, n)`` distinct indices of ``range(n)``, uniformly (global CPU generator)."""
    return torch.randperm(n)[:k].to(device)


def balanced_quotas(counts: Sequence[int], capacity: int) -> list[int]:
    """How many samples each group keeps: ``min(capacity, sum(counts))`` in all, as equal as
    the groups' sizes allow (quotas of groups that keep fewer than all their samples differ by
    at most one, the larger ones first in group order)."""
    quotas = [0] * len(counts)
    open_groups = [g for g, c in enumerate(counts) if c > 0]
    left = int(capacity)
    while open_groups and left > 0:
        share = left // len(open_groups)
        if share == 0:  # fewer slots than groups: one more for each of the first groups
            for g in open_groups[:left]:
                quotas[g] += 1
            break
        still_open = []
        for g in open_groups:
            take = min(share, counts[g] - quotas[g])
            quotas[g] += take
            left -= take
            if quotas[g] < counts[g]:
                still_open.append(g)
        open_groups = still_open
    return quotas


def _cat(old: Tensor | None, new: Tensor) -> Tensor:
    """``old`` followed by ``new``: always a new tensor (never a view of the caller's)."""
    return new.clone(memory_format=torch.contiguous_format) if old is None else torch.cat(
        (old, new))


class GroupMemory:
    """Samples ``(x, y, t)`` with a group id and a random priority each (see the module
    docstring). Groups are numbered 0, 1, ... by the caller."""

    def __init__(self):
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.t: Tensor | None = None
        self.group: Tensor | None = None
        self.priority: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.y is None else len(self.y)

    @property
    def tensors(self) -> Batch:
        if self.y is None:
            raise ValueError("the memory is empty")
        return self.x, self.y, self.t

    def add(self, x: Tensor, y: Tensor, t: Tensor, group: Tensor | int) -> None:
        """Append samples; each draws its priority now."""
        group = torch.as_tensor(group, dtype=torch.long, device=y.device).expand(len(y))
        self.x, self.y, self.t = _cat(self.x, x), _cat(self.y, y), _cat(self.t, t.expand(len(y)))
        self.group = _cat(self.group, group)
        self.priority = _cat(self.priority, torch.rand(len(y)).to(y.device))

    def counts(self, n_groups: int) -> list[int]:
        """Samples held per group ``0..n_groups-1``."""
        if self.group is None:
            return [0] * n_groups
        return torch.bincount(self.group, minlength=n_groups).tolist()

    def _grouped_order(self, order: Tensor, limit: Tensor) -> Tensor:
        """The entries of ``order`` (a permutation of the samples) whose rank within their
        group, in that order, is below their group's ``limit``; grouped by group id."""
        order = order[torch.argsort(self.group[order], stable=True)]
        group = self.group[order]
        sizes = torch.bincount(group, minlength=len(limit))
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(len(order), device=order.device) - starts[group]
        return order[rank < limit[group]]

    def shrink(self, quotas: Sequence[int]) -> None:
        """Keep the ``quotas[g]`` highest-priority samples of every group ``g``."""
        if self.y is None:
            return
        dev = self.y.device
        limit = torch.as_tensor(list(quotas), dtype=torch.long, device=dev)
        keep = self._grouped_order(torch.argsort(self.priority, descending=True), limit)
        self.x, self.y, self.t = self.x[keep], self.y[keep], self.t[keep]
        self.group, self.priority = self.group[keep], self.priority[keep]

    def sample(self, k: int) -> Batch:
        """``min(k, len)`` distinct samples, uniformly."""
        idx = random_subset(len(self), k, self.y.device)
        return self.x[idx], self.y[idx], self.t[idx]

    def sample_per_group(self, k: int) -> Batch:
        """``min(k, group size)`` distinct samples of every group, uniformly within each
        (Avalanche's ``GroupBalancedInfiniteDataLoader`` draws that many per group)."""
        n_groups = int(self.group.max()) + 1
        limit = torch.full((n_groups,), int(k), dtype=torch.long, device=self.y.device)
        idx = self._grouped_order(random_subset(len(self), len(self), self.y.device), limit)
        return self.x[idx], self.y[idx], self.t[idx]

    def state_dict(self) -> dict[str, Tensor | None]:
        return {k: getattr(self, k) for k in ("x", "y", "t", "group", "priority")}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        for k in ("x", "y", "t", "group", "priority"):
            setattr(self, k, state[k])


class ClassIndex:
    """Numbers the classes ((task label, label) pairs) in order of first appearance."""

    def __init__(self):
        self.classes: list[tuple[int, int]] = []
        self._index: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self.classes)

    def ids(self, y: Tensor, t: Tensor) -> Tensor:
        """Each sample's class id; new classes are numbered in (task, label) order."""
        t = t.expand(len(y))
        pairs, inverse = torch.unique(torch.stack((t, y), dim=1), dim=0, return_inverse=True)
        for task, label in pairs.tolist():
            if (task, label) not in self._index:
                self._index[(task, label)] = len(self.classes)
                self.classes.append((task, label))
        ids = torch.tensor([self._index[(a, b)] for a, b in pairs.tolist()], dtype=torch.long,
                           device=y.device)
        return ids[inverse]

    def state_dict(self) -> dict[str, list]:
        return {"classes": [list(c) for c in self.classes]}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.classes = [tuple(c) for c in state["classes"]]
        self._index = {c: i for i, c in enumerate(self.classes)}


class ClassBalancedMemory:
    """At most ``capacity`` samples, balanced over the classes ((task, label) pairs) seen:
    ``add`` offers new samples, then every class keeps its ``balanced_quotas`` share."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.memory = GroupMemory()
        self.classes = ClassIndex()

    def __len__(self) -> int:
        return len(self.memory)

    @property
    def tensors(self) -> Batch:
        return self.memory.tensors

    def add(self, x: Tensor, y: Tensor, t: Tensor) -> None:
        self.memory.add(x, y, t, self.classes.ids(y, t))
        counts = self.memory.counts(len(self.classes))
        self.memory.shrink(balanced_quotas(counts, self.capacity))

    def class_counts(self) -> dict[tuple[int, int], int]:
        """Samples held per class."""
        return dict(zip(self.classes.classes, self.memory.counts(len(self.classes)),
                        strict=True))

    def state_dict(self) -> dict:
        return {"memory": self.memory.state_dict(), "classes": self.classes.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
        self.classes.load_state_dict(state["classes"])


class ReservoirMemory:
    """Reservoir sampling over a stream: after ``seen`` samples were offered, each of them is
    held with probability ``capacity / seen`` (all of them while ``seen <= capacity``).

    Offered in batches, sample ``i`` of a batch is the ``seen + i``-th of the stream: it takes
    slot ``seen + i`` while the memory fills, afterwards a uniform draw ``j`` in
    ``[0, seen + i]`` and replaces slot ``j`` when ``j < capacity``; within a batch a later
    sample overwrites an earlier one drawn to the same slot, as one-by-one insertion would.
    Each sample keeps its logits (as offered) and their width (its head's class count).
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.seen = 0
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.t: Tensor | None = None
        self.logits: Tensor | None = None
        self.widths: Tensor | None = None
        #: the distinct widths ever offered (one: every sample's logits span all columns)
        self.width_set: set[int] = set()

    def __len__(self) -> int:
        return 0 if self.y is None else len(self.y)

    def slots(self, n: int) -> Tensor:
        """The slot of each of ``n`` new samples (``>= capacity``: not kept); advances
        ``seen``. One draw per sample from the global generator, kept or not."""
        pos = self.seen + torch.arange(n, dtype=torch.float64)
        draws = torch.floor(torch.rand(n, dtype=torch.float64) * (pos + 1))
        self.seen += n
        return torch.where(pos < self.capacity, pos, draws).long()

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor, t: Tensor, logits: Tensor,
            widths: Tensor | None = None) -> Tensor:
        """Offer a batch; returns the slots written (for tests and callers)."""
        n = len(y)
        dev = y.device
        t = t.expand(n)
        logits = logits.detach()
        if widths is None:
            widths = torch.full((n,), logits.shape[1], dtype=torch.long, device=dev)
            self.width_set.add(logits.shape[1])
        else:
            self.width_set.update(torch.unique(widths).tolist())
        slot = self.slots(n)
        size = len(self)
        grow = max(0, min(self.capacity, size + n) - size) if size < self.capacity else 0
        if grow:  # new slots size..size+grow-1: room first, filled below like every slot
            self._extend(x[:grow], y[:grow], t[:grow], logits[:grow], widths[:grow])
        accepted = (slot < self.capacity).nonzero().squeeze(1)
        if len(accepted) == 0:
            return accepted
        owner = torch.full((self.capacity,), -1, dtype=torch.long)
        owner.scatter_reduce_(0, slot[accepted], accepted, reduce="amax")
        dst = (owner >= 0).nonzero().squeeze(1)
        src = owner[dst].to(dev)
        dst = dst.to(dev)
        width = self.logits.shape[1]
        if logits.shape[1] > width:
            self._widen(logits.shape[1])
            width = logits.shape[1]
        self.x[dst], self.y[dst], self.t[dst] = x[src], y[src], t[src]
        rows = logits.new_zeros((len(src), width))
        rows[:, : logits.shape[1]] = logits[src]
        self.logits[dst] = rows
        self.widths[dst] = widths[src]
        return dst

    def _extend(self, x, y, t, logits, widths) -> None:
        if self.y is not None and logits.shape[1] > self.logits.shape[1]:
            self._widen(logits.shape[1])
        if self.y is not None and logits.shape[1] < self.logits.shape[1]:
            logits = torch.nn.functional.pad(logits, (0, self.logits.shape[1] - logits.shape[1]))
        self.x, self.y, self.t = _cat(self.x, x), _cat(self.y, y), _cat(self.t, t)
        self.logits, self.widths = _cat(self.logits, logits), _cat(self.widths, widths)

    def _widen(self, width: int) -> None:
        self.logits = torch.nn.functional.pad(self.logits, (0, width - self.logits.shape[1]))

    def sample(self, k: int) -> tuple[Tensor, ...]:
        """``min(k, len)`` distinct samples ``(x, y, t, logits, widths)``, uniformly."""
        idx = random_subset(len(self), k, self.y.device)
        return self.x[idx], self.y[idx], self.t[idx], self.logits[idx], self.widths[idx]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "seen": self.seen, "x": self.x, "y": self.y,
                "t": self.t, "logits": self.logits, "widths": self.widths}

    def load_state_dict(self, state: dict) -> None:
        for k in ("capacity", "seen", "x", "y", "t", "logits", "widths"):
            setattr(self, k, state[k])
        self.width_set = set() if self.widths is None else set(self.widths.unique().tolist())
