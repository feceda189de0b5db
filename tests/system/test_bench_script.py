"""scripts/bench.py (``make bench``) runs end to end and writes its side-by-side ratios.

A smoke run on few samples: the timings themselves are not checked here (they are measured
side by side by the script, never by a timed unit test), only that every measured quantity
is there and consistent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.support import ROOT


def test_bench_smoke_run_writes_ratios_and_breakdown(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", "cpu",
           "--cases", "mlp", "--samples", "128", "--rounds", "1", "--warmup", "0", "--reps", "1",
           "--unfolded", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    mlp = res["cases"]["mlp"]
    assert res["hat_over_naive"] == mlp["hat_over_naive"] > 0
    assert res["suite_over_raw"] == mlp["suite_over_raw"] > 0
    assert mlp["hat_over_naive"] == mlp["hat"]["median"] / mlp["naive"]["median"]
    assert res["hat_over_raw_hat"] == mlp["hat_over_raw_hat"] > 0
    assert res["raw_hat_over_raw"] == mlp["raw_hat_over_raw"] > 0
    assert mlp["hat_over_raw_hat"] == mlp["hat"]["median"] / mlp["raw-hat"]["median"]
    assert mlp["raw_hat_over_raw"] == mlp["raw-hat"]["median"] / mlp["raw"]["median"]
    assert len(mlp["hat_over_raw_hat_rounds"]) == 1
    assert mlp["targets"]["hat_over_raw_hat"] == 1.05
    for side in ("naive", "hat", "raw", "raw-hat"):
        assert mlp[side]["n"] == 1 and mlp[side]["peak_mem_mb"] > 0
    assert mlp["naive"]["eval_samples_per_s"] > 0 and mlp["hat"]["eval_samples_per_s"] > 0
    bd = mlp["breakdown_ms_per_step"]
    for side in ("naive", "hat"):
        phases = {k: v for k, v in bd[side].items() if k not in ("rest", "step")}
        assert phases["forward"] > 0 and phases["backward"] > 0
        assert abs(sum(phases.values()) + bd[side]["rest"] - bd[side]["step"]) < 1e-6
    assert bd["hat"]["after_backward"] > bd["naive"]["after_backward"]  # HAT's own work
    assert "hat/naive" in proc.stdout and "step breakdown" in proc.stdout
    assert "suite-hat/raw-hat" in proc.stdout and "raw-hat/raw" in proc.stdout
    # --unfolded: HAT with the gates on the outputs, timed in the same rounds
    assert mlp["unfolded_over_hat"] == mlp["hat-unfolded"]["median"] / mlp["hat"]["median"]
    assert mlp["hat-unfolded"]["n"] == 1 and "peak_mem_mb" not in mlp["hat-unfolded"]
    assert "hat-unfolded/hat" in proc.stdout


def test_bench_rejects_bad_samples(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench.py"), "--samples", "0",
           "--out", str(tmp_path / "b.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--samples must be >= 1" in proc.stderr
    assert not (tmp_path / "b.json").exists()


def test_raw_hat_loop_protects_the_first_task_and_trains_the_second():
    """The raw HAT loop is HAT: after task 2, task 1's outputs at s = smax are unchanged
    (binary masks, plain SGD) and task 2's parameters moved."""
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench

    bench.CASES["tiny"] = dict(input_shape=(1, 4, 4), n=96, family="mlp", hidden=12)
    snapshots = []
    real = bench._RawHATNet.masks

    def masks(self, task):  # called once per task, when the task ends
        x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
        self.eval()
        with torch.no_grad():
            snapshots.append([self(x, t, 0.0)[0].clone() for t in (0, 1)])
        self.train()
        return real(self, task)

    try:
        bench._RawHATNet.masks = masks
        times = bench.raw_hat_epochs("tiny", 2, torch.device("cpu"))
    finally:
        bench._RawHATNet.masks = real
        del bench.CASES["tiny"]
    assert len(times) == 2 and all(t > 0 for t in times)
    assert torch.equal(snapshots[0][0], snapshots[1][0])
    assert not torch.equal(snapshots[0][1], snapshots[1][1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine without a GPU's answer")
def test_the_gpu_check_says_in_one_line_that_there_is_no_gpu(tmp_path):
    """``make bench-gpu`` (scripts/gpu_check.sh) on a machine without CUDA measures nothing
    and says so, exit 2 (on the GPU machine it runs the tests and benchmarks)."""
    done = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "OUT": str(tmp_path), "PY": sys.executable})
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "no CUDA GPU here: nothing measured (run this on the GPU machine)")
    assert (tmp_path / "gpu.txt").exists()
