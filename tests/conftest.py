"""Fixtures shared by the test modules (helpers that are plain functions live in
``tests/support/``)."""

from __future__ import annotations

import pytest
import torch

from tests.support.wandb_offline import isolate


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "issue(number): the issue whose request the test checks (for the link only)")


@pytest.fixture
def one_thread():
    """One torch thread (much faster for the tiny networks on shared cores; the workers of
    ``--jobs`` use ``--threads 1`` too); the caller's setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run from an empty folder (the defaults results/ and data/ would land there); the CLI
    sets ``--threads`` process-wide, so the thread count is restored afterwards."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    threads = torch.get_num_threads()
    yield work
    torch.set_num_threads(threads)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """``tmp_path``, with W&B isolated in it: no server, no credentials (see
    :func:`tests.support.wandb_offline.isolate`)."""
    isolate(monkeypatch, tmp_path)
    return tmp_path
