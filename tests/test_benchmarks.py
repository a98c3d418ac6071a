"""The benchmark scripts still run on the package as it is (they are not timed here)."""

import os
import re
import subprocess
import sys

import pytest

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


def test_bench_gpu_quick_measures_names_its_device_and_prints_its_last_line():
    # CPU: MobileNet elastic and plain at 32 px, short windows; no seeds or bf16 here
    # (the seeds' step is tested in test_seeds_together.py). Every line names the device.
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_gpu.py"),
                          "--quick", "--no-extras"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert re.fullmatch(r"min_elastic_over_plain=\d+\.\d{3} table1_hours_1seed=\d+\.\d "
                        r"seeds4_speedup=na bf16_speedup=na runs=4/30 device=CPU\S*",
                        lines[-1]), lines[-1]
    assert all(line.startswith("[CPU") for line in lines[:-1]), lines
    assert "mobilenet-plain" in out.stdout and "spread" in out.stdout
    assert "cifar100-mobilenet-elastic" in out.stdout  # hours per run, from its own speed
    refused = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_gpu.py"),
                              "--quick"], capture_output=True, text=True, timeout=600,
                             env={**os.environ, "XLA_FLAGS": "--xla_gpu_autotune_level=0"})
    assert refused.returncode != 0 and "autotuning off" in refused.stderr


def test_bench_export_runs_small_in_every_runtime_and_prints_its_last_line():
    # A tiny pass: MobileNet at 32 px, batch 4, one round; the ratios are not checked here.
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_export.py"),
                          "--size", "32", "--batch", "4", "--rounds", "1"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(" ".join(f"{k}=-?\\d+\\.\\d{{3}}" for k in (
        "saved_model_exit1_overhead", "saved_model_final_overhead", "litert_exit1_overhead",
        "litert_final_overhead", "onnx_exit1_overhead", "onnx_final_overhead",
        "litert_early_speedup")), last), last
    assert "latency per exit at batch 4" in out.stdout


@pytest.mark.slow
def test_bench_quant_runs_small_and_prints_its_last_line(tmp_path):
    # A tiny pass: MobileNet at 32 px, one round, no demo run (accuracy and certificate na).
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_quant.py"),
                          "--size", "32", "--rounds", "1", "--no-float-heads", "--run",
                          str(tmp_path / "no-run")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.fullmatch(r"litert_int8_speedup_final=\d+\.\d{3} onnx_int8_speedup_final=\d+\.\d{3}"
                        r" max_exit_acc_drop_pts=na exit_change_share=na int8_violation_rate=na "
                        r"delta=0\.1", out.stdout.strip().splitlines()[-1])
    assert "no finished run at" in out.stdout
