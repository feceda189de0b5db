"""The W&B session of a command: a mode that only degrades (online → offline → disabled).

Any W&B failure (no network, bad key, init timeout, an exception while logging) steps the
session down one mode with one warning. Where runs are tracked in other processes (``--jobs``,
``--ray``) the command decides the mode once (:func:`decide_mode`) and passes it on; local
workers also share later steps down (``shared``), so a failing W&B still costs one warning per
step per command. wandb is quiet: no console capture, silent settings, bounded init and finish.
"""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reports.text import first_line

from . import wandb_log
from .mode import (
    DISABLED,
    MODES,
    OFFLINE,
    ONLINE,
    api_key_configured,
    resolve_mode,
    warn,
)

__all__ = ["FINISH_TIMEOUT_S", "INIT_TIMEOUT_S", "LOGIN_TIMEOUT_S", "Session", "decide_mode"]

#: seconds ``wandb.init`` may take before it counts as a failure
INIT_TIMEOUT_S = {ONLINE: 30.0, OFFLINE: 30.0}
#: seconds ``run.finish`` may wait for uploads (the local copy can be synced later)
FINISH_TIMEOUT_S = 120.0
#: seconds wandb may wait at a login prompt
LOGIN_TIMEOUT_S = 20.0


class Session:
    """What the trackers of one factory share: the current mode and the warnings given.

    The mode only ever degrades (online → offline → disabled), one warning per step, so a
    failing W&B costs at most two warnings per command, however many runs follow. ``shared``
    (a ``multiprocessing.Value("i")`` holding an index into ``MODES``) extends that to the
    worker processes of one command: a step one of them takes is taken by all, and only the
    first to take it warns.
    """

    def __init__(self, mode: str, project: str, entity: str | None, out: Path | None,
                 shared: Any = None):
        self.mode = mode
        self.project = project
        self.entity = entity
        self.out = Path(out) if out is not None else None
        self.shared = shared
        self._wandb = None
        self.sync()
        if self.mode == ONLINE and not api_key_configured():
            self._step_down("W&B online mode needs an API key (`wandb login` or "
                            f"WANDB_API_KEY); tracking offline instead{self._sync_hint()}")

    @property
    def root(self) -> Path | None:
        """The folder holding wandb's ``wandb/`` folder: ``WANDB_DIR`` when the user set it,
        else the results folder (None: wandb's default, the working directory)."""
        env = os.environ.get("WANDB_DIR", "").strip()
        return Path(env).expanduser() if env else self.out

    def _sync_hint(self) -> str:
        where = (self.root / "wandb") if self.root is not None else Path("wandb")
        return f" (upload later with `wandb sync {where}/offline-run-*`)"

    def sync(self) -> None:
        """Take the steps down another process of the command took (it gave the warnings)."""
        if self.shared is not None:
            level = min(int(self.shared.value), len(MODES) - 1)
            if level > MODES.index(self.mode):
                self.mode = MODES[level]

    def _step_down(self, message: str) -> None:
        """One mode down, with ``message`` as its warning unless another process of the
        command took that step first."""
        level, first = MODES.index(self.mode) + 1, True
        if self.shared is not None:
            with self.shared.get_lock():
                first = self.shared.value < level
                level = max(level, int(self.shared.value))
                self.shared.value = level
        self.mode = MODES[min(level, len(MODES) - 1)]
        if first:
            warn(message)

    def degrade(self, err: BaseException) -> None:
        """One step down after a W&B failure, with its one warning."""
        if self.mode == ONLINE:
            self._step_down(f"W&B online tracking failed ({first_line(err)}); "
                            f"tracking offline instead{self._sync_hint()}")
        elif self.mode == OFFLINE:
            self._step_down(f"W&B tracking failed ({first_line(err)}); continuing without "
                            "tracking (run records are still written)")

    def verify_online(self) -> None:
        """Raise unless W&B's server accepts this machine's API key (``wandb.login`` with
        verification: bounded by wandb's HTTP timeout, creates no run)."""
        if not self.wandb().login(verify=True, timeout=LOGIN_TIMEOUT_S):
            raise RuntimeError("wandb login was not accepted")

    def wandb(self):
        """The wandb module, set up quietly on first use."""
        if self._wandb is None:
            # lazy: wandb costs seconds of start-up
            import wandb

            # login_timeout: a login prompt (credentials wandb does not accept) gives up;
            # mode: the session's, not WANDB_MODE's (wandb.login verifies nothing offline)
            wandb.setup(settings=wandb.Settings(mode=self.mode, silent=True, quiet=True,
                                                show_info=False, show_warnings=False,
                                                show_errors=False,
                                                login_timeout=LOGIN_TIMEOUT_S))
            self._wandb = wandb
        return self._wandb

    def init_run(self, kwargs: Mapping[str, Any]):
        """A started wandb run in the session's mode (raises when wandb cannot start one; the
        folder of a run that did not start is removed)."""
        wandb = self.wandb()
        settings = wandb.Settings(
            console="off",  # the run's stdout/stderr stay the user's
            silent=True,
            quiet=True,
            show_info=False,
            show_warnings=False,
            show_errors=False,
            init_timeout=INIT_TIMEOUT_S[self.mode],
            finish_timeout=FINISH_TIMEOUT_S,
        )
        root = self.root
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        # our own id: the folder of a run that fails to start is known, and removed (a
        # resumed run brings its id: the folders its earlier part left are kept)
        run_id = kwargs.get("id") or "".join(
            secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        earlier = wandb_log.run_folders(root, run_id) if kwargs.get("id") else set()
        try:
            run = wandb.init(
                mode=self.mode,
                project=self.project,
                entity=self.entity,
                dir=str(root) if root is not None else None,
                id=run_id,
                reinit="finish_previous",  # never two runs at once
                settings=settings,
                **{k: v for k, v in kwargs.items() if k != "id"},
            )
            if getattr(run, "disabled", False) or (self.mode == ONLINE and run.offline):
                wandb_log.finish_quietly(run, 1)
                raise RuntimeError(f"wandb did not start an {self.mode} run (login failed?)")
        except BaseException:
            wandb_log.remove_run_folders(root, run_id, keep=earlier)
            raise
        return run


def decide_mode(
    mode: str | None,
    *,
    project: str = "hat-bench",
    entity: str | None = None,
    out: Path | str | None = None,
) -> str:
    """The W&B mode (online, offline or disabled) of a command whose runs are tracked in
    other processes (``--jobs``, ``--ray``), decided once, here, and passed to them: so a W&B
    that fails costs one wait and one warning per command, not one per worker.

    :func:`resolve_mode`; then online only with an API key that W&B's server accepts now
    (:meth:`Session.verify_online`), else offline with the session's one warning."""
    resolved = resolve_mode(mode)
    if resolved == DISABLED:
        return resolved
    session = Session(resolved, project, entity, Path(out) if out is not None else None)
    if session.mode == ONLINE:
        try:
            session.verify_online()
        except Exception as err:  # noqa: BLE001 - any failure: offline, with one warning
            session.degrade(err)
    return session.mode
