"""The commands that answer at once: ``--help``, ``list`` and argument errors of
``python -m benchmark`` import neither torch nor Avalanche (they read the written catalogue,
``benchmark/cli/_catalogue.py``, which must match the live registries), and ``list`` prints
what the registries hold."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmark import cli
from benchmark.cli.catalogue import GENERATED, describe_live, generated_source
from benchmark.data.scenarios import describe_scenarios
from strategies import REFERENCE_CLIPGRAD, STRATEGIES, TrainConfig, register
from strategies.common.config import to_public_dict
from tests.support import subprocess_env, toy_strategy

HEAVY = ("torch", "avalanche", "strategies")


def start(tmp_path, *argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``python -X importtime -m benchmark *argv``: the process and the modules it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "benchmark", *argv],
                          capture_output=True, text=True, env=subprocess_env(tmp_path),
                          cwd=tmp_path, timeout=120)
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    return proc, imported


def the_heavy(imported: set[str]) -> list[str]:
    return sorted(m for m in imported if m.split(".", 1)[0] in HEAVY)


def old_list_text() -> str:
    """What ``list`` printed when it read the registries directly (the reference its text
    keeps)."""
    lines = ["Scenarios:"]
    for row in describe_scenarios():
        emb = "embedded" if row["embedded"] else "download"
        lines.append(f"  {row['name']:<16} {row['n_tasks']:>2} tasks  {row['network']:<8} "
                     f"{emb:<9} {row['description']}")
    lines.append("\nStrategies:")
    for spec in STRATEGIES.values():
        lines.append(f"  {spec.name:<8} {spec.description}")
        if spec.defaults():
            lines.append("           " + ", ".join(f"{spec.name}.{k}={v}"
                                                   for k, v in spec.defaults().items()))
        lines.append(f"           train.clipgrad={spec.clipgrad:g} (the reference's)")
        if spec.space:
            lines.append("           tune space: " + "; ".join(
                f"{spec.name}.{k} in {{{', '.join(f'{v:g}' for v in vals)}}}"
                for k, vals in spec.space.items()))
    lines.append("\nTraining (train.*): " + ", ".join(
        f"{k}={v}" for k, v in to_public_dict(TrainConfig()).items()))
    return "\n".join(lines) + "\n"


def test_written_catalogue_matches_the_registries():
    assert GENERATED.read_text(encoding="utf-8") == generated_source(describe_live()), (
        "benchmark/cli/_catalogue.py differs from the registries: run "
        "python scripts/write_catalogue.py")


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["tune", "--help"]])
def test_help_imports_no_torch(tmp_path, argv):
    proc, imported = start(tmp_path, *argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage: python -m benchmark" in proc.stdout
    assert "benchmark.cli" in imported and the_heavy(imported) == []


def test_list_imports_no_torch_and_prints_the_registries(tmp_path):
    proc, imported = start(tmp_path, "list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert the_heavy(imported) == []
    assert proc.stdout == old_list_text()


@pytest.mark.parametrize("argv, message", [
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--strategies", "naive,foo"], "unknown strategy 'foo'; valid strategies: agem,"),
    (["run", "--scenario", "split-digits,nope"], "unknown scenario 'nope'; valid scenarios:"),
    (["tune", "--scenario", "nope"], "unknown scenario 'nope'; valid scenarios:"),
    (["run", "--seeds", "x"], "invalid seed list 'x'"),
    (["tune", "--scenario", "split-digits", "--run-seeds", "1,1"], "invalid seed list '1,1'"),
])
def test_argument_errors_import_no_torch(tmp_path, argv, message):
    proc, imported = start(tmp_path, *argv, "--out", str(tmp_path / "out"))
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], errors
    assert the_heavy(imported) == []
    assert not (tmp_path / "out").exists()


def test_list_reads_a_strategy_registered_in_this_process(capsys):
    spec = register(toy_strategy.SPEC)
    try:
        assert cli.main(["list"]) == 0
        assert f"  {spec.name:<8} {spec.description}\n" in capsys.readouterr().out
    finally:
        STRATEGIES.pop(spec.name, None)
        REFERENCE_CLIPGRAD.pop(spec.name, None)


def test_worker_server_starts_only_once_the_arguments_are_checked(monkeypatch, tmp_path,
                                                                  capsys):
    started = []
    monkeypatch.setattr(cli, "prestart_workers", started.append)
    bad = ["run", "--strategies", "foo", "--jobs", "2", "--out", str(tmp_path)]
    assert cli.main(bad, prestart=True) == 2 and started == []
    # checked names, then refused by the plan (which imports the suite): the server had started
    late = ["run", "--epochs", "0", "--jobs", "2", "--out", str(tmp_path)]
    assert cli.main(late, prestart=True) == 2 and started == [late]
    assert cli.main(late) == 2 and started == [late]  # (in-process callers: no server)
    assert capsys.readouterr().err.count("error: ") == 3
