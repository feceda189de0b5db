import sys

from .run.workers import prestart_workers

prestart_workers(sys.argv[1:])

from .cli import main  # noqa: E402 - after the worker server started

sys.exit(main())
