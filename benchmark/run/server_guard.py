"""Imported first by the worker server (the forkserver's preload, ``workers.PRELOAD``), never
by the command itself: the server gets SIGKILL when the command that started it ends,
whatever ended it, so it cannot fork workers for a command that is gone; its workers then get
SIGTERM (``benchmark.run.workers._end_with_parent``). Where the kernel cannot do this, the
server still ends once its workers have (they watch the command themselves)."""

from __future__ import annotations

import signal

from .workers import die_with_parent

die_with_parent(signal.SIGKILL)
