"""Benchmark: training-throughput cost of the elastic structure (MobileNet, CPU).

Trains, in one process and side by side, on synthetic CIFAR-shaped uint8 images
(10 classes, random weights, phase "full": everything trainable, SGD momentum 0.9):

- elastic: the elastic MobileNet (13 outputs) in ExitTrainer (sum of the 13 exits' CE
  losses, every exit's loss and accuracy tracked in one vectorised metric update);
- plain:   the plain MobileNet (final exit only) in the same ExitTrainer;
- naive:   for context, the elastic functional net compiled the stock Keras way:
  `loss="sparse_categorical_crossentropy"` and `metrics=["accuracy"]` per output
  (13 loss objects, 13 metric objects).

Each model gets the input `train.py` gives it: `batches(...)` streams of native 32x32
uint8 images, resized in-graph to the input size. Settings: 224 px batch 16 (the paper's
protocol) and 64 px batch 64. Each model is warmed up by a short `fit` (tracing and
building) and a few steps. Then its steps are run the way `fit` runs them, one call of the
compiled `train_function` per step with the step's logs pulled to Python floats (as a
progress bar does), leaving out `fit`'s per-call setup, so that short blocks can be
interleaved: each round runs a block of N steps of each model in the order elastic,
plain, naive, naive, plain, elastic (symmetric, so linear drifts in machine load cancel);
per round the ratio plain time / elastic time (= images/s elastic / plain) is taken, then
the median over many rounds (robust to bursts of load from other processes on a shared
machine). The same ratio from process CPU time is printed as a cross-check.

    python scripts/bench_exit_overhead.py [--quick] [--no-naive]

Last line: ratio_224=<elastic/plain images/s at 224 px> ratio_64=<same at 64 px>.
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

CLASSES = 10
LR = 0.01
# (input size, batch, rounds, steps per block); --quick uses QUICK.
SETTINGS = ((224, 16, 8, 2), (64, 64, 16, 2))
QUICK = ((224, 16, 2, 1), (64, 64, 3, 2))


def _images(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    return x, y


def _models(size):
    """{name: (keras model to fit, dataset transform)} for one input size."""
    import keras

    from elastic_keras import build_model
    from elastic_keras.step import ExitTrainer

    sgd = lambda: keras.optimizers.SGD(learning_rate=LR, momentum=0.9)  # noqa: E731
    models = {}
    for name, plain in (("elastic", False), ("plain", True)):
        net = build_model("mobilenet", CLASSES, input_size=size, weights=None, plain=plain,
                          source_shape=(32, 32, 3))
        trainer = ExitTrainer(net, [1.0] * len(net.outputs))
        trainer.compile(optimizer=sgd())
        models[name] = (trainer, None)
    net = build_model("mobilenet", CLASSES, input_size=size, weights=None,
                      source_shape=(32, 32, 3))
    k = len(net.outputs)
    net.compile(optimizer=sgd(), loss=["sparse_categorical_crossentropy"] * k,
                metrics=[["accuracy"] for _ in range(k)])
    models["naive"] = (net, lambda x, y: (x, (y,) * k))
    return models, k


class _Stepper:
    """Runs training steps of one compiled model on a `batches(...)` stream, timed."""

    def __init__(self, model, transform, x, y, batch):
        from elastic_keras.data import batches

        self.model = model
        ds = batches(x, y, batch)
        self.dataset = ds if transform is None else ds.map(transform)

    def warm_up(self, steps):
        """A short `fit` (tracing, building), a step, then `steps` timed steps: s per step."""
        self.model.fit(self.dataset.take(2), epochs=1, shuffle=False, verbose=0)
        self.iterator = iter(self.dataset.repeat())
        self.block(1)  # the train function meets a plain dataset iterator: traced again
        return self.block(steps)[0] / steps

    def block(self, steps):
        """Run `steps` training steps as `fit` does: (wall s, process CPU s).

        Each step is one call of the model's compiled `train_function` (what `fit` calls
        per step) whose logs are then pulled to Python floats, as a progress bar does.
        """
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            logs = self.model.train_function(self.iterator)
            _ = {k: float(v) for k, v in logs.items()}
        return time.perf_counter() - wall, time.process_time() - cpu


def bench(size, batch, rounds, steps, naive=True):
    """Paired measurement at one setting: {"elastic": ratio, "naive": ratio or None}."""
    names = ["elastic", "plain"] + (["naive"] if naive else [])
    t0 = time.perf_counter()
    models, k = _models(size)
    x, y = _images(8 * batch, seed=size)
    print(f"\n{size} px, batch {batch}: elastic {k} outputs, plain 1; {rounds} rounds of "
          f"{' '.join(names + names[::-1])}, {steps} steps a block; "
          f"models built in {time.perf_counter() - t0:.0f} s")
    steppers = {n: _Stepper(*models[n], x, y, batch) for n in names}
    for name in names:  # warm-up: tracing, then a few untimed steps
        t1 = time.perf_counter()
        per_step = steppers[name].warm_up(steps)
        print(f"  warm-up {name:<8} {time.perf_counter() - t1:6.1f} s (then {per_step:.3f} s/step)")
        sys.stdout.flush()
    order = names + names[::-1]
    samples = []  # per round: {name: (wall s, cpu s)} for 2 x steps steps
    for r in range(rounds):
        per = {n: [0.0, 0.0] for n in names}
        for name in order:
            for j, t in enumerate(steppers[name].block(steps)):
                per[name][j] += t
        samples.append(per)
        if rounds <= 10 or r % 2 == 1 or r == rounds - 1:
            print(f"  round {r + 1}: " + "  ".join(
                f"{n} {2 * steps * batch / per[n][0]:6.1f} img/s" for n in names)
                + f"  elastic/plain {per['plain'][0] / per['elastic'][0]:.3f}"
                + (f"  naive/plain {per['plain'][0] / per['naive'][0]:.3f}" if naive else ""))
            sys.stdout.flush()

    def ratio(name, j):  # plain time / name's time = name's images/s over plain's
        return statistics.median(s["plain"][j] / s[name][j] for s in samples)

    ips = {n: statistics.median(2 * steps * batch / s[n][0] for s in samples) for n in names}
    print(f"{size} px batch {batch}: median images/s: "
          + ", ".join(f"{n} {ips[n]:.1f}" for n in names))
    out = {}
    for name, what in (("elastic", "ExitTrainer elastic"),
                       ("naive", "naive Keras elastic (per-output loss + accuracy)")):
        if name in names:
            out[name] = ratio(name, 0)
            print(f"{size} px batch {batch}: {what} / plain: images/s ratio {out[name]:.3f} "
                  f"(by CPU time per step: {ratio(name, 1):.3f})")
    print(f"  ({time.perf_counter() - t0:.0f} s)")
    sys.stdout.flush()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and steps (smoke run)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive Keras model")
    args = p.parse_args(argv)
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, "
          f"devices: {[d.device_type for d in tf.config.list_logical_devices()]}")
    t0 = time.perf_counter()
    ratios = {}
    for size, batch, rounds, steps in (QUICK if args.quick else SETTINGS):
        ratios[size] = bench(size, batch, rounds, steps, naive=not args.no_naive)
        keras.backend.clear_session()
    naive = ", ".join(f"{s} px {r['naive']:.3f}" for s, r in ratios.items() if "naive" in r)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; target: ExitTrainer elastic/plain >= 0.90"
          + (f"; naive Keras elastic/plain (context): {naive}" if naive else ""))
    print(f"ratio_224={ratios[224]['elastic']:.3f} ratio_64={ratios[64]['elastic']:.3f}")


if __name__ == "__main__":
    main()
