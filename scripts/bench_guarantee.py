"""Benchmark: does the certificate of `calibrate` hold? Many random calibration/test draws.

Two sources of exit outputs:
- a trained run (default: the demo run `make demo` trains; `--run DIR` another; `--train`
  trains the demo run into a temporary folder first, a few CPU minutes): its validation
  images not used to fit its temperatures plus its test images are pooled, and each trial
  splits them at random into calibration and test halves; the test risk is the test half's.
- synthetic outputs of a known distribution: a pool of generated exit softmaxes (4 exits, 10
  classes, a latent difficulty per image); each trial draws its calibration images from the
  pool with replacement, so the true risk of any threshold is exactly the pool's mean loss.

Each trial certifies a threshold with ltt, ucb and crc (the package's code, the fixed grid
of `calibrate`) and records its risk. A trial violates when that risk exceeds epsilon.

    python scripts/bench_guarantee.py [--run DIR | --train] [--trials 500] [--epsilon 0.02]

Last line: ltt_violation_rate=... ucb_violation_rate=... delta=... crc_mean_risk=...
epsilon=... macs_saved=... (rates and risk: the worse of the two sources; macs_saved: LTT's
mean share of the final exit's MACs saved on the run's test halves). Targets: both rates
<= delta + 2 sqrt(delta (1 - delta) / trials), crc_mean_risk <= epsilon, macs_saved > 0.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

DEMO_RUN = os.path.join("runs", "demo", "digits", "digits-mobilenet-elastic")
METHODS = ("ltt", "ucb", "crc")


def run_outputs(run_dir):
    """(softmax per exit, labels, path MACs, temperatures) of a run's held-out images."""
    from elastic_keras.data.datasets import load_data
    from elastic_keras.inference.calibration import read_calibration
    from elastic_keras.inference.cascade import path_macs
    from elastic_keras.inference.predictors import exit_probabilities
    from elastic_keras.runs.found import open_run

    run = open_run(run_dir)
    model, data = run.model(), load_data(run.config["data"])
    val = exit_probabilities(model, data.x_val, 64)
    test = exit_probabilities(model, data.x_test, 64)
    keep, temps = np.arange(len(data.y_val)), None
    found = read_calibration(run_dir)
    if found is not None:  # leave out the images that fitted the temperatures
        keep, temps = np.asarray(found["splits"]["calibration"]), found["temperatures"]
    probs = [np.concatenate([v[keep], t]) for v, t in zip(val, test)]
    labels = np.concatenate([np.asarray(data.y_val).reshape(-1)[keep],
                             np.asarray(data.y_test).reshape(-1)])
    return probs, labels, path_macs(model), temps


def synthetic_outputs(n, seed, exits=4, classes=10):
    """Generated softmaxes: exit k's logit margin for the true class grows with its skill
    and shrinks with the image's difficulty; noise partly shared between exits."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    difficulty = rng.beta(2.0, 2.0, n)
    shared = rng.normal(size=(n, classes))
    probs = []
    for skill in np.linspace(1.0, 3.0, exits):
        z = 0.6 * shared + 0.8 * rng.normal(size=(n, classes))
        z[np.arange(n), labels] += 3.5 * skill * (1.0 - difficulty)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs.append((e / e.sum(axis=1, keepdims=True)).astype(np.float32))
    return probs, labels, [float(k + 1) for k in range(exits)], None


def tables(probs, labels, macs, temps, risk):
    """(N, L) losses and path costs of every image at every threshold of calibrate's grid."""
    from elastic_keras.inference import calibration as cal

    taken = cal.exits_taken(probs, cal.threshold_grid(), temps)
    losses = cal.per_threshold(cal.exit_losses(probs, labels, risk), taken)
    return losses.astype(np.float32), cal.per_threshold(macs, taken).astype(np.float32)


def trials(losses, costs, args, split):
    """Per method: the risk of its certified threshold in each trial, and the share of the
    final exit's cost saved there. split: True draws calibration/test halves of the pool;
    False draws calibration images with replacement and scores the pool's (true) risk."""
    from elastic_keras.inference.risk_control import certify

    rng = np.random.default_rng(args.seed)
    n = len(losses)
    risk = {m: [] for m in METHODS}
    saved = {m: [] for m in METHODS}
    final = costs[:, 0].mean()  # the safe end: every image to the final exit
    for _ in range(args.trials):
        if split:
            order = rng.permutation(n)
            cal, test = order[:n // 2], order[n // 2:]
        else:
            cal, test = rng.integers(0, n, args.synthetic_cal), np.arange(n)
        for m in METHODS:
            j = max(certify(losses[cal], args.epsilon, args.delta, m).index, 0)
            risk[m].append(float(losses[test, j].mean()))
            saved[m].append(1.0 - float(costs[test, j].mean()) / final)
    return risk, saved


def summarize(name, risk, saved, eps):
    rates = {m: float(np.mean(np.asarray(risk[m]) > eps)) for m in METHODS}
    for m in METHODS:
        print(f"{name:>9} {m}: violation rate {rates[m]:.4f}, mean risk "
              f"{np.mean(risk[m]):.5f}, cost saved {100 * np.mean(saved[m]):.1f}%")
    return rates, float(np.mean(risk["crc"])), float(np.mean(saved["ltt"]))


def train_demo(root):
    """Train the demo run (digits, demo profile) under `root`; returns its directory."""
    run = os.path.join(root, "digits-mobilenet-elastic")
    subprocess.run([sys.executable, "-m", "elastic_keras", "train", "cifar10-mobilenet-elastic",
                    "--profile", "demo", "--set", "data.dataset=digits", "--run-dir", run],
                   check=True)
    subprocess.run([sys.executable, "-m", "elastic_keras", "calibrate", run], check=True)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=DEMO_RUN, help=f"a finished run (default {DEMO_RUN})")
    p.add_argument("--train", action="store_true", help="train the demo run first (CPU minutes)")
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--epsilon", type=float, default=0.02)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--risk", default="drop", choices=("drop", "disagreement"))
    p.add_argument("--synthetic-pool", type=int, default=40000)
    p.add_argument("--synthetic-cal", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    run = train_demo(tempfile.mkdtemp(prefix="bench-guarantee-")) if args.train else args.run
    results = []
    synth = tables(*synthetic_outputs(args.synthetic_pool, args.seed), args.risk)
    results.append(summarize("synthetic", *trials(*synth, args, split=False), args.epsilon))
    if os.path.isfile(os.path.join(run, "results.json")):
        out = run_outputs(run)
        print(f"run {run}: {len(out[1])} held-out images, halves of {len(out[1]) // 2}")
        results.append(summarize("run", *trials(*tables(*out, args.risk), args, split=True),
                                 args.epsilon))
    else:
        print(f"no finished run at {run} (make demo, --run DIR or --train): macs_saved below "
              "is the synthetic outputs' cost saved")
    rates = {m: max(r[0][m] for r in results) for m in ("ltt", "ucb")}
    limit = args.delta + 2 * np.sqrt(args.delta * (1 - args.delta) / args.trials)
    print(f"{args.trials} trials, risk {args.risk}; violation limit {limit:.4f}")
    print(f"ltt_violation_rate={rates['ltt']:.4f} ucb_violation_rate={rates['ucb']:.4f} "
          f"delta={args.delta:g} crc_mean_risk={max(r[1] for r in results):.5f} "
          f"epsilon={args.epsilon:g} macs_saved={results[-1][2]:.4f}")


if __name__ == "__main__":
    main()
