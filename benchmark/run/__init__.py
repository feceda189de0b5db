"""Running experiments: the run loop (``runner``), what it measures (``measures``), the
executors that run a list of experiments in this process, a worker pool or on Ray
(``executors``), and the worker processes' start-up (``workers``, ``server_guard``).

Nothing is imported here: ``workers`` is imported before torch (start-up time).
"""
