"""The HAT benchmark suite: scenarios, the paper's networks, the runner and its CLI."""

__version__ = "0.1.0"
