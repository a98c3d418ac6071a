"""Benchmark: exported cascades against exported predictors and the plain network (CPU, batch 32).

Elastic MobileNet (13 outputs, 10 classes, random weights) on 32x32 uint8 images resized to
128 px in the graph, exported in every format (SavedModel, LiteRT, ONNX), with the plain
MobileNet exported beside it. In each runtime it times, in pairs (ABBA order within shuffled
rounds, median of the per-round ratios; bench_exit_latency.measure_pairs):
- the cascade at the threshold that sends every image out at exit 1 against the exit-1
  predictor, and at the threshold that keeps every image to the final exit against the plain
  network (the overheads: target <= 0.15);
- LiteRT: the plain network against the cascade at the threshold where half of the batch
  leaves at or before the middle exit (the speedup: target >= 1.3).
Then the latency of each predictor per exit at batch 32 (python -m elastic_keras latency).

    python scripts/bench_export.py [--rounds 7] [--size 128] [--batch 32]

Last line: saved_model_exit1_overhead=... saved_model_final_overhead=... litert_exit1_overhead=...
litert_final_overhead=... onnx_exit1_overhead=... onnx_final_overhead=... litert_early_speedup=...
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from bench_exit_latency import measure_pairs  # noqa: E402

FORMATS = ("saved_model", "litert", "onnx")


def half_threshold(exported, x):
    """max_prob threshold at which half of `x` leaves at or before the middle exit: the
    median over images of their largest confidence among exits 1..middle."""
    names = exported.output_names
    middle = (len(names) + 1) // 2
    conf = np.stack([exported.predictor(n)(x)["probabilities"].max(axis=1)
                     for n in names[:middle]])
    return float(np.median(conf.max(axis=0))), middle


def export_all(folder, size, log):
    from elastic_keras import build_model
    from elastic_keras.inference.export import export_model
    from elastic_keras.inference.runtimes import Exported

    elastic = build_model("mobilenet", 10, input_size=size, weights=None,
                          source_shape=(32, 32, 3))
    plain = build_model("mobilenet", 10, input_size=size, weights=None, plain=True,
                        source_shape=(32, 32, 3))
    found = {}
    for fmt in FORMATS:
        t0 = time.perf_counter()
        export_model(elastic, fmt, os.path.join(folder, f"elastic-{fmt}"), log=log)
        export_model(plain, fmt, os.path.join(folder, f"plain-{fmt}"), log=log)
        log(f"  ({time.perf_counter() - t0:.0f} s)")
        found[fmt] = (Exported(os.path.join(folder, f"elastic-{fmt}")),
                      Exported(os.path.join(folder, f"plain-{fmt}")))
    return found


def pairs_for(fmt, elastic, plain, x, half):
    first, final = elastic.output_names[0], plain.output_names[-1]
    pred1, full = elastic.predictor(first), plain.predictor(final)
    pairs = {f"{fmt}:exit1": (lambda: elastic.cascade(x, 0.0), lambda: pred1(x)),
             f"{fmt}:final": (lambda: elastic.cascade(x, 2.0), lambda: full(x))}
    if fmt == "litert":
        pairs["litert:early"] = (lambda: full(x), lambda: elastic.cascade(x, half))
    return pairs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from elastic_keras.backend.environment import device
    from elastic_keras.inference.latency import measure, p50_p95, probe_images
    from elastic_keras.inference.runtimes import Exported
    from elastic_keras.inference.segment_driver import SegmentCascade

    print(f"{device()}; TensorFlow {tf.__version__}; MobileNet {args.size} px, batch "
          f"{args.batch}, {args.rounds} rounds")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        found = export_all(folder, args.size, print)
        x = probe_images(found["litert"][0].manifest["input"], args.batch, seed=1)
        half, middle = half_threshold(found["litert"][0], x)
        taken = found["litert"][0].cascade(x, half)["exits"]
        print(f"litert: threshold {half:.6f} sends {np.mean(taken <= middle):.2f} of the batch "
              f"out at or before exit {middle} of {len(found['litert'][0].output_names)}")
        pairs = {}
        for fmt, (elastic, plain) in found.items():
            assert (elastic.cascade(x, 0.0)["exits"] == 1).all()
            assert (elastic.cascade(x, 2.0)["exits"] == len(elastic.output_names)).all()
            pairs.update(pairs_for(fmt, elastic, plain, x, half))
        med = measure_pairs(pairs, args.rounds)
        print(f"\n{'pair':<18} {'A ms':>8} {'B ms':>8} {'A/B':>7}")
        for name, (a, b, r) in med.items():
            print(f"{name:<18} {1e3 * a:>8.2f} {1e3 * b:>8.2f} {r:>7.3f}")
        graph = Exported(os.path.join(folder, "elastic-litert"), driver=False)
        ga = p50_p95(lambda: graph.cascade(x, 2.0), 5)[0]  # ms, after 2 warm-ups
        print(f"litert one-graph cascade.tflite, nobody leaves: {ga:.1f} ms "
              f"(the driver: {1e3 * med['litert:final'][0]:.1f} ms)")
        apart = SegmentCascade(os.path.join(folder, "elastic-onnx"), join_layouts=False)
        oa = p50_p95(lambda: apart(x, 2.0), 5)[0]
        print(f"onnx driver: {found['onnx'][0].runtime}; with onnxruntime's reorders kept at "
              f"every boundary, nobody leaves: {oa:.1f} ms (joined: "
              f"{1e3 * med['onnx:final'][0]:.1f} ms)")
        print(f"\nlatency per exit at batch {args.batch} (p50 ms of each truncated predictor):")
        table = {fmt: {r["exit"]: r["p50_ms"] for r in measure(found[fmt][0], [args.batch], 10)
                       if r["kind"] == "predictor"} for fmt in FORMATS}
        print("exit     " + " ".join(f"{fmt:>12}" for fmt in FORMATS))
        for name in found["litert"][0].output_names:
            print(f"{name:<8} " + " ".join(f"{table[fmt][name]:>12.2f}" for fmt in FORMATS))
    print(f"total {time.perf_counter() - t0:.0f} s; targets: overheads <= 0.15, "
          "litert_early_speedup >= 1.3")
    over = {k: med[k][2] - 1 for k in med if not k.endswith("early")}
    print(" ".join(f"{fmt}_{kind}_overhead={over[f'{fmt}:{kind}']:.3f}" for fmt in FORMATS
                   for kind in ("exit1", "final"))
          + f" litert_early_speedup={med['litert:early'][2]:.3f}")


if __name__ == "__main__":
    main()
