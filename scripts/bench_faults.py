"""Benchmark: file faults injected into a smoke sweep of two runs; each must end in lines.

One sweep (the elastic and plain MobileNet cells, smoke profile, synthetic data, tiny
limits) is stopped by SIGTERM after the elastic run's second epoch (a copy is kept: the
partial run), then resumed to the end (the finished sweep). Each trial copies the finished
sweep, puts in the partial elastic run where the fault needs one, damages a file, and runs
the same sweep again. A fault is survived when the sweep ends without a traceback, with the
expected line (a fallback that says so, or one line naming the damaged file), the other run
intact, and the expected exit status; the sweep completed when its table was written with
the plain run's number in it.

    python scripts/bench_faults.py

Last line: faults_survived=K/N sweeps_completed=K/N.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CELLS = "cifar10-mobilenet-elastic,cifar10-mobilenet-plain"
SETS = ["model.alpha=0.25", "data.train_limit=60", "data.test_limit=20",
        "phases.heads.lr=0.01", "phases.full.lr=0.01"]
ELASTIC = os.path.join("runs", "smoke", "synthetic", "synthetic10-mobilenet-elastic")
TABLE = os.path.join("results", "smoke-synthetic-table1.md")


def command(root):
    return [sys.executable, "-m", "elastic_keras", "reproduce", "table1", "--profile", "smoke",
            "--data", "synthetic", "--runs", CELLS, *[a for s in SETS for a in ("--set", s)],
            "--runs-root", os.path.join(root, "runs"), "--out", os.path.join(root, "results")]


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 3])


def _garble(path):
    with open(path, "wb") as f:
        f.write(os.urandom(5000))


def _write(text):
    def fault(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return fault


def _drop_key(key):
    def fault(path):
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        del state[key]
        _write(json.dumps(state))(path)
    return fault


# (name, on the partial elastic run?, files -> fault, expected words, exit status)
FAULTS = [
    ("last weights truncated", True, {"ckpt/epoch-0002.weights.h5": _truncate},
     ["going back to the checkpoint of epoch 1"], 0),
    ("last optimizer garbled", True, {"ckpt/epoch-0002.optimizer.npz": _garble},
     ["epoch-0002.optimizer.npz is unreadable", "going back"], 0),
    ("last weights deleted", True, {"ckpt/epoch-0002.weights.h5": os.remove},
     ["going back to the checkpoint of epoch 1"], 0),
    ("last weights and the phase-2 start truncated", True,
     {"ckpt/epoch-0002.weights.h5": _truncate, "ckpt/best-epoch-0001.weights.h5": _truncate},
     ["going back", "best-epoch-0001.weights.h5 is unreadable"], 1),
    ("state.json corrupt", False, {"state.json": _write('{"status": "evalu')},
     ["state.json is corrupt"], 1),
    ("state.json without its history", False, {"state.json": _drop_key("history")},
     ["state.json is not a run state (missing ['history']"], 1),
    ("results.json unreadable", False, {"results.json": _write("{")},
     ["evaluating the run again"], 0),
    ("history.csv deleted", False, {"history.csv": os.remove}, [], 0),
    ("best checkpoint truncated, results.json deleted", False,
     {"results.json": os.remove, "best": _truncate}, ["best-epoch-", "is unreadable"], 1),
    ("config.json corrupt", False, {"config.json": _write('{"name": ')},
     ["config.json is corrupt"], 1),
]


def sigterm_after_two_epochs(root, env):
    """Run the sweep; SIGTERM it once the elastic run has finished its second epoch."""
    proc = subprocess.Popen(command(root), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = os.path.join(root, ELASTIC, "state.json")
    while proc.poll() is None:
        try:
            with open(state, encoding="utf-8") as f:
                if len(json.load(f)["history"]) >= 2:
                    break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    return proc.wait()


def trial(work, name, on_partial, faults, words, status, env):
    root = os.path.join(work, name.replace(" ", "-").replace(",", ""))
    shutil.copytree(os.path.join(work, "finished"), root)
    run = os.path.join(root, ELASTIC)
    if on_partial:
        shutil.rmtree(run)
        shutil.copytree(os.path.join(work, "partial"), run)
    for rel, fault in faults.items():
        if rel == "best":
            with open(os.path.join(run, "state.json"), encoding="utf-8") as f:
                rel = min(json.load(f)["best"].values(), key=lambda b: b["val_loss"])["file"]
        fault(os.path.join(run, rel))
    before = os.path.getmtime(os.path.join(root, TABLE))
    done = subprocess.run(command(root), env=env, capture_output=True, text=True)
    out = done.stdout + done.stderr
    survived = (done.returncode == status and "Traceback" not in out
                and all(w in out for w in words))
    if name == "history.csv deleted":  # plot rebuilds it from state.json
        plot = subprocess.run([sys.executable, "-m", "elastic_keras", "plot", run], env=env,
                              capture_output=True, text=True)
        survived &= plot.returncode == 0 and os.path.isfile(os.path.join(run, "history.csv"))
    table = os.path.join(root, TABLE)
    text = open(table, encoding="utf-8").read() if os.path.isfile(table) else ""
    completed = os.path.getmtime(table) > before and "| MobileNet |" in text and \
        text.split("| MobileNet |")[1].split("|")[0].strip() not in ("", "—")
    said = [line for line in out.splitlines() if any(w and w in line for w in words)]
    print(f"{name}: rc {done.returncode}; {'survived' if survived else 'NOT SURVIVED'}, "
          f"table {'written' if completed else 'NOT WRITTEN'}"
          + (f"; said: {said[0].strip()[:150]}" if said else ""), flush=True)
    if not survived:
        print(out[-3000:], file=sys.stderr)
    return survived, completed


def main():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    work = tempfile.mkdtemp(prefix="bench-faults-")
    start = time.time()
    sweep = os.path.join(work, "finished")
    rc = sigterm_after_two_epochs(sweep, env)
    shutil.copytree(os.path.join(sweep, ELASTIC), os.path.join(work, "partial"))
    done = subprocess.run(command(sweep), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    print(f"reference sweep: SIGTERM after epoch 2 (rc {rc}), resumed to the end: "
          f"{time.time() - start:.0f} s", flush=True)
    survived = completed = 0
    for fault in FAULTS:
        s, c = trial(work, *fault, env)
        survived, completed = survived + s, completed + c
    n = len(FAULTS)
    print(f"work folder: {work}; {time.time() - start:.0f} s in all")
    print(f"faults_survived={survived}/{n} sweeps_completed={completed}/{n}")
    return 0 if survived == completed == n else 1


if __name__ == "__main__":
    sys.exit(main())
