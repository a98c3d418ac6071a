"""Benchmark: does the online controller keep the risk at epsilon when the data drift?

A stream of the demo run's held-out digits (its test split, never used to train or calibrate
it), then, from image --before on, the same images shifted: Gaussian noise, blur, low
contrast, low brightness and rotation at several strengths, and saturation (brightness x3,
clipped), which makes the early exits more confident and wrong. The test split has 360
images, so the stream cycles over them (each cycle in a new seeded order; noise is drawn
anew for 4 copies of the split). Three policies on the same stream:
(a) the static threshold `calibrate --risk disagreement` certifies (on a temporary copy of
the run, so its own calibration.json is left alone); (b) the online controller
(inference/online.py) with --audit 0.05; (c) every image to the final exit. Each is scored
with the true disagreement of every image: every image is run to the end offline, once, and
the stream replays the cascade's exit rule on those outputs (calibration.exits_taken), fed
through the same loop as `monitor` (runs/monitor.stream, batches of 32). One stream of the
worst shift also goes through the real in-package cascade, to check the replay.

    python scripts/bench_drift.py [--run DIR] [--seeds 10] [--policy step|aci]

Without the run (`make demo` trains it), the demo run is trained into a temporary folder
first (bench_guarantee.train_demo, a few CPU minutes).

Last line (worst shift: the largest static risk after the shift; means over seeds):
static_risk_after=... online_risk_after=... epsilon=... detection_delay=...
audit_macs_share=... saved_before_online=... saved_before_static=... worst_shift=...
Targets: static_risk_after > epsilon; online_risk_after (the images after detection)
<= epsilon; detection_delay <= 500 images; audit_macs_share (audit MACs, going on from the
exit left, over the MACs served) <= 0.10; saved_before_online >= 0.9 saved_before_static.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEMO_RUN = os.path.join("runs", "demo", "digits", "digits-mobilenet-elastic")
RUN_FILES = ("config.json", "split.json", "state.json", "results.json", "history.csv")


def _u8(a):
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _contrast(x, f):
    mean = x.astype(float).mean(axis=(1, 2, 3), keepdims=True)
    return _u8(mean + f * (x - mean))


def _shifts():
    """name -> (shift(x, rng), random?): NumPy and SciPy only."""
    import scipy.ndimage as ndi

    found = {f"noise{s}": (lambda x, r, s=s: _u8(x + r.normal(0, s, x.shape)), True)
             for s in (20, 40, 80)}
    found.update({f"blur{s}": (lambda x, r, s=s: _u8(ndi.gaussian_filter(
        x.astype(float), (0, s, s, 0))), False) for s in (0.5, 0.8, 1.2)})
    found.update({f"contrast{f}": (lambda x, r, f=f: _contrast(x, f), False)
                  for f in (0.5, 0.3, 0.15)})
    found.update({f"dim{f}": (lambda x, r, f=f: _u8(f * x.astype(float)), False)
                  for f in (0.5, 0.3)})
    found.update({f"rotate{a}": (lambda x, r, a=a: _u8(ndi.rotate(
        x.astype(float), a, axes=(1, 2), reshape=False, order=1)), False) for a in (15, 30, 45)})
    found["saturate3"] = (lambda x, r: _u8(np.minimum(255.0, 3.0 * x)), False)
    return found


def calibrated(run_dir, folder, epsilon, delta):
    """(run, calibration) certified for the disagreement risk on a copy of the run in
    `folder` (its checkpoints linked), with `calibrate`'s own code."""
    from elastic_keras.runs.calibrate import calibrate_run
    from elastic_keras.runs.found import open_run

    copy = os.path.join(folder, os.path.basename(os.path.normpath(run_dir)))
    os.makedirs(copy)
    os.symlink(os.path.abspath(os.path.join(run_dir, "ckpt")), os.path.join(copy, "ckpt"))
    for name in RUN_FILES:
        if os.path.exists(os.path.join(run_dir, name)):
            shutil.copy(os.path.join(run_dir, name), copy)
    run = open_run(copy)
    return run, calibrate_run(run, epsilon, delta, risk="disagreement", log=lambda *a: None)


def replay_table(model, images, labels, grid, temps):
    """Per image and grid threshold: exit taken (0-based), class answered, disagreement;
    and the final exit's class (every image run to the end once)."""
    from elastic_keras.inference import calibration as cal
    from elastic_keras.inference.predictors import exit_probabilities

    probs = exit_probabilities(model, images, 256)
    taken = cal.exits_taken(probs, grid, temps)
    classes = cal.per_threshold(np.stack([p.argmax(axis=1) for p in probs]), taken).astype(int)
    dis = cal.per_threshold(cal.exit_losses(probs, labels, "disagreement"), taken)
    return {"taken": taken, "classes": classes, "dis": dis, "final": probs[-1].argmax(axis=1)}


def order(pool_size, length, rng):
    """`length` indices cycling over a pool, each cycle in a new random order."""
    cycles = -(-length // pool_size)
    return np.concatenate([rng.permutation(pool_size) for _ in range(cycles)])[:length]


def stream_of(seed, clean, shifted, before, after):
    """(rng, the stream's indices into clean + shifted images): `before` clean, then
    `after` shifted; the same rng then draws the audit coins."""
    rng = np.random.default_rng(seed)
    return rng, np.concatenate([order(clean, before, rng), clean + order(shifted, after, rng)])


def replay(table, grid):
    """answer and final over pool indices, from the table: the cascade's rule replayed."""
    column = {float(t): j for j, t in enumerate(grid)}

    def answer(idx, threshold):
        j = column[float(threshold)]
        return {"classes": table["classes"][idx, j], "exits": table["taken"][idx, j] + 1}

    return answer, lambda idx: table["final"][idx], column


def score(out, idx, table, column, macs, before, i0):
    """One stream's numbers: the online policy's and the static threshold's."""
    col = np.array([column[float(t)] for t in out["threshold"]])
    dis, served = table["dis"][idx, col], macs[out["exit"] - 1]
    audit = np.where(out["audited"], macs[-1] - served, 0.0)
    static = table["dis"][idx, i0]
    static_macs = macs[table["taken"][idx, i0]]
    alarms = [c.image for c in out["changes"] if c.reason == "alarm"]
    found = [a for a in alarms if a >= before]
    start = found[0] if found else before
    return {"delay": found[0] - before if found else np.nan,
            "false_alarms": sum(a < before for a in alarms),
            "online_after": dis[start:].mean(), "online_after_all": dis[before:].mean(),
            "static_after": static[before:].mean(), "static_before": static[:before].mean(),
            "saved_before_online": 1 - served[:before].mean() / macs[-1],
            "saved_after_online": 1 - served[before:].mean() / macs[-1],
            "saved_before_static": 1 - static_macs[:before].mean() / macs[-1],
            "saved_after_static": 1 - static_macs[before:].mean() / macs[-1],
            "audit_share": audit.sum() / served.sum()}


def run_shift(table, grid, calib, macs, args, seeds, clean, shifted):
    """Every seed's stream of one shift under the online controller; per-seed scores."""
    from elastic_keras.inference.online import from_calibration
    from elastic_keras.runs.monitor import stream

    answer, final, column = replay(table, grid)
    rows = []
    for seed in range(seeds):
        rng, idx = stream_of(seed, clean, shifted, args.before, args.after)
        c = from_calibration(calib, args.epsilon, args.delta, audit_rate=args.audit,
                             policy=args.policy, gamma=args.gamma)
        out = stream(c, idx, answer, final, len(macs), rng, 32)
        out["changes"] = c.changes
        rows.append(score(out, idx, table, column, macs, args.before, c.calibrated_index))
    return rows


def cascade_check(model, temps, images, table, grid, calib, macs, args, clean, shifted):
    """Seed 0's stream through the real in-package cascade and the final exit's predictor:
    how many images took the same exit, class and audit as in the replay."""
    from elastic_keras.inference.cascade import Cascade
    from elastic_keras.inference.online import from_calibration
    from elastic_keras.inference.predictors import truncated_predictor
    from elastic_keras.runs.monitor import stream

    cascade = Cascade(model, "max_prob", temperatures=temps)
    final = truncated_predictor(model, len(model.outputs))
    outs = []
    for real in (True, False):
        rng, idx = stream_of(0, clean, shifted, args.before, args.after)
        c = from_calibration(calib, args.epsilon, args.delta, audit_rate=args.audit,
                             policy=args.policy, gamma=args.gamma)
        if real:
            def answer(x, t):
                r = cascade(x, t)
                return {"classes": r.predictions, "exits": r.exits}
            outs.append(stream(c, images[idx], answer, lambda x: np.asarray(
                final.predict_on_batch(x)).argmax(axis=1), len(macs), rng, 32))
        else:
            answer, fin, _ = replay(table, grid)
            outs.append(stream(c, idx, answer, fin, len(macs), rng, 32))
    same = np.ones(len(idx), bool)
    for key in ("exit", "class", "audited", "final_class"):
        same &= outs[0][key] == outs[1][key]
    return int(same.sum()), len(idx)


def server_check(run, images, idx, table, before, args):
    """Seed 0's stream of the worst shift through the real server: `serve` on the calibrated
    run's ONNX export with --audit, one request of 32 images at a time. Returns its scores
    (as the replay's: risk after detection, delay) and what /metrics and the model's
    metadata say of the threshold at the end. The audit coins are the server's own (drawn in
    the order images leave), so the alarm can come a little earlier or later than in the
    replay."""
    import json
    import socket
    import urllib.request

    from bench_serve import start_server, stop_server

    from elastic_keras.runs.serve import export_source

    folder = export_source(run.dir, "onnx", log=lambda *a: None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = start_server(folder, port, "--name", "demo", "--audit", str(args.audit),
                        "--max-wait-ms", "0")
    url = f"http://127.0.0.1:{port}"
    try:
        got = [_infer(port, "demo", images[idx[s:s + 32]]) for s in range(0, len(idx), 32)]
        metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
        info = json.loads(urllib.request.urlopen(f"{url}/v2/models/demo").read())["parameters"]
    finally:
        stop_server(proc)
    classes = np.concatenate([g["class"] for g in got])
    dis = classes != table["final"][idx]
    alarms = [c["image"] for c in info["threshold_changes"] if c["reason"] == "alarm"]
    found = [a for a in alarms if a >= before]
    start = found[0] if found else before
    shown = [line for line in metrics.splitlines() if line.startswith(
        ("elastic_threshold ", "elastic_control_", "elastic_audits_total"))]
    return {"online_after": float(dis[start:].mean()), "delay": found[0] - before if found
            else float("nan"), "metrics": shown, "changes": info["threshold_changes"]}


def _infer(port, model, images):
    import http.client
    import json

    body = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8",
                                   "shape": list(images.shape), "data": images.ravel().tolist()}],
                       "outputs": [{"name": "exit"}, {"name": "class"}]})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", f"/v2/models/{model}/infer", body)
    out = json.loads(conn.getresponse().read())["outputs"]
    return {o["name"]: np.asarray(o["data"]) for o in out}


def mean_ci(values):
    """Mean and 95% Student-t interval over seeds (report.intervals)."""
    from elastic_keras.report.intervals import interval

    i = interval(values)
    return i.mean, i.low, i.high


def pools(x, labels, reps, seed=0):
    """name -> (shifted images, their labels): the clean split first."""
    rng = np.random.default_rng(seed)
    found = {"clean": (x, labels)}
    for name, (shift, random) in _shifts().items():
        copies = reps if random else 1
        found[name] = (np.concatenate([shift(x, rng) for _ in range(copies)]),
                       np.tile(labels, copies))
    return found


def oracle(shifted, macs, epsilon, i0):
    """The largest saving a threshold no cheaper than the calibrated one gets on the shifted
    images with a risk <= epsilon there (what a controller that knew the shift could keep)."""
    risk = shifted["dis"].mean(axis=0)[:i0 + 1]
    saved = 1 - macs[shifted["taken"][:, :i0 + 1]].mean(axis=0) / macs[-1]
    return float(saved[risk <= epsilon].max())


def line(name, rows, best):
    """One shift's numbers, means over seeds."""
    m = {k: float(np.mean([r[k] for r in rows if not np.isnan(r[k])] or [np.nan]))
         for k in rows[0]}
    mean, low, high = mean_ci([r["online_after"] for r in rows])
    delays = [r["delay"] for r in rows if not np.isnan(r["delay"])]
    delay = f"{np.mean(delays):5.0f} (max {max(delays):4.0f}, {len(delays)}/{len(rows)})" \
        if delays else f"  not detected (0/{len(rows)})"
    return (f"{name:<12} {m['static_after']:.3f}  {mean:.4f} [{low:.4f}, {high:.4f}]  "
            f"{m['online_after_all']:.4f}  {delay}  {m['false_alarms']:.2f}  "
            f"{m['saved_before_online']:.3f}/{m['saved_before_static']:.3f}  "
            f"{m['saved_after_online']:.3f}/{m['saved_after_static']:.3f}/{best:.3f}  "
            f"{m['audit_share']:.3f}"), m


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=DEMO_RUN, help="a trained run (default: the demo run)")
    p.add_argument("--epsilon", type=float, default=0.02)
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--audit", type=float, default=0.05)
    p.add_argument("--policy", default="step", choices=("aci", "step"))
    p.add_argument("--gamma", type=float, default=1.0, help="aci: grid steps per unit of risk")
    p.add_argument("--before", type=int, default=1000, help="clean images before the shift")
    p.add_argument("--after", type=int, default=2000, help="shifted images after it")
    p.add_argument("--seeds", type=int, default=10, help="streams per shift")
    p.add_argument("--noise-copies", type=int, default=4)
    p.add_argument("--no-server", action="store_true",
                   help="leave out the stream through the real server")
    return p.parse_args()


def every_shift(run, calib, args):
    """Every shift's results (means over seeds), its table, and the pools of images."""
    from elastic_keras.data.datasets import load_data
    from elastic_keras.inference.calibration import threshold_grid
    from elastic_keras.inference.cascade import path_macs
    from elastic_keras.inference.online import from_calibration

    model, data = run.model(), load_data(run.config["data"])
    grid, temps = threshold_grid(), calib["temperatures"]
    macs = np.asarray(path_macs(model), dtype=np.float64)
    i0 = from_calibration(calib, args.epsilon, args.delta).calibrated_index
    labels = np.asarray(data.y_test).reshape(-1)
    print(f"{args.run}: {len(labels)} held-out test images; static threshold {calib['threshold']} "
          f"(calibrate --risk disagreement --epsilon {args.epsilon} --delta {args.delta}: "
          f"{calib['certificate']['text']}); stream: {args.before} clean then {args.after} "
          f"shifted images, cycling; policy {args.policy}, audit {args.audit}, {args.seeds} seeds")
    found = pools(data.x_test, labels, args.noise_copies)
    clean = replay_table(model, *found["clean"], grid, temps)
    print("shift        static  online after detection [95%]  after all  delay (max, detected)"
          "  false  saved before online/static  saved after online/static/best  audit")
    results, tables = {}, {}
    for name, (images, y) in list(found.items())[1:]:
        shifted = replay_table(model, images, y, grid, temps)
        tables[name] = {k: np.concatenate([clean[k], shifted[k]]) for k in clean}
        rows = run_shift(tables[name], grid, calib, macs, args, args.seeds, len(labels), len(y))
        text, results[name] = line(name, rows, oracle(shifted, macs, args.epsilon, i0))
        results[name]["ci"] = mean_ci([r["online_after"] for r in rows])
        print(text, flush=True)
    return results, tables, found, (model, temps, grid, macs)


def main():
    args, started = parse(), time.time()
    from elastic_keras.backend.environment import import_keras_quietly

    import_keras_quietly()
    folder = tempfile.mkdtemp(prefix="bench-drift-")
    try:
        if not os.path.isdir(args.run):  # bench_guarantee's: the demo run, CPU minutes
            from bench_guarantee import train_demo

            print(f"no run at {args.run} (`make demo` trains it): training the demo run into "
                  f"{folder} first", flush=True)
            args.run = train_demo(os.path.join(folder, "trained"))
        run, calib = calibrated(args.run, folder, args.epsilon, args.delta)
        results, tables, found, (model, temps, grid, macs) = every_shift(run, calib, args)
        worst = max(results, key=lambda n: results[n]["static_after"])
        clean = len(found["clean"][1])
        images = np.concatenate([found["clean"][0], found[worst][0]])
        same, n = cascade_check(model, temps, images, tables[worst], grid, calib, macs, args,
                                clean, len(found[worst][1]))
        _, idx = stream_of(0, clean, len(found[worst][1]), args.before, args.after)
        served = None if args.no_server else server_check(run, images, idx, tables[worst],
                                                          args.before, args)
        seed0 = run_shift(tables[worst], grid, calib, macs, args, 1, clean,
                          len(found[worst][1]))[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    w = results[worst]
    if served:
        print(f"the same stream (seed 0) through `serve` (ONNX export, --audit {args.audit}): "
              f"risk after detection {served['online_after']:.4f}, detection delay "
              f"{served['delay']:.0f} images (offline, seed 0: {seed0['online_after']:.4f}, "
              f"{seed0['delay']:.0f} images); threshold changes: " + "; ".join(
                  f"image {c['image']}: {c['old']} -> {c['new']} ({c['reason']})"
                  for c in served["changes"]) + "; /metrics at the end: "
              + ", ".join(served["metrics"]))
    print(f"worst shift {worst}: online risk after detection {w['ci'][0]:.4f}, 95% interval "
          f"[{w['ci'][1]:.4f}, {w['ci'][2]:.4f}] over {args.seeds} seeds; the real cascade "
          f"matched the replay on {same}/{n} images of seed 0's stream; (c) every image to the "
          f"final exit: risk 0, saved 0; {time.time() - started:.0f} s")
    print(f"static_risk_after={w['static_after']:.4f} online_risk_after={w['online_after']:.4f} "
          f"epsilon={args.epsilon:g} detection_delay={w['delay']:.0f} "
          f"audit_macs_share={w['audit_share']:.4f} saved_before_online="
          f"{w['saved_before_online']:.4f} saved_before_static={w['saved_before_static']:.4f} "
          f"worst_shift={worst}")


if __name__ == "__main__":
    main()
