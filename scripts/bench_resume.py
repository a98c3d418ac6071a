"""Benchmark: kill -9 a smoke reproduction at N random moments; each must end identical.

A reference reproduction runs uninterrupted. Then each trial starts the same reproduction
in a fresh runs folder, kills it with SIGKILL at a random moment of its run (uniform over
the reference's duration), runs the same command again to the end, and compares with the
reference: every run's history (all columns but timings), every exit's test results, and
the table files byte for byte.

    python scripts/bench_resume.py [--trials 10] [--seed 0]

Last line: resume_ok=<trials that ended identical>/<trials>.
"""

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

RUNS = "cifar10-mobilenet-elastic,cifar10-mobilenet-plain"
TIMING = ("time_s", "train_s", "val_s")


def command(root):
    return [sys.executable, "-m", "elastic_keras", "reproduce", "table1", "--profile", "smoke",
            "--data", "synthetic", "--runs", RUNS, "--set", "model.alpha=0.25",
            "--runs-root", os.path.join(root, "runs"), "--out", os.path.join(root, "results")]


def outcome(root):
    """What a finished reproduction left: histories without timings, results, tables."""
    found = {}
    runs = os.path.join(root, "runs", "smoke", "synthetic")
    for name in sorted(os.listdir(runs)):
        with open(os.path.join(runs, name, "history.csv"), newline="") as f:
            found[f"{name}/history"] = [{k: v for k, v in row.items() if k not in TIMING}
                                        for row in csv.DictReader(f)]
        with open(os.path.join(runs, name, "results.json")) as f:
            res = json.load(f)
        found[f"{name}/results"] = [res["exits"], res["checkpoint"]]
    return found


def same_tables(a, b):
    """The table files of two reproductions, byte for byte but for their own folder names."""
    def text(root, name):
        with open(os.path.join(root, "results", name), encoding="utf-8") as f:
            return f.read().replace(root, "ROOT")

    names = sorted(os.listdir(os.path.join(a, "results")))
    return names == sorted(os.listdir(os.path.join(b, "results"))) and all(
        text(a, n) == text(b, n) for n in names)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    work = tempfile.mkdtemp(prefix="bench-resume-")
    ref = os.path.join(work, "reference")
    t0 = time.time()
    done = subprocess.run(command(ref), env=env, capture_output=True, text=True)
    duration = time.time() - t0
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    expected = outcome(ref)
    print(f"reference: {duration:.0f} s uninterrupted ({RUNS}, smoke profile, synthetic data)",
          flush=True)
    rng = random.Random(args.seed)
    ok = 0
    for trial in range(1, args.trials + 1):
        root = os.path.join(work, f"trial-{trial}")
        at = rng.uniform(0.05, 0.95) * duration
        proc = subprocess.Popen(command(root), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(at)
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        states = {d: json.load(open(os.path.join(dp, "state.json")))["status"]
                  for dp, _, files in os.walk(os.path.join(root, "runs")) if "state.json" in files
                  for d in [os.path.basename(dp)]} if os.path.isdir(root) else {}
        again = subprocess.run(command(root), env=env, capture_output=True, text=True)
        same = again.returncode == 0 and outcome(root) == expected and same_tables(ref, root)
        ok += same
        print(f"trial {trial}: killed at {at:5.1f} s{'' if killed else ' (had ended)'}, "
              f"states then {states or 'none'}; rerun rc {again.returncode}: "
              f"{'identical' if same else 'DIFFERENT'}", flush=True)
        if same:
            shutil.rmtree(root)
    print(f"work folder: {work}")
    print(f"resume_ok={ok}/{args.trials}")
    return 0 if ok == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
