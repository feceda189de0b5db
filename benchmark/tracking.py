"""Experiment tracking (Weights & Biases). STUB: to be implemented (issue #4)."""

from __future__ import annotations


def tracker_factory(mode, *, project="hat-bench", entity=None, out=None):
    """Return a callable Experiment -> tracker, or None when tracking is disabled."""
    return None
