"""Benchmark: training-throughput cost of the elastic structure (MobileNet, CPU).

Trains, in one process and side by side, on synthetic CIFAR-shaped uint8 images
(10 classes, random weights, phase "full": everything trainable, SGD momentum 0.9):

- elastic: the elastic MobileNet (13 outputs) in ExitTrainer (sum of the 13 exits' CE
  losses, every exit's loss and accuracy tracked in one vectorised metric update);
- plain:   the plain MobileNet (final exit only) in the same ExitTrainer;
- naive:   for context, the elastic functional net compiled the stock Keras way:
  `loss="sparse_categorical_crossentropy"` and `metrics=["accuracy"]` per output
  (13 loss objects, 13 metric objects).

Each model is fed exactly as `train.py` feeds it: `fit(batches(...), epochs=1,
shuffle=False)`, native 32x32 uint8 batches resized in-graph to the input size. Settings:
224 px batch 16 (the paper's protocol) and 64 px batch 64. Every model is first warmed up
(tracing, then one untimed block). Then each round runs one `fit` block of N steps per
model in the order elastic, plain, naive, naive, plain, elastic (symmetric: linear drifts
in machine load cancel). A block's step time is the median of its steps' wall times (a
callback; `fit`'s per-call setup is left out, and bursts of load from other processes on
a shared machine are filtered); a model's round time is the mean of its two blocks; the
ratio plain/elastic (= images/s elastic/plain) is taken per round, then the median over
rounds. The same ratio from process CPU time per step is printed as a cross-check.

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
SETTINGS = ((224, 16, 4, 3), (64, 64, 10, 5))
QUICK = ((224, 16, 2, 2), (64, 64, 2, 3))


def _step_timer():
    """A Keras callback recording the wall-clock seconds of every training step."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.steps = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append(time.perf_counter() - self.start)

    return StepTimer()


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
    """One `fit` over x (a whole number of batches): (median s per step, CPU s per step).

    The median of the block's step times is the steady-state step time, robust to bursts
    of load from other processes on a shared machine; the process CPU time per step (all
    threads, `fit`'s setup included) is a second, load-insensitive measure.
    """
    from elastic_keras.data import batches

    ds = batches(x, y, batch)
    if transform is not None:
        ds = ds.map(transform)
    timer = _step_timer()
    cpu = time.process_time()
    model.fit(ds, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    cpu = time.process_time() - cpu
    return statistics.median(timer.steps), cpu / len(timer.steps)


def bench(size, batch, rounds, steps, naive=True):
    """Paired measurement at one setting: {"elastic": ratio, "naive": ratio or None}."""
    names = ["elastic", "plain"] + (["naive"] if naive else [])
    t0 = time.perf_counter()
    models, k = _models(size)
    x, y = _images(steps * batch, seed=size)
    print(f"\n{size} px, batch {batch}: elastic {k} outputs, plain 1; {rounds} rounds of "
          f"{' '.join(names + names[::-1])}, {steps} steps a block; "
          f"models built in {time.perf_counter() - t0:.0f} s")
    for name in names:  # warm-up: tracing, then one untimed block
        t1 = time.perf_counter()
        _fit_block(*models[name], x[:2 * batch], y[:2 * batch], batch)
        wall, _ = _fit_block(*models[name], x, y, batch)
        print(f"  warm-up {name:<8} {time.perf_counter() - t1:6.1f} s "
              f"(then {wall:.3f} s/step)")
        sys.stdout.flush()
    order = names + names[::-1]
    samples = []  # per round: {name: (wall s per step, cpu s per step)}
    for r in range(rounds):
        times = {n: [] for n in names}
        for name in order:
            times[name].append(_fit_block(*models[name], x, y, batch))
        per = {n: tuple(statistics.fmean(t[j] for t in ts) for j in range(2))
               for n, ts in times.items()}
        samples.append(per)
        print(f"  round {r + 1}: " + "  ".join(
            f"{n} {batch / per[n][0]:6.1f} img/s" for n in names)
            + "  elastic/plain " + f"{per['plain'][0] / per['elastic'][0]:.3f}"
            + (f"  naive/plain {per['plain'][0] / per['naive'][0]:.3f}" if naive else ""))
        sys.stdout.flush()

    def ratio(name, j):  # plain time / name's time = name's images/s over plain's
        return statistics.median(s["plain"][j] / s[name][j] for s in samples)

    ips = {n: statistics.median(batch / s[n][0] for s in samples) for n in names}
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
