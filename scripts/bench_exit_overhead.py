"""Benchmark: training-throughput cost of the elastic structure (MobileNet, any backend).

Trains, in one process and side by side, on synthetic CIFAR-shaped uint8 images
(10 classes, random weights, phase "full": everything trainable, SGD momentum 0.9),
through the project's own trainer (`ExitTrainer.fit` on `Batches`, as train.py runs it):

- elastic: the elastic MobileNet (13 outputs): the sum of the 13 exits' losses, every
  exit's loss and accuracy tracked in one vector metric;
- plain:   the plain MobileNet (final exit only) in the same trainer;
- naive (--naive, for context): the elastic net compiled the stock Keras way, one loss
  and one accuracy metric per output (13 of each);
- multi_way, multi_way_prestep (--multi-way): the elastic net trained by AuxNet's
  multi-way backpropagation (one update per output, in series; FIDELITY.md L4), as AuxNet
  writes it and in the pre-step reading, each timed against the joint step.

Settings: 224 px batch 16 (the paper's protocol) and 64 px batch 64. Each round runs, for
every model in the order elastic, plain, [naive, multi-way variants and back,] plain,
elastic (linear load drifts cancel), one `fit` of a few steps and times each step (a
callback at every step end; it reads the step's loss, so the device has finished it); the
first step of a fit is left out and the median step time kept, robust to bursts of load
from other processes. Per round the ratio plain time / elastic time (= images/s elastic /
plain) is taken, then the median over rounds.

    python scripts/bench_exit_overhead.py [--backend jax] [--quick] [--naive] [--multi-way]

Last line: ratio_224=<elastic/plain images/s at 224 px> ratio_64=<same at 64 px>, and with
--multi-way: multi_way_cost_224=<multi-way / joint time per step> (and _64) and
prestep_cost_224=<multi_way_prestep / joint> (and _64).
"""

import argparse
import os
import statistics
import sys
import time

CLASSES = 10
LR = 0.01
# (input size, batch, rounds, steps per fit); --quick uses QUICK.
SETTINGS = ((224, 16, 6, 6), (64, 64, 8, 8))
QUICK = ((224, 16, 2, 3), (64, 64, 3, 3))
MULTI_WAY = ("multi_way", "multi_way_prestep")


def _images(n, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, CLASSES, n).astype(np.int32))


def _models(size, naive, multi_way):
    """{name: compiled keras model} at one input size."""
    import keras

    from elastic_keras import build_model
    from elastic_keras.training.job import make_trainer
    from elastic_keras.training.objective import ExitTrainer

    def sgd():
        return keras.optimizers.SGD(learning_rate=LR, momentum=0.9)

    models = {}
    for name, plain in (("elastic", False), ("plain", True)):
        net = build_model("mobilenet", CLASSES, input_size=size, weights=None, plain=plain,
                          source_shape=(32, 32, 3))
        trainer = ExitTrainer(net, [1.0] * len(net.outputs))
        trainer.compile(optimizer=sgd())
        models[name] = trainer
    if naive:
        net = build_model("mobilenet", CLASSES, input_size=size, weights=None,
                          source_shape=(32, 32, 3))
        k = len(net.outputs)
        net.compile(optimizer=sgd(), loss=["sparse_categorical_crossentropy"] * k,
                    metrics=[["accuracy"] for _ in range(k)])
        models["naive"] = net
    for variant in MULTI_WAY if multi_way else ():
        net = build_model("mobilenet", CLASSES, input_size=size, weights=None,
                          source_shape=(32, 32, 3))
        models[variant] = make_trainer(net, [1.0] * len(net.outputs), variant)
        models[variant].compile(optimizer=sgd())
    return models


def _per_output(batches, k):
    """The same batches with the labels repeated for each of the k outputs."""
    import keras

    class PerOutput(keras.utils.PyDataset):
        def __len__(self):
            return len(batches)

        def __getitem__(self, i):
            x, y = batches[i]
            return x, tuple([y] * k)

    return PerOutput()


def _step_seconds(model, data, steps):
    """Median seconds per training step of one `fit`, its first step left out."""
    import keras

    ends = []

    class StepEnds(keras.callbacks.Callback):  # not async-safe: it runs after every step
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # the step is done
            ends.append(time.perf_counter())

    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False,
              callbacks=[StepEnds()])
    return statistics.median(b - a for a, b in zip(ends, ends[1:]))


def bench(size, batch, rounds, steps, naive, multi_way):
    """Paired measurement at one setting: {"elastic": ratio, ...} (plain time / model time;
    multi_way: its time / the joint elastic time)."""
    from elastic_keras.data.batches import Batches

    names = ["elastic", "plain"] + (["naive"] if naive else []) + (
        list(MULTI_WAY) if multi_way else [])
    t0 = time.perf_counter()
    models = _models(size, naive, multi_way)
    x, y = _images(batch * (steps + 2), seed=size)
    data = {n: Batches(x, y, batch) for n in ("elastic", "plain") + MULTI_WAY}
    if naive:
        data["naive"] = _per_output(data["plain"], len(models["naive"].outputs))
    print(f"\n{size} px, batch {batch}: {rounds} rounds of {' '.join(names + names[::-1])}, "
          f"fits of {steps} steps; models built in {time.perf_counter() - t0:.0f} s",
          flush=True)
    for name in names:  # warm-up: tracing and compilation
        t1 = time.perf_counter()
        _step_seconds(models[name], data[name], 3)
        print(f"  warm-up {name:<8} {time.perf_counter() - t1:6.1f} s", flush=True)
    samples = []
    for r in range(rounds):
        per = {n: 0.0 for n in names}
        for name in names + names[::-1]:
            per[name] += _step_seconds(models[name], data[name], steps) / 2
        samples.append(per)
        print(f"  round {r + 1}: " + "  ".join(
            f"{n} {batch / per[n]:6.1f} img/s" for n in names)
            + f"  elastic/plain {per['plain'] / per['elastic']:.3f}", flush=True)
    out = {n: statistics.median(s["plain"] / s[n] for s in samples)
           for n in names if n not in ("plain",) + MULTI_WAY}
    for variant in MULTI_WAY if multi_way else ():
        out[variant] = statistics.median(s[variant] / s["elastic"] for s in samples)
    print(f"{size} px batch {batch}: elastic/plain images/s {out['elastic']:.3f}"
          + (f", naive Keras elastic/plain {out['naive']:.3f}" if naive else "")
          + (f", multi-way/joint time per step {out['multi_way']:.3f} (prestep "
             f"{out['multi_way_prestep']:.3f})" if multi_way else "")
          + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None,
                   help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    p.add_argument("--quick", action="store_true", help="fewer rounds and steps (smoke run)")
    p.add_argument("--naive", action="store_true",
                   help="also the stock Keras multi-output compile, for context")
    p.add_argument("--multi-way", action="store_true",
                   help="also AuxNet's multi-way backpropagation, timed against joint")
    args = p.parse_args(argv)
    if args.backend:  # before Keras is imported
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from elastic_keras.backend.environment import describe, header, import_keras_quietly
    from elastic_keras.backend.keras_internals import seed_everything

    import_keras_quietly()
    seed_everything(0)
    print(header(describe()), flush=True)
    t0 = time.perf_counter()
    ratios = {}
    for size, batch, rounds, steps in (QUICK if args.quick else SETTINGS):
        ratios[size] = bench(size, batch, rounds, steps, args.naive, args.multi_way)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; target: elastic/plain >= 0.90")
    print(f"ratio_224={ratios[224]['elastic']:.3f} ratio_64={ratios[64]['elastic']:.3f}"
          + "".join(f" {key}_cost_{size}={ratios[size][variant]:.3f}"
                    for variant, key in zip(MULTI_WAY, ("multi_way", "prestep"))
                    for size in (224, 64) if args.multi_way))
    return 0


if __name__ == "__main__":
    sys.exit(main())
