"""Benchmark: every Table I model on one GPU, elastic and plain, and Table I's hours from them.

One process, one model compiled at a time (built, compiled, measured, released), JAX's
persistent compilation cache on (a second run in the same place skips compilation), XLA's
GPU autotuning never turned off. For each of the 15 models of Table I's 30 runs (the
packaged configs): training images/s through the project's trainer (`ExitTrainer.fit` at
the config's batch, `train.steps_per_execution`, SGD with momentum, every layer trainable)
and evaluation images/s (`evaluate` at `train.eval_batch_size`), each as 3 steady-state
windows (the difference of a long and a short call: start-up and the last sync left out)
with their spread. Each of the 30 runs' hours is projected from its own model's measured
speeds and its own config (epochs, images, batches). Then, under JAX: MobileNet and
ResNet-50 with 4 seeds in one program (`training/stacked.py`) against one seed, and in
`mixed_bfloat16` against float32. `--xla-flags` times the same models again in a child
process with extra XLA flags (e.g. command buffers off) and prints the ratios.

Work stops when the time budget (default 8 minutes) would run out: the models measured
first are the ones the targets need; anything not reached is listed as not measured.

    KERAS_BACKEND=jax python scripts/bench_gpu.py [--budget 480] [--out bench.json]
    KERAS_BACKEND=jax python scripts/bench_gpu.py --xla-flags=--xla_gpu_enable_command_buffer=
    python scripts/bench_gpu.py --quick   # CPU check of the machinery (32 px, short windows)

Every line names the device. Last line: min_elastic_over_plain=<lowest elastic/plain
training images/s> table1_hours_1seed=<the 30 runs one after another, float32>
seeds4_speedup=<4 seeds in one program / 1> bf16_speedup=<bf16 / float32> runs=<projected>/30
device=<device>.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import time

FIRST = ("mobilenet", "resnet50")  # what the seeds and bf16 targets need, measured first
OFFICIAL = (50_000, 10_000)  # CIFAR-10 and CIFAR-100: official training and test images
BACKBONES = ("mobilenet", "resnet50", "densenet121", "densenet169", "inceptionv3",
             "mobilenet_authors", "vgg16", "resnet50_5")


def steady(call, unit, window_s, windows=3):
    """Steps/s in `windows` consecutive steady-state windows of one long call.

    `call(n, stamps)` runs n steps (a multiple of `unit`, the steps of one compiled call)
    and appends a perf_counter time after each compiled call, once its results are on the
    host. A first call of 2 units compiles and sizes the windows to about `window_s`; in
    the long call the time before the first stamp is left out (start-up)."""
    stamps = []
    call(2 * unit, stamps)
    per_stamp = 2 * unit / len(stamps)  # steps between two stamps
    per_step = max((stamps[-1] - stamps[-2]) / per_stamp, 1e-9)
    span = max(1, int(window_s / per_step / per_stamp))  # stamps per window
    stamps = []
    call(round(per_stamp * (1 + windows * span)), stamps)
    edges = stamps[::span]
    return [span * per_stamp / max(b - a, 1e-9) for a, b in zip(edges, edges[1:])]


def stamper(stamps):
    """A Keras callback appending the time after each compiled training or test call
    (not async-safe, so Keras hands it the logs once they are on the host)."""
    import keras

    now = lambda batch, logs: stamps.append(time.perf_counter())  # noqa: E731
    return keras.callbacks.LambdaCallback(on_train_batch_end=now, on_test_batch_end=now)


def summary(rates, per_step):
    """Median images/s of the windows and their spread ((max - min) / median)."""
    ips = sorted(r * per_step for r in rates)
    mid = ips[len(ips) // 2]
    return {"ips": mid, "spread": (ips[-1] - ips[0]) / mid, "windows": ips}


def _cycle(x, y, batch, length):
    """A PyDataset of `length` batches cycling over (x, y)."""
    import keras

    class Cycle(keras.utils.PyDataset):
        def __len__(self):
            return length

        def __getitem__(self, i):
            j = (i * batch) % (len(x) - batch + 1)
            return x[j:j + batch], y[j:j + batch]

    data = Cycle()
    data.x = x
    return data


def _images(n, classes, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, classes, n).astype(np.int32))


def measure_model(backbone, plain, args, precision="float32"):
    """Training and evaluation speed of one model through the loop's own trainer."""
    import keras

    from elastic_keras import build_model
    from elastic_keras.training.objective import ExitTrainer

    start = time.time()
    net = build_model(backbone, args.classes, input_size=args.size, weights=None,
                      plain=plain, source_shape=(32, 32, 3), precision=precision)
    trainer = ExitTrainer(net, [1.0] * len(net.outputs))
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9),
                    steps_per_execution=args.spe)
    x, y = _images(64 * max(args.batch, args.eval_batch), args.classes)
    train, val = (_cycle(x, y, args.batch, 10 ** 6), _cycle(x, y, args.eval_batch, 10 ** 6))
    def fit(n, stamps):
        trainer.fit(train, steps_per_epoch=n, epochs=1, verbose=0, callbacks=[stamper(stamps)])

    def ev(n, stamps):
        trainer.evaluate(val, steps=n, verbose=0, callbacks=[stamper(stamps)])

    out = {"outputs": len(net.outputs),
           "train": summary(steady(fit, args.spe, args.window_s), args.batch),
           "eval": summary(steady(ev, args.spe, args.window_s / 2), args.eval_batch)}
    out["seconds"] = time.time() - start
    net = trainer = None  # free them before the next model (the closures hold them)
    keras.backend.clear_session()
    gc.collect()
    return out


def measure_seeds(backbone, k, args):
    """Training images/s of `k` seeds of one elastic model through one vmapped step
    (the seeds-together loop's own code: training/stacked.py)."""
    import keras

    from elastic_keras import build_model
    from elastic_keras.training.job import Job, make_trainer
    from elastic_keras.training import stacked

    net = build_model(backbone, args.classes, input_size=args.size, weights=None,
                      source_shape=(32, 32, 3))
    trainer = make_trainer(net, [1.0] * len(net.outputs))
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9))
    trainer.optimizer.build(trainer.trainable_variables)
    job = Job(None, None, net, trainer, {}, [1.0] * len(net.outputs))
    train_step, _ = stacked.compiled_steps(job)
    state = [stacked.stack_values([v] * k) for v in (net.trainable_variables,
                                               net.non_trainable_variables,
                                               trainer.optimizer.variables)]
    x, y = _images(64 * args.batch, args.classes)

    def call(n, stamps):  # synced after every `spe` steps, as Keras' loop is
        for _ in range(n // args.spe):
            data = [_cycle(x, y, args.batch, args.spe)] * k
            state[:] = stacked.run_batches(train_step, state, data)[0]
            stamps.append(time.perf_counter())

    out = summary(steady(call, args.spe, args.window_s), args.batch * k)
    net = trainer = state = None  # free them before the next model
    keras.backend.clear_session()
    gc.collect()
    return out


def run_hours(cfg, speed):
    """Hours of one run of `cfg` (every epoch of every phase at the measured speeds: an
    upper bound, phase 'heads' trains faster; no early stopping in the paper protocol)."""
    d = cfg["data"]
    train_all = min(OFFICIAL[0], d["train_limit"] or OFFICIAL[0])
    test = min(OFFICIAL[1], d["test_limit"] or OFFICIAL[1])
    val = round(train_all * cfg["data"]["val_fraction"])
    epochs = sum(p["epochs"] for p in cfg["phases"].values())
    tr, ev = speed["train"]["ips"], speed["eval"]["ips"]
    return (epochs * ((train_all - val) / tr + val / ev) + test / ev) / 3600


def table1(speeds):
    """{run name: hours} of the packaged Table I configs whose model was measured."""
    from elastic_keras.runs.config import load_config, packaged_configs

    hours = {}
    for name in sorted(packaged_configs()):
        cfg = load_config(name)
        key = _key(cfg["model"]["backbone"], cfg["model"]["plain"])
        if key in speeds:
            hours[name] = run_hours(cfg, speeds[key])
    return hours


def _key(backbone, plain):
    return f"{backbone}-{'plain' if plain else 'elastic'}"


def _plan(args):
    """(what, backbone, plain) in the order measured: the targets' models first."""
    chosen = [b for b in BACKBONES if args.only is None or b in args.only]
    first = [b for b in chosen if b in FIRST]
    plan = [("model", b, p) for b in first for p in (False, True)]
    if args.extras:
        plan += [("seeds", b, False) for b in first] + [("bf16", b, False) for b in first]
    rest = [b for b in chosen if b not in FIRST]
    return plan + [("model", b, p) for b in rest for p in (False, True)
                   if not (p and b == "resnet50_5")]  # its baseline is ResNet-50's (G2)


def run_plan(args, dev):
    """Measure the plan within the budget; returns every number measured."""
    import keras

    res, last = {"models": {}, "seeds": {}, "bf16": {}, "skipped": []}, 0.0
    for what, backbone, plain in _plan(args):
        left = args.budget - (time.time() - args.t0)
        if left < 1.5 * last:
            res["skipped"].append(f"{what} {_key(backbone, plain)}")
            continue
        start, key = time.time(), _key(backbone, plain)
        if what == "model":
            m = res["models"][key] = measure_model(backbone, plain, args)
            print(f"[{dev}] {key:<28} train {m['train']['ips']:9.1f} img/s "
                  f"(spread {m['train']['spread']:.1%})  eval {m['eval']['ips']:9.1f} img/s "
                  f"(spread {m['eval']['spread']:.1%})  {m['seconds']:.0f} s", flush=True)
        elif what == "bf16":
            m = res["bf16"][backbone] = measure_model(backbone, False, args, "mixed_bfloat16")
            print(f"[{dev}] {key:<28} mixed_bfloat16 train {m['train']['ips']:9.1f} img/s "
                  f"(spread {m['train']['spread']:.1%})", flush=True)
        elif keras.backend.backend() != "jax":
            res["skipped"].append(f"seeds {key} (JAX only)")
        else:
            res["seeds"][backbone] = {k: measure_seeds(backbone, k, args) for k in (1, 4)}
            print(f"[{dev}] {key:<28} seeds in one program: " + ", ".join(
                f"{k} seed(s) {s['ips']:.1f} img/s (spread {s['spread']:.1%})"
                for k, s in res["seeds"][backbone].items()), flush=True)
        last = time.time() - start
    return res


def compare_flags(args, dev, res):
    """The first models again in a child process with `args.xla_flags` added to XLA_FLAGS:
    {model: flagged / default training images/s}."""
    import tempfile

    out = os.path.join(tempfile.mkdtemp(prefix="bench-gpu-"), "flags.json")
    left = int(args.budget - (time.time() - args.t0))
    cmd = [sys.executable, os.path.abspath(__file__), "--only", ",".join(FIRST), "--no-extras",
           "--budget", str(left), "--out", out, "--size", str(args.size), "--classes",
           str(args.classes), "--window-s", str(args.window_s)]
    flags = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    subprocess.run(cmd, env={**os.environ, "XLA_FLAGS": flags}, timeout=max(left, 1) + 60,
                   check=False)
    if not os.path.exists(out):
        return {}
    other = json.load(open(out))["models"]
    ratios = {k: other[k]["train"]["ips"] / res["models"][k]["train"]["ips"]
              for k in other if k in res["models"]}
    for k, r in ratios.items():
        print(f"[{dev}] XLA_FLAGS += {args.xla_flags!r}: {k} training x{r:.3f}", flush=True)
    return ratios


def report(args, dev, res):
    """The summary lines and the last line (every line names the device)."""
    models = res["models"]
    ratios = {}
    for key, m in models.items():
        backbone, kind = key.rsplit("-", 1)
        base = models.get(_key("resnet50" if backbone == "resnet50_5" else backbone, True))
        if kind == "elastic" and base:
            ratios[backbone] = m["train"]["ips"] / base["train"]["ips"]
    hours = table1(models)
    seeds = {b: s[4]["ips"] / max(s[1]["ips"], models[_key(b, False)]["train"]["ips"])
             for b, s in res["seeds"].items() if _key(b, False) in models}
    bf16 = {b: m["train"]["ips"] / models[_key(b, False)]["train"]["ips"]
            for b, m in res["bf16"].items() if _key(b, False) in models}
    for name, h in hours.items():
        print(f"[{dev}] {name:<36} {h:6.2f} h projected (paper profile, float32, from "
              f"{args.size} px speeds)")
    print(f"[{dev}] elastic/plain: " + ", ".join(f"{b} {r:.3f}" for b, r in ratios.items()))
    print(f"[{dev}] 4 seeds in one program / one seed: "
          + (", ".join(f"{b} {r:.2f}" for b, r in seeds.items()) or "not measured"))
    print(f"[{dev}] mixed_bfloat16 / float32 training: "
          + (", ".join(f"{b} {r:.2f}" for b, r in bf16.items()) or "not measured"))
    if res["skipped"]:
        print(f"[{dev}] NOT measured (budget or backend): {', '.join(res['skipped'])}")
    fmt = lambda v, f: "na" if v is None else format(v, f)  # noqa: E731
    print(f"min_elastic_over_plain={fmt(min(ratios.values(), default=None), '.3f')} "
          f"table1_hours_1seed={fmt(sum(hours.values()) if hours else None, '.1f')} "
          f"seeds4_speedup={fmt(min(seeds.values(), default=None), '.2f')} "
          f"bf16_speedup={fmt(min(bf16.values(), default=None), '.2f')} "
          f"runs={len(hours)}/30 device={dev.replace(' ', '_')}")


def _environment(args):
    """The persistent compilation cache, and a refusal of XLA autotuning off."""
    if "autotune_level=0" in os.environ.get("XLA_FLAGS", ""):
        raise SystemExit("error: XLA_FLAGS turns GPU autotuning off; it made MobileNet 30 "
                         "times slower (docs/BENCHMARKS.md): remove it")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    if keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(args.cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from elastic_keras.backend.environment import describe

    env = describe()
    return f"{env['device']}, {env['backend']}"


def main(argv=None):
    from elastic_keras.runs.config import PROTOCOL

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated backbones (default: all)")
    p.add_argument("--budget", type=float, default=480, help="seconds of work at most")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=100,
                   help="classes of every head (CIFAR-100's; CIFAR-10 runs use the same "
                        "speed: the heads are a tiny share of the work)")
    p.add_argument("--batch", type=int, default=PROTOCOL["train"]["batch_size"])
    p.add_argument("--eval-batch", type=int, default=PROTOCOL["train"]["eval_batch_size"])
    p.add_argument("--spe", type=int, default=PROTOCOL["train"]["steps_per_execution"],
                   help="train.steps_per_execution")
    p.add_argument("--window-s", type=float, default=2.0, help="seconds per training window")
    p.add_argument("--cache", default="~/.cache/elastic-keras/jax", help="JAX compile cache")
    p.add_argument("--xla-flags", default=None, help="time the first models again with these")
    p.add_argument("--no-extras", dest="extras", action="store_false",
                   help="no seeds or bf16 measurements")
    p.add_argument("--out", default=None, help="also write the numbers as JSON here")
    p.add_argument("--quick", action="store_true", help="CPU check: 32 px, short windows, "
                   "MobileNet only, 10 classes, eval batch 16, 2 steps per call")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.window_s, args.classes, args.eval_batch, args.spe = 32, 0.1, 10, 16, 2
        args.only = args.only or "mobilenet"
    args.only = args.only.split(",") if args.only else None
    args.t0 = time.time()
    dev = _environment(args)
    print(f"[{dev}] {args.size} px, batch {args.batch}, eval batch {args.eval_batch}, "
          f"{args.spe} steps per call, {args.classes} classes, budget {args.budget:.0f} s",
          flush=True)
    res = run_plan(args, dev)
    if args.xla_flags:
        res["flags"] = compare_flags(args, dev, res)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": dev, **res}, f, indent=2)
    report(args, dev, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
