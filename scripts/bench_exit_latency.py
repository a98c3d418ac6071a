"""Benchmark: latency of truncated predictors and of the early-exit cascade (CPU, batch 16).

TensorFlow backend (the cascade's one-graph path is TensorFlow's).

For MobileNet and DenseNet-169 (elastic, random weights, 10 classes, 224 px) it times, for
every exit, its truncated predictor, a bare `keras.Model(model.input, <exit Dense>.output)`
cut at the same layer, and the full model; then the cascade at threshold 0 (everyone leaves
at exit 1) against the exit-1 predictor and at threshold 2 (nobody leaves early) against
the full model. Every callable is one traced tf.function in inference mode, called the same
way (input tensor in, numpy out); each comparison is timed in pairs (ABBA order) within
shuffled rounds, and the median of the per-round ratios is reported (FIDELITY.md I7).

    python scripts/bench_exit_latency.py [--quick]

Last line: predictor_overhead=<max pred/bare - 1> cascade_overhead=<max cascade ratio - 1>.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

BACKBONES = ("mobilenet", "densenet169")
MIN_SECONDS = 0.05  # a measurement repeats a call until it lasts at least this long


def _timer(fn, x):
    """A zero-argument callable running fn once and pulling every output to the host."""
    import tensorflow as tf

    def call():
        out = fn(x)
        for t in tf.nest.flatten(out):
            if hasattr(t, "numpy"):
                t.numpy()
    return call


def _cascade_timer(cascade, x, threshold):
    def call():
        return cascade(x, threshold=threshold)
    return call


def _calls_per_measurement(call):
    """Warm up (tracing) and return how many calls make one measurement >= MIN_SECONDS."""
    call()
    t0 = time.perf_counter()
    call()
    return max(1, int(np.ceil(MIN_SECONDS / max(time.perf_counter() - t0, 1e-6))))


def _time(call, n):
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - t0) / n


def measure_pairs(pairs, rounds, seed=0):
    """Paired timings: {name: (median s of a, median s of b, median ratio a / b)}.

    pairs: {name: (call_a, call_b)}. Each round visits the pairs in a shuffled order and
    times a, b, b, a (the ABBA order cancels drifts in machine load, which on a shared
    2-core machine is larger than the effects measured); the ratio of each round is taken,
    then the median over rounds.
    """
    inner = {name: max(_calls_per_measurement(a), _calls_per_measurement(b))
             for name, (a, b) in pairs.items()}
    samples = {name: [] for name in pairs}
    rng = np.random.default_rng(seed)
    names = list(pairs)
    for _ in range(rounds):
        for i in rng.permutation(len(names)):
            name = names[i]
            (a, b), n = pairs[name], inner[name]
            ta1, tb1, tb2, ta2 = _time(a, n), _time(b, n), _time(b, n), _time(a, n)
            ta, tb = (ta1 + ta2) / 2, (tb1 + tb2) / 2
            samples[name].append((ta, tb, ta / tb))
    return {name: tuple(statistics.median(s[j] for s in ss) for j in range(3))
            for name, ss in samples.items()}


def compiled(fn, input_spec):
    """`fn` (a Keras model) in inference mode as one traced tf.function, the batch dimension
    free. XLA is off: on this CPU it was about 10 times slower (FIDELITY.md I6)."""
    import tensorflow as tf

    spec = tf.TensorSpec((None,) + tuple(input_spec.shape[1:]), input_spec.dtype)
    return tf.function(lambda x: fn(x, training=False), input_signature=[spec])


def bench(backbone, rounds, batch, size, classes=10):
    import keras

    import tensorflow as tf

    # Each predictor is its own tf.function, traced once; TensorFlow's "N out of the last M
    # calls triggered tf.function retracing" counts those first traces, not retraces.
    tf.get_logger().setLevel("ERROR")
    from elastic_keras import build_model, exit_info
    from elastic_keras.inference.cascade import Cascade
    from elastic_keras.inference.predictors import truncated_predictor

    model = build_model(backbone, classes, input_size=size, weights=None)
    info = exit_info(model)
    inp = model.inputs[0]
    x = tf.constant(np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32))
    full = _timer(compiled(model, inp), x)
    pairs = {}
    for e in info:
        pred = truncated_predictor(model, e.output)
        bare = keras.Model(model.input, model.get_layer(e.output).output)
        pairs[e.output] = (_timer(compiled(pred, inp), x), _timer(compiled(bare, inp), x))
    cascade = Cascade(model, "max_prob", threshold=0.0)
    first = info[0].output
    pairs["cascade:0"] = (_cascade_timer(cascade, x, 0.0), pairs[first][0])
    pairs["cascade:2"] = (_cascade_timer(cascade, x, 2.0), full)
    # The thresholds do what they say before they are timed.
    assert (cascade(x, threshold=0.0).exits == 1).all()
    assert (cascade(x, threshold=2.0).exits == len(info)).all()

    t0 = time.perf_counter()
    med = measure_pairs(pairs, rounds)
    final_macs = info[-1].macs
    full_ms = 1e3 * med["cascade:2"][1]
    print(f"\n{backbone}: batch {batch}, {size}x{size}, {classes} classes, {rounds} rounds "
          f"({time.perf_counter() - t0:.0f} s); median ms per batch, median paired ratio")
    print(f"{'exit':<8} {'MAC share':>9} {'predictor':>10} {'bare cut':>9} {'full':>8} "
          f"{'pred/bare':>9}")
    pred_ratios = []
    for e in info:
        p, b, r = med[e.output]
        pred_ratios.append(r)
        print(f"{e.output:<8} {e.macs / final_macs:>9.3f} {1e3 * p:>10.1f} {1e3 * b:>9.1f} "
              f"{full_ms:>8.1f} {r:>9.3f}")
    c, p, c0 = med["cascade:0"]
    print(f"cascade threshold 0 (all leave at {first}): {1e3 * c:.1f} ms vs "
          f"{first} predictor {1e3 * p:.1f} ms: ratio {c0:.3f}")
    c, f, c2 = med["cascade:2"]
    print(f"cascade threshold 2 (none leave early):   {1e3 * c:.1f} ms vs "
          f"full model {1e3 * f:.1f} ms: ratio {c2:.3f}")
    sys.stdout.flush()
    return max(pred_ratios), max(c0, c2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (3), for a smoke run")
    p.add_argument("--rounds", type=int, default=None, help="default 7 (MobileNet), 5 (DenseNet)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    args = p.parse_args(argv)
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, "
          f"devices: {[d.device_type for d in tf.config.list_logical_devices()]}")
    t0 = time.perf_counter()
    pred_max, casc_max = [], []
    for name in args.backbones:
        rounds = args.rounds or (3 if args.quick else (7 if name == "mobilenet" else 5))
        a, b = bench(name, rounds, args.batch, args.size)
        pred_max.append(a)
        casc_max.append(b)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; targets: predictor <= 1.10 x bare cut, "
          f"cascade <= 1.20 x")
    print(f"predictor_overhead={max(pred_max) - 1:.3f} cascade_overhead={max(casc_max) - 1:.3f}")


if __name__ == "__main__":
    main()
