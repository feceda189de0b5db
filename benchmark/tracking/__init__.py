"""Experiment tracking with Weights & Biases: one W&B run per (scenario, strategy, seed).

``mode`` (online/offline/disabled, credentials), ``session`` (a mode that only degrades,
shared by a command's processes), ``tracker`` (``RunTracker``, the factory, the Avalanche
logger), ``wandb_log`` (wandb's run folders and transaction log), ``summary`` (the pure
per-run summary and tables, from the run's own record).
"""

from .mode import TrackingWarning, api_key_configured, one_line_warnings, resolve_mode
from .session import INIT_TIMEOUT_S, Session, decide_mode
from .summary import RECORD_KEY, run_summary
from .tracker import ARTIFACT_TYPE, TrackerFactory, tracker_factory

__all__ = [
    "ARTIFACT_TYPE",
    "INIT_TIMEOUT_S",
    "RECORD_KEY",
    "Session",
    "TrackerFactory",
    "TrackingWarning",
    "api_key_configured",
    "decide_mode",
    "one_line_warnings",
    "resolve_mode",
    "run_summary",
    "tracker_factory",
]
