"""``python -m benchmark``: the arguments are checked before the suite is imported (``--help``,
``list`` and a bad argument answer without torch); with ``--jobs N`` the worker server starts
before that import, so that its own import of the suite overlaps the command's."""

import sys

from .cli import main

sys.exit(main(prestart=True))
