"""Benchmark: training-throughput cost of the elastic structure (MobileNet, CPU).

Trains, in one process and side by side, on synthetic CIFAR-shaped uint8 images
(10 classes, random weights, phase "full": everything trainable, SGD momentum 0.9):

- elastic: the elastic MobileNet (13 outputs) in ExitTrainer (sum of the 13 exits' CE
  losses, every exit's loss and accuracy tracked in one vectorised metric update);
- plain:   the plain MobileNet (final exit only) in the same ExitTrainer;
- naive:   for context, the elastic functional net compiled the stock Keras way:
  `loss="sparse_categorical_crossentropy"` and `metrics=["accuracy"]` per output
  (13 loss objects, 13 metric objects).

Each model is fed exactly as `train.py` feeds it: `trainer.fit(batches(...), epochs=1,
shuffle=False)` with the in-graph resize from 32x32 uint8 to the input size. Settings:
224 px batch 16 (the paper's protocol) and 64 px batch 64. Every model is warmed up first
(tracing); then each round times a block of N steps of each model in the order
elastic, plain, naive, naive, plain, elastic (symmetric, so linear drifts in machine load
cancel), a block's time running from the start of its first step to the end of its last
(a callback; `fit`'s per-call setup is left out). The ratio of each round is taken, then
the median over rounds.

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
SETTINGS = ((224, 16, 3, 4), (64, 64, 5, 8))
QUICK = ((224, 16, 2, 2), (64, 64, 2, 4))


def _block_timer():
    """A Keras callback timing from the start of the first step to the end of the last."""
    import keras

    class BlockTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.end = time.perf_counter()

    return BlockTimer()


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


def _fit_block(model, transform, x, y, batch):
    """One `fit` over x (a whole number of batches); the seconds its steps took."""
    from elastic_keras.data import batches

    ds = batches(x, y, batch)
    if transform is not None:
        ds = ds.map(transform)
    timer = _block_timer()
    model.fit(ds, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    return timer.end - timer.start


def bench(size, batch, rounds, steps, naive=True):
    names = ["elastic", "plain"] + (["naive"] if naive else [])
    t0 = time.perf_counter()
    models, k = _models(size)
    x, y = _images(steps * batch, seed=size)
    print(f"\n{size} px, batch {batch}: elastic {k} outputs; {rounds} rounds x "
          f"{steps} steps per block; models built in {time.perf_counter() - t0:.0f} s")
    for name in names:  # warm-up: tracing, then one untimed block
        t1 = time.perf_counter()
        _fit_block(*models[name], x[:2 * batch], y[:2 * batch], batch)
        s = _fit_block(*models[name], x, y, batch)
        print(f"  warm-up {name:<8} {time.perf_counter() - t1:6.1f} s "
              f"(last block {s / steps:.3f} s/step)")
        sys.stdout.flush()
    order = names + names[::-1]
    samples = []  # per round: {name: seconds per step}
    for r in range(rounds):
        times = {n: [] for n in names}
        for name in order:
            times[name].append(_fit_block(*models[name], x, y, batch) / steps)
        per = {n: statistics.fmean(t) for n, t in times.items()}
        samples.append(per)
        print(f"  round {r + 1}: " + "  ".join(
            f"{n} {batch / per[n]:6.1f} img/s" for n in names)
            + f"  elastic/plain {per['plain'] / per['elastic']:.3f}"
            + (f"  naive/plain {per['plain'] / per['naive']:.3f}" if naive else ""))
        sys.stdout.flush()
    ips = {n: statistics.median(batch / s[n] for s in samples) for n in names}
    ratio = statistics.median(s["plain"] / s["elastic"] for s in samples)
    naive_ratio = statistics.median(s["plain"] / s["naive"] for s in samples) if naive else None
    print(f"{size} px batch {batch}: median images/s: "
          + ", ".join(f"{n} {ips[n]:.1f}" for n in names))
    print(f"{size} px batch {batch}: ExitTrainer elastic/plain = {ratio:.3f}"
          + (f"; naive Keras (per-output loss + accuracy) elastic/plain = {naive_ratio:.3f}"
             if naive else "")
          + f"  ({time.perf_counter() - t0:.0f} s)")
    sys.stdout.flush()
    return ratio, naive_ratio


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
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; target: ExitTrainer elastic/plain >= 0.90 "
          f"(naive Keras, context: " + ", ".join(
              f"{s} px {r[1]:.3f}" for s, r in ratios.items() if r[1] is not None) + ")")
    print(f"ratio_224={ratios[224][0]:.3f} ratio_64={ratios[64][0]:.3f}")


if __name__ == "__main__":
    main()
