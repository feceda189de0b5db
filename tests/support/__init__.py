"""Helpers shared by the test modules: plain functions and constants (fixtures are in
``tests/conftest.py``). No test module imports another test module."""

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

#: the repository's root folder (configs/, scripts/, the packages)
ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a ``python -m benchmark`` subprocess: this checkout first on
    PYTHONPATH, HOME in ``tmp_path / "home"``, no WANDB_DIR, matplotlib's cache shared."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HOME"] = str(tmp_path / "home")
    env.pop("WANDB_DIR", None)
    # matplotlib keeps its font cache under HOME: point it at this process's cache, built here
    # once, so that a loaded machine does not rebuild it (and announce it on stderr) per test
    import matplotlib.font_manager  # noqa: F401  (builds the cache if it is missing)
    from matplotlib import get_cachedir

    env.setdefault("MPLCONFIGDIR", get_cachedir())
    return env


def load_script(name: str) -> ModuleType:
    """The module of ``scripts/<name>.py`` (the folder is no package), loaded once."""
    key = f"_scripts_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None, name
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[key]
