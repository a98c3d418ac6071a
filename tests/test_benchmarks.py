"""The benchmark scripts still run on the package as it is (they are not timed here)."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_memory_runs_a_small_pass_and_prints_its_last_line():
    # A tiny pass: 64 px, 2 training steps, 1 validation batch at the config's eval batch.
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_memory.py"),
                          "--size", "64", "--steps", "2", "--val-steps", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"peak_rss_gb=\d+\.\d\d", lines[-1]), lines[-1]
    assert "validation batches of 64" in out.stdout  # the config's train.eval_batch_size
    assert "val_loss" in out.stdout


def test_bench_guarantee_runs_small_and_prints_its_last_line(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_guarantee.py"),
                          "--trials", "20", "--synthetic-pool", "3000", "--run",
                          str(tmp_path / "no-run")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    keys = [part.split("=")[0] for part in last.split()]
    assert keys == ["ltt_violation_rate", "ucb_violation_rate", "delta", "crc_mean_risk",
                    "epsilon", "macs_saved"]
    assert "no finished run at" in out.stdout
