"""The benchmark's command line in tests: in-process runs, the files a command left, and the
one-line usage error (exit 2)."""

from __future__ import annotations

from pathlib import Path

from benchmark import cli
from tests.support.runs import BASE


def run_cli(*args) -> int:
    """``python -m benchmark run`` in-process, without progress bar or W&B."""
    return cli.main(["run", *BASE, *map(str, args)])


def tree(folder: Path) -> list[str]:
    """Every path under ``folder``, relative to it, sorted."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def assert_usage_error(capsys, code: int, *fragments: str) -> str:
    """Exit code 2 and exactly one ``error:`` line on stderr, naming every fragment."""
    captured = capsys.readouterr()
    assert code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error:"), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def plan_command(*argv):
    """The plan of ``python -m benchmark run *argv`` (nothing runs)."""
    return cli.plan_run(cli.build_parser().parse_args(["run", *map(str, argv)]))
