"""The W&B mode (benchmark/tracking/mode.py): auto mode from the credentials configured on this
machine, an explicit online mode without credentials. No W&B server is contacted."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

pytest.importorskip("wandb")

from benchmark import tracking  # noqa: E402


def test_auto_mode_offline_without_api_key(isolated, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_BASE_URL")
    assert not tracking.api_key_configured()
    assert tracking.resolve_mode(None) == "offline"
    factory = tracking.tracker_factory(None, out=isolated / "out")
    assert factory is not None and factory.mode == "offline"
    assert tracking.tracker_factory("disabled") is None


def test_auto_mode_online_with_api_key(isolated, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_BASE_URL")
    netrc = Path(isolated / "home" / ".netrc")
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    netrc.chmod(0o600)
    assert tracking.resolve_mode(None) == "online"
    netrc.unlink()
    assert tracking.resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert tracking.resolve_mode(None) == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # an explicit environment choice wins
    assert tracking.tracker_factory(None) is None


def test_explicit_online_without_api_key_goes_offline_with_one_warning(isolated):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        factory = tracking.tracker_factory("online", out=isolated / "out")
    assert factory.mode == "offline"
    assert len([w for w in caught if issubclass(w.category, tracking.TrackingWarning)]) == 1
