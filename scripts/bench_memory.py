"""Benchmark: peak resident memory of a paper-profile training pass (CPU).

The paper's protocol trains on CIFAR's 40,000 training images upsampled to 224x224, batch
16, SGD with momentum 0.9. The authors' scripts upsample the whole set in memory first:
40,000 x 224 x 224 x 3 float32 = 24 GB. Here the dataset stays uint8 at native size
(40,000 x 32 x 32 x 3 = 123 MB, plus the 10,000 validation images) and is streamed by
`batches.Batches`, the model resizing each batch in-graph (FIDELITY.md D3).

This script trains the elastic model of `--backbone` (default MobileNet, as in
bench_exit_overhead.py; random weights, 10 classes, uniform loss weights) at 224 px in ExitTrainer,
exactly as `train.py` does (`fit(Batches(..., shuffle=True), validation_data=...)`), for
`--steps` training steps (steps_per_epoch) and one validation pass of `--val-steps`
batches (validation_steps), on synthetic CIFAR-shaped uint8 data of the real split's
sizes. Memory is the process's peak resident set size (`getrusage` ru_maxrss).

    python scripts/bench_memory.py [--backbone mobilenet] [--steps 20] [--val-steps 5]

Measured on a 2-core CPU: MobileNet 2.25 GB. DenseNet-121 peaks at about 4.1 GB: its own
training activations at batch 16 (about 3.2 GB of layer outputs), not the data (154 MB).

Last line: peak_rss_gb=<peak RSS in GB (1e9 bytes)>.
"""

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

GB = 1e9
TRAIN_IMAGES, VAL_IMAGES = 40_000, 10_000  # PAPER.md section 5: CIFAR's 50,000 split 80/20
CLASSES = 10


def peak_rss():
    """Peak resident set size of this process so far, bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss():
    """Current resident set size, bytes (from /proc; the peak where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss()


def report(what):
    print(f"  [{what}] RSS {current_rss() / GB:.2f} GB, peak {peak_rss() / GB:.2f} GB")
    sys.stdout.flush()


def _rss_logger(every):
    """A Keras callback printing the RSS every `every` training steps and after validation."""
    import keras

    class RSSLogger(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0 or (batch + 1) % every == 0:
                report(f"training step {batch + 1}, {time.perf_counter() - self.start:.0f} s")

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_test_end(self, logs=None):
            report(f"validation done, {time.perf_counter() - self.start:.0f} s")

    return RSSLogger()


def _data():
    """Synthetic CIFAR-shaped uint8 data of the real split's sizes."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (TRAIN_IMAGES, 32, 32, 3), dtype=np.uint8)
    y_train = rng.integers(0, CLASSES, TRAIN_IMAGES).astype(np.int32)
    x_val = rng.integers(0, 256, (VAL_IMAGES, 32, 32, 3), dtype=np.uint8)
    y_val = rng.integers(0, CLASSES, VAL_IMAGES).astype(np.int32)
    data_bytes = sum(a.nbytes for a in (x_train, y_train, x_val, y_val))
    authors = TRAIN_IMAGES * 224 * 224 * 3 * 4
    print(f"dataset in memory (uint8, native 32x32): {TRAIN_IMAGES:,} train + {VAL_IMAGES:,} "
          f"val images = {data_bytes / 1e6:.0f} MB")
    print(f"the authors' approach (training set upsampled in memory): {TRAIN_IMAGES:,} x 224 x "
          f"224 x 3 float32 = {authors / GB:.1f} GB ({authors / 2**30:.1f} GiB)")
    report("data generated")
    return x_train, y_train, x_val, y_val, authors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="mobilenet")
    p.add_argument("--steps", type=int, default=20,
                   help="training steps (default 20; the peak is reached within the first few)")
    p.add_argument("--val-steps", type=int, default=5,
                   help="validation batches (default 5)")
    p.add_argument("--size", type=int, default=224, help="input size (default 224, the paper's)")
    p.add_argument("--batch", type=int, default=16, help="training batch (default 16, the paper's)")
    p.add_argument("--eval-batch", type=int, default=None,
                   help="validation batch (default: train.eval_batch_size of the config)")
    args = p.parse_args(argv)
    if args.eval_batch is None:
        from elastic_keras.runs.config import PROTOCOL

        args.eval_batch = PROTOCOL["train"]["eval_batch_size"]

    t0 = time.perf_counter()
    print(f"{os.cpu_count()} CPU cores; backbone {args.backbone}, {args.size} px, batch "
          f"{args.batch}, {args.steps} training steps, {args.val_steps} validation batches "
          f"of {args.eval_batch}")
    report("start")

    x_train, y_train, x_val, y_val, authors = _data()

    import keras
    import tensorflow as tf

    from elastic_keras import build_model
    from elastic_keras.data.batches import Batches
    from elastic_keras.training.objective import ExitTrainer

    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    report("TensorFlow imported")
    keras.utils.set_random_seed(0)
    net = build_model(args.backbone, CLASSES, input_size=args.size, weights=None,
                      source_shape=(32, 32, 3))
    trainer = ExitTrainer(net, [1.0] * len(net.outputs))
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9))
    print(f"model: {net.name}, {len(net.outputs)} outputs, {net.count_params():,} parameters")
    outputs = sum(int(np.prod(t.shape[1:])) for layer in net.layers
                  for t in tf.nest.flatten(layer.output))
    print(f"its layer outputs for one batch of {args.batch} sum to "
          f"{outputs * args.batch * 4 / GB:.2f} GB of float32 (about what backprop keeps)")
    report("model built")

    t1 = time.perf_counter()
    hist = trainer.fit(
        Batches(x_train, y_train, args.batch, shuffle=True, seed=0, epoch=1),
        steps_per_epoch=args.steps,
        validation_data=Batches(x_val, y_val, args.eval_batch),
        validation_steps=args.val_steps, epochs=1, shuffle=False, verbose=0,
        callbacks=[_rss_logger(5)])
    logs = {k: float(v[-1]) for k, v in hist.history.items() if k in ("loss", "val_loss")}
    print(f"trained {args.steps} steps ({args.steps * args.batch} images) + validated "
          f"{args.val_steps} batches in {time.perf_counter() - t1:.0f} s: loss "
          f"{logs['loss']:.3f}, val_loss {logs['val_loss']:.3f}")

    peak = peak_rss()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; peak RSS {peak / GB:.2f} GB "
          f"({peak / 2**30:.2f} GiB) vs {authors / GB:.1f} GB for the upsampled training set "
          f"alone; target < 3 GB")
    print(f"peak_rss_gb={peak / GB:.2f}")


if __name__ == "__main__":
    main()
