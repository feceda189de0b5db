"""What every strategy family shares: config helpers (``config``), the multi-head network and the
baselines' freezing helpers (``multihead``), the suite's plugin hooks (``hooks``)."""
