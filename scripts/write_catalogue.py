"""Write ``benchmark/cli/_catalogue.py`` (what ``--help``, ``list`` and the name checks of
``python -m benchmark`` read without importing the suite) from the live registries; rerun after
changing a strategy's or a scenario's entry."""

import sys

from benchmark.cli.catalogue import main

if __name__ == "__main__":
    sys.exit(main())
