"""Benchmark: int8 exports against float ones: latency per exit, accuracy per exit, the certificate.

1. Elastic MobileNet (13 outputs, 10 classes, random weights) on 32x32 uint8 images resized
   to 128 px in the graph, as in bench_export: exported float and int8 (calibrated on 64
   generated probe images; also with --float-heads) in LiteRT (XNNPACK) and ONNX Runtime.
   The latency of every exit's path through the cascade at batch 32 (the segment driver
   sends the batch out there), float against int8; the final exit's in pairs (ABBA order,
   median of per-round ratios, bench_exit_latency.measure_pairs): the int8 speed-up.
2. The trained demo run (`make demo`; --run DIR another): exported int8 in both runtimes
   (300 training images calibrate; also with --float-heads), then `calibrate EXPORT_DIR`
   certifies each on its own outputs. On the test split (never seen by either): accuracy per
   exit, float against int8; the largest drop among the exits the int8 certificate's
   threshold sends test images out at (with its paired 95% interval over the test images:
   the per-image differences' Student-t interval, report.intervals); the share of test
   images whose exit changes at the threshold in force at export (the run's certificate, as
   quantization.csv counts it); and bench_guarantee's check on the int8 export's own outputs
   (its calibration images and the test images pooled, split in halves at random in each
   trial, LTT certified).

    python scripts/bench_quant.py [--size 128] [--batch 32] [--rounds 7] [--run DIR]
                                  [--trials 500] [--no-float-heads]

Last line: litert_int8_speedup_final=... onnx_int8_speedup_final=... max_exit_acc_drop_pts=...
exit_change_share=... int8_violation_rate=... delta=... (drop, share, rate: the worse of the two
runtimes; na without the demo run). Targets: both speed-ups >= 1.5, max_exit_acc_drop_pts <= 1,
int8_violation_rate <= delta + 2 sqrt(delta (1 - delta) / trials).
"""

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from bench_exit_latency import measure_pairs  # noqa: E402
from bench_guarantee import DEMO_RUN, tables, trials  # noqa: E402

FORMATS = ("litert", "onnx")
QUIET = lambda *_: None  # noqa: E731


def export_mobilenet(folder, size, float_heads):
    """{(fmt, kind): Exported} of elastic MobileNet, kind float, int8 (and int8-fh)."""
    from elastic_keras import build_model
    from elastic_keras.inference.export import export_model, input_spec
    from elastic_keras.inference.latency import probe_images
    from elastic_keras.inference.quantize import Plan
    from elastic_keras.inference.runtimes import Exported

    model = build_model("mobilenet", 10, input_size=size, weights=None,
                        source_shape=(32, 32, 3))
    probes = {"from": "64 generated probe images (latency.probe_images, seed 3)"}
    kinds = {"float": None, "int8": False, **({"int8-fh": True} if float_heads else {})}
    found = {}
    for fmt in FORMATS:
        for kind, heads in kinds.items():
            t0, out = time.perf_counter(), os.path.join(folder, f"mobilenet-{fmt}-{kind}")
            plan = None if heads is None else Plan(
                probe_images(input_spec(model), 64, seed=3), dict(probes), float_heads=heads)
            export_model(model, fmt, out, quantize=plan, log=QUIET)
            found[fmt, kind] = Exported(out)
            print(f"exported {fmt} {kind} ({time.perf_counter() - t0:.0f} s)")
    return found


def latency_table(found, batch, rounds):
    """p50 ms per exit path at `batch`, every export; the final exit's float/int8 ratios."""
    from elastic_keras.inference.latency import p50_p95, probe_images

    any_export = next(iter(found.values()))
    x = probe_images(any_export.manifest["input"], batch, seed=1)
    names = any_export.output_names
    table = {key: [p50_p95(lambda: e.cascade(x, 2.0, exit_at=k), 5)[0]
                   for k in range(1, len(names) + 1)] for key, e in found.items()}
    print(f"\npath latency per exit, batch {batch} (p50 ms; the driver sends the batch out "
          "there)")
    keys = list(found)
    print("exit     " + " ".join(f"{f + ' ' + k:>16}" for f, k in keys))
    for i, name in enumerate(names):
        print(f"{name:<8} " + " ".join(f"{table[key][i]:>16.2f}" for key in keys))
    last = len(names)
    pairs = {f"{fmt}:{kind}": (lambda f=found[fmt, "float"]: f.cascade(x, 2.0, exit_at=last),
                               lambda q=found[fmt, kind]: q.cascade(x, 2.0, exit_at=last))
             for fmt, kind in keys if kind != "float"}
    med = measure_pairs(pairs, rounds)
    print(f"\n{'final exit, float/int8':<24} {'float ms':>9} {'int8 ms':>9} {'speed-up':>9}")
    for name, (a, b, r) in med.items():
        print(f"{name:<24} {1e3 * a:>9.2f} {1e3 * b:>9.2f} {r:>9.3f}")
    return {fmt: med[f"{fmt}:int8"][2] for fmt in FORMATS}


def demo_exports(run_dir, folder, float_heads):
    """{(fmt, kind): export folder} of the run, int8 (and int8-fh), each calibrated on its
    own outputs (calibrate EXPORT_DIR)."""
    from elastic_keras.runs.recertify import calibrate_export
    from elastic_keras.runs.serve import export_source

    found = {}
    for fmt in FORMATS:
        for kind, heads in {"int8": False, **({"int8-fh": True} if float_heads else {})}.items():
            out = os.path.join(folder, f"demo-{fmt}-{kind}")
            export_source(run_dir, fmt, out, log=print, quantize={
                "count": 300, "data": None, "io": None, "float_heads": heads})
            with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
                in_force = json.load(f)["threshold"]  # the run's, at export
            cal = calibrate_export(out)
            print(f"{fmt} {kind}: own threshold {cal['threshold']}; {cal['certificate']['text']}")
            found[fmt, kind] = out, in_force
    return found


def demo_accuracy(run_dir, exports, args):
    """Per exit test accuracy, float against every int8 export; (largest drop on the exits
    the certified threshold uses, exit change share at the run's threshold, violation rate)
    per (fmt, kind)."""
    from elastic_keras.data.datasets import load_data
    from elastic_keras.inference.predictors import exit_probabilities, route
    from elastic_keras.inference.runtimes import Exported
    from elastic_keras.report.intervals import interval
    from elastic_keras.runs.found import open_run
    from elastic_keras.runs.quantized import top_two_tie

    run = open_run(run_dir)
    model, data = run.model(), load_data(run.config["data"])
    labels = np.asarray(data.y_test).reshape(-1)
    floats = exit_probabilities(model, data.x_test)
    right = [p.argmax(1) == labels for p in floats]
    acc = {"float": [float(np.mean(r)) for r in right]}
    scores, temps = {}, run_temperatures(run)
    for key, (folder, in_force) in exports.items():
        exported = Exported(folder)  # its own certificate and temperatures
        thr = exported.manifest["threshold"]
        ints = [exported.predictor(n)(data.x_test)["probabilities"] for n in exported.output_names]
        ok = [p.argmax(1) == labels for p in ints]
        acc[key] = [float(np.mean(r)) for r in ok]
        taken = exported.cascade(data.x_test, 2.0 if thr is None else thr)["exits"]
        assert (taken == route(ints, "max_prob", 2.0 if thr is None else thr) + 1).all()
        used = sorted(set(taken.tolist()))
        # per image, 100 (float right, int8 wrong), -100 or 0: the paired 95% interval
        drops = {k: interval(100 * (right[k - 1].astype(float) - ok[k - 1])) for k in used}
        worst = max(used, key=lambda k: drops[k].mean)
        # exit changes at the threshold in force at export, as quantization.csv counts them
        at = 2.0 if in_force is None else in_force
        before = route(floats, "max_prob", at, temps)
        after = route(int8_raw(folder, data.x_test, temps), "max_prob", at)
        differ = floats[worst - 1].argmax(1) != ints[worst - 1].argmax(1)
        tied = int(np.sum(differ & top_two_tie(ints[worst - 1])))
        scores[key] = (drops[worst].mean, float(np.mean(before != after)),
                       violation_rate(folder, data, args), used, worst, drops[worst],
                       (int(differ.sum()), tied))
    print(f"\ntest accuracy per exit ({len(labels)} test images of {run_dir})")
    print("exit     " + " ".join(f"{str(k):>22}" for k in acc))
    for i, name in enumerate(model.output_names):
        print(f"{name:<8} " + " ".join(f"{acc[k][i]:>22.4f}" for k in acc))
    for key, (drop, share, rate, used, worst, ci, (differ, tied)) in scores.items():
        print(f"{key}: exits used at its own threshold {used}, largest drop there {drop:.2f} "
              f"points (exit {worst}; paired 95% interval {ci.low:.2f} to {ci.high:.2f} over "
              f"{ci.n} test images; {differ} disagree with float, {tied} of them int8 ties at "
              f"the top, the lower class taken); exit changes at the run's threshold "
              f"{share:.4f}; LTT "
              f"violation rate {rate:.4f}")
    return scores


def run_temperatures(run):
    from elastic_keras.inference.calibration import read_calibration

    found = read_calibration(run.dir)
    return None if found is None else found["temperatures"]


def int8_raw(folder, x, temperatures):
    """An int8 export's probabilities on `x`, scaled by `temperatures` as its driver does."""
    from elastic_keras.inference.segment_int8 import exit_probabilities
    from elastic_keras.runs.recertify import export_outputs

    raw = export_outputs(folder, x)
    return [exit_probabilities(p, None, t) for p, t in
            zip(raw, temperatures or [None] * len(raw))]


def violation_rate(folder, data, args):
    """bench_guarantee's check on an export's own outputs: its calibration images (the part
    of the validation split its certificate was made on) and the test images pooled."""
    from elastic_keras.inference.calibration import read_calibration
    from elastic_keras.inference.export import MANIFEST

    found = read_calibration(folder)
    keep = np.asarray(found["splits"]["calibration"])
    probs = [np.concatenate([v[keep], t]) for v, t in zip(
        int8_raw(folder, data.x_val, found["temperatures"]),
        int8_raw(folder, data.x_test, found["temperatures"]))]
    labels = np.concatenate([np.asarray(data.y_val).reshape(-1)[keep],
                             np.asarray(data.y_test).reshape(-1)])
    with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
        macs = [e["path_macs"] for e in json.load(f)["exits"]]
    risk, _ = trials(*tables(probs, labels, macs, None, "drop"), args, split=True)
    return float(np.mean(np.asarray(risk["ltt"]) > args.epsilon))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--run", default=DEMO_RUN, help=f"a finished run (default {DEMO_RUN})")
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--no-float-heads", dest="float_heads", action="store_false")
    args = p.parse_args(argv)
    args.epsilon, args.delta, args.seed, args.synthetic_cal = 0.02, 0.1, 0, 0
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from elastic_keras.backend.environment import device

    print(f"{device()}; TensorFlow {tf.__version__}; MobileNet {args.size} px, batch "
          f"{args.batch}, {args.rounds} rounds")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        speedup = latency_table(export_mobilenet(folder, args.size, args.float_heads),
                                args.batch, args.rounds)
        scores = {}
        if os.path.isfile(os.path.join(args.run, "results.json")):
            scores = demo_accuracy(args.run, demo_exports(args.run, folder, args.float_heads),
                                   args)
        else:
            print(f"no finished run at {args.run} (make demo, or --run DIR): accuracy and "
                  "certificate not measured (na)")
    limit = args.delta + 2 * np.sqrt(args.delta * (1 - args.delta) / args.trials)
    print(f"total {time.perf_counter() - t0:.0f} s; targets: speed-ups >= 1.5, "
          f"max_exit_acc_drop_pts <= 1, int8_violation_rate <= {limit:.4f} ({args.trials} "
          "trials); drop, share and rate over the int8 exports (float heads apart)")
    plain = [v for k, v in scores.items() if k[1] == "int8"]
    worst = [f"{max(v[i] for v in plain):.{d}f}" if plain else "na" for i, d in
             ((0, 2), (1, 4), (2, 4))]
    print(f"litert_int8_speedup_final={speedup['litert']:.3f} "
          f"onnx_int8_speedup_final={speedup['onnx']:.3f} max_exit_acc_drop_pts={worst[0]} "
          f"exit_change_share={worst[1]} int8_violation_rate={worst[2]} delta={args.delta:g}")


if __name__ == "__main__":
    main()
