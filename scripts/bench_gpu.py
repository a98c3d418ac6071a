"""Benchmark: the paper setting on a GPU, every Table I model, and runs packed on one GPU.

The paper setting: 32x32 uint8 images resized to 224 px in the graph, batch 16, SGD with
momentum 0.9, every layer trainable (phase "full"), uniform loss weights, through the
project's own trainer (`ExitTrainer.fit` on `Batches`); evaluation at the config's
`eval_batch_size`. For each Table I model, elastic and plain, it measures training and
evaluation images/s and the elastic/plain ratio, and projects the hours of the whole
Table I under the paper profile (10 + 100 epochs over 40,000 images, a validation pass
of 10,000 per epoch, 30 runs), one run after another. Then it packs 1, 2 and 4 runs of
MobileNet and ResNet-50 (elastic) on the GPU at once and measures their summed images/s,
and projects Table I with four runs per GPU.

Every model is its own process (`--worker`): all compile at once, then they measure in
turns, one model at a time (the packed rounds: n at a time), so that compilation is
paid once in parallel and no measurement shares the GPU with another.

    KERAS_BACKEND=jax python scripts/bench_gpu.py [--steps 150] [--out results.json]
    python scripts/bench_gpu.py --quick   # CPU smoke test of the machinery (32 px)

Last line: min_ratio=<lowest elastic/plain training images/s> table1_hours=<one after
another> packed_hours=<four per GPU> pack4_mobilenet=<4 together / 1> pack4_resnet50=<...>.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CLASSES = 10
# (backbone, plain) of every Table I model; Table I runs each on CIFAR-10 and CIFAR-100.
MODELS = [(b, p) for b in ("densenet121", "densenet169", "inceptionv3", "mobilenet",
                           "mobilenet_authors", "vgg16", "resnet50") for p in (False, True)]
MODELS.append(("resnet50_5", False))
PACK = ("mobilenet", "resnet50")
PACK_COUNTS = (1, 2, 4)
EPOCHS, TRAIN_IMAGES, VAL_IMAGES, TEST_IMAGES = 110, 40_000, 10_000, 10_000


def _key(backbone, plain):
    return f"{backbone}-{'plain' if plain else 'elastic'}"


# ---------------------------------------------------------------------------------------
# Worker: build, warm up (compile), then measure when told to


def _wait_for(path, poll=0.05):
    while not os.path.exists(path):
        time.sleep(poll)


def rate(call, steps, batch):
    """Steady-state images/s of `call(n)` (a fit or evaluate of n steps that returns once
    the device is done): the difference of n = steps and n = steps // 5 removes what a
    call costs whatever its length (start-up, the final sync)."""
    short = max(1, steps // 5)
    times = []
    for n in (short, steps):
        t0 = time.perf_counter()
        call(n)
        times.append(time.perf_counter() - t0)
    return (steps - short) * batch / max(times[1] - times[0], 1e-9)


def worker(args):
    import numpy as np

    import keras

    from elastic_keras import build_model
    from elastic_keras.data.batches import Batches
    from elastic_keras.backend.environment import describe
    from elastic_keras.training.objective import ExitTrainer

    sync = args.sync
    t0 = time.time()
    net = build_model(args.backbone, CLASSES, input_size=args.size, weights=None,
                      plain=args.plain, source_shape=(32, 32, 3))
    trainer = ExitTrainer(net, [1.0] * len(net.outputs))
    trainer.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9))
    rng = np.random.default_rng(args.id)
    n_train = args.batch * (args.steps + 8)
    x = rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, CLASSES, n_train).astype(np.int32)
    xv = rng.integers(0, 256, (args.eval_batch * args.eval_steps, 32, 32, 3), dtype=np.uint8)
    yv = rng.integers(0, CLASSES, len(xv)).astype(np.int32)
    train, val = Batches(x, y, args.batch, shuffle=True), Batches(xv, yv, args.eval_batch)
    trainer.fit(train, steps_per_epoch=3, validation_data=val, validation_steps=2, epochs=1,
                verbose=0)  # compiles the train and evaluation steps
    env = describe()
    with open(os.path.join(sync, f"ready-{args.id}.json"), "w") as f:
        json.dump({"warmup_s": time.time() - t0, "device": env["device"],
                   "backend": env["backend"], "outputs": len(net.outputs)}, f)
    round_, parent = 0, os.getppid()
    while True:
        go, stop = os.path.join(sync, f"go-{args.id}-{round_}"), os.path.join(sync, "stop")
        while not os.path.exists(go) and not os.path.exists(stop):
            if os.getppid() != parent:  # the orchestrator died: so do we
                return 1
            time.sleep(0.02)
        if os.path.exists(stop):
            return 0
        start = time.time()
        result = {"train_ips": rate(lambda n: trainer.fit(train, steps_per_epoch=n, epochs=1,
                                                          verbose=0),
                                    args.steps, args.batch),
                  "eval_ips": rate(lambda n: trainer.evaluate(val, steps=n, verbose=0),
                                   args.eval_steps, args.eval_batch),
                  "start": start, "end": time.time()}
        with open(os.path.join(sync, f"result-{args.id}-{round_}.json"), "w") as f:
            json.dump(result, f)
        round_ += 1


# ---------------------------------------------------------------------------------------
# Orchestrator


def _spawn(args, sync, wid, backbone, plain):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--sync", sync,
           "--id", str(wid), "--backbone", backbone, "--size", str(args.size),
           "--batch", str(args.batch), "--eval-batch", str(args.eval_batch),
           "--steps", str(args.steps), "--eval-steps", str(args.eval_steps)]
    if plain:
        cmd.append("--plain")
    # Every worker allocates on demand, up to its share of the GPU (the BFC allocator's
    # limit is the memory fraction, preallocated or not).
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{args.mem_fraction:.4f}",
           "TF_CPP_MIN_LOG_LEVEL": "3", "TF_FORCE_GPU_ALLOW_GROWTH": "true"}
    if args.no_autotune:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_gpu_autotune_level=0").strip()
    log = open(os.path.join(sync, f"log-{wid}.txt"), "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def _wait_all(paths, procs, timeout, what):
    """Wait for the files `paths` from the workers `procs` ({id: process})."""
    deadline = time.time() + timeout
    while not all(os.path.exists(p) for p in paths):
        dead = [w for w, p in procs.items() if p.poll() not in (None, 0)]
        if dead or time.time() > deadline:
            raise RuntimeError(f"{what}: workers {dead or 'timed out'}")
        time.sleep(0.05)
    return [json.load(open(p)) for p in paths]


def _wait_ready(sync, procs, timeout):
    """Ids of the workers warm by the deadline (the others are reported and left out)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        pending = [i for i, p in procs.items()
                   if not os.path.exists(os.path.join(sync, f"ready-{i}.json")) and p.poll() is None]
        if not pending:
            break
        time.sleep(0.2)
    ready = [i for i in procs if os.path.exists(os.path.join(sync, f"ready-{i}.json"))]
    for i in sorted(set(procs) - set(ready)):
        with open(os.path.join(sync, f"log-{i}.txt")) as f:
            tail = f.read().strip().splitlines()[-3:]
        print(f"  worker {i} not warm ({'exited ' + str(procs[i].poll()) if procs[i].poll() is not None else 'timed out'}): "
              + " | ".join(tail), flush=True)
    return ready


def _measure(sync, ids, round_of, procs, timeout):
    for i in ids:
        open(os.path.join(sync, f"go-{i}-{round_of[i]}"), "w").close()
    paths = [os.path.join(sync, f"result-{i}-{round_of[i]}.json") for i in ids]
    results = _wait_all(paths, {i: procs[i] for i in ids}, timeout, "measurement")
    for i in ids:
        round_of[i] += 1
    return results


def _hours(train_ips, eval_ips):
    """Paper profile, one run: 110 epochs of training + validation, one test pass."""
    seconds = EPOCHS * (TRAIN_IMAGES / train_ips + VAL_IMAGES / eval_ips) + TEST_IMAGES / eval_ips
    return seconds / 3600


def orchestrate(args):
    sync, procs = tempfile.mkdtemp(prefix="bench-gpu-"), {}
    try:
        return _orchestrate(args, sync, procs)
    finally:  # whatever happened, no worker outlives the benchmark
        open(os.path.join(sync, "stop"), "w").close()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _orchestrate(args, sync, procs):
    wid, model_of, packs = 0, {}, {b: [] for b in PACK}
    t0 = time.time()
    workers = len(args.models) + sum(max(args.pack_counts) - 1 for b, p in args.models
                                      if b in PACK and not p)
    args.mem_fraction = args.mem_fraction or 0.85 / workers
    for backbone, plain in args.models:
        procs[wid], model_of[_key(backbone, plain)] = _spawn(args, sync, wid, backbone, plain), wid
        if backbone in PACK and not plain:
            packs[backbone].append(wid)
        wid += 1
    for backbone in PACK:
        while len(packs[backbone]) < max(args.pack_counts):
            procs[wid] = _spawn(args, sync, wid, backbone, False)
            packs[backbone].append(wid)
            wid += 1
    print(f"{wid} worker processes started; compiling in parallel (logs in {sync})", flush=True)
    ready = set(_wait_ready(sync, procs, args.warmup_timeout))
    env = json.load(open(os.path.join(sync, f"ready-{min(ready)}.json")))
    print(f"{len(ready)} of {wid} warm in {time.time() - t0:.0f} s on {env['device']} "
          f"({env['backend']})", flush=True)
    round_of, single, packed = {i: 0 for i in range(wid)}, {}, {}
    # The packed backbones first, so that a cut-short run still has the packing numbers.
    order = sorted(model_of, key=lambda k: k.split("-")[0] not in PACK)
    for n_key, key in enumerate(order):
        if model_of[key] in ready:
            single[key] = _measure(sync, [model_of[key]], round_of, procs, args.timeout)[0]
            print(f"  {key:<28} train {single[key]['train_ips']:8.1f} img/s  "
                  f"eval {single[key]['eval_ips']:8.1f} img/s", flush=True)
            _save(args, env, single, packed)
        if n_key == sum(k.split("-")[0] in PACK for k in order) - 1:
            _pack(args, sync, packs, ready, round_of, procs, packed)
            _save(args, env, single, packed)
    report(args, env, single, packed, time.time() - t0)


def _pack(args, sync, packs, ready, round_of, procs, packed):
    for backbone in PACK:
        for n in args.pack_counts:
            ids = packs[backbone][:n]
            if not set(ids) <= ready:
                continue
            res = _measure(sync, ids, round_of, procs, args.timeout)
            packed[(backbone, n)] = {"sum_ips": sum(r["train_ips"] for r in res),
                                     "per_run_ips": [r["train_ips"] for r in res],
                                     "eval_sum_ips": sum(r["eval_ips"] for r in res)}
            print(f"  packed {n} x {backbone:<10} train {packed[(backbone, n)]['sum_ips']:8.1f} "
                  f"img/s together ({', '.join(f'{r:.0f}' for r in packed[(backbone, n)]['per_run_ips'])})",
                  flush=True)
    try:  # memory each worker process holds on the GPU (informational)
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        print("  GPU memory per process: " + "; ".join(out.stdout.strip().splitlines()), flush=True)
    except (OSError, subprocess.SubprocessError):
        pass


def _save(args, env, single, packed):
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "single": single,
                       "packed": {f"{b}x{n}": v for (b, n), v in packed.items()}}, f, indent=2)


def report(args, env, single, packed, seconds):
    rows, total = [], 0.0
    for backbone, plain in args.models:
        if _key(backbone, plain) not in single:
            continue
        s = single[_key(backbone, plain)]
        hours = _hours(s["train_ips"], s["eval_ips"])
        total += 2 * hours  # CIFAR-10 and CIFAR-100
        # ResNet-50-5's baseline is plain ResNet-50 (as in Table I).
        base = single.get(_key("resnet50" if backbone == "resnet50_5" else backbone, True))
        ratio = None if plain or base is None else s["train_ips"] / base["train_ips"]
        rows.append((_key(backbone, plain), s["train_ips"], s["eval_ips"], ratio, hours))
    top = max(args.pack_counts)
    speed = {b: packed[(b, top)]["sum_ips"] / packed[(b, 1)]["sum_ips"]
             if (b, top) in packed and (b, 1) in packed else 1.0 for b in PACK}
    # Packed projection: MobileNet rows at MobileNet's packing gain, the others at ResNet-50's.
    packed_total = sum(2 * h / speed["mobilenet" if k.startswith("mobilenet") else "resnet50"]
                       for k, _, _, _, h in rows)
    print(f"\n{env['device']}, Keras backend {env['backend']}, {args.size} px, batch "
          f"{args.batch}, eval batch {args.eval_batch}; {seconds:.0f} s in all")
    print(f"{'model':<28} {'train img/s':>11} {'eval img/s':>10} {'elastic/plain':>13} "
          f"{'h per run':>9}")
    for key, tr, ev, ratio, hours in rows:
        print(f"{key:<28} {tr:11.1f} {ev:10.1f} {'' if ratio is None else f'{ratio:.3f}':>13} "
              f"{hours:9.2f}")
    for b in PACK:
        print(f"packed {b}: " + ", ".join(
            f"{n} runs {packed[(b, n)]['sum_ips']:.0f} img/s" for n in args.pack_counts
            if (b, n) in packed)
            + f" ({top} together / 1 = {speed[b]:.2f})")
    print(f"Table I ({2 * len(args.models)} runs, paper profile): {total:.1f} h one after "
          f"another, {packed_total:.1f} h {top} per GPU (projected)")
    _save(args, env, single, packed)
    ratios = [r[3] for r in rows if r[3] is not None]
    print(f"min_ratio={min(ratios):.3f} table1_hours={total:.1f} packed_hours={packed_total:.1f} "
          f"pack4_mobilenet={speed['mobilenet']:.2f} pack4_resnet50={speed['resnet50']:.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sync", help=argparse.SUPPRESS)
    p.add_argument("--id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--backbone", help=argparse.SUPPRESS)
    p.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--eval-batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=150, help="timed training steps per model")
    p.add_argument("--eval-steps", type=int, default=20, help="timed evaluation batches")
    p.add_argument("--warmup-timeout", type=float, default=420,
                   help="seconds for every worker to compile; late ones are left out")
    p.add_argument("--timeout", type=float, default=180, help="seconds per measurement")
    p.add_argument("--out", default=None, help="also write the numbers as JSON here")
    p.add_argument("--mem-fraction", type=float, default=None,
                   help="GPU memory share of each worker (default: 0.85 / workers)")
    p.add_argument("--no-autotune", action="store_true",
                   help="XLA GPU autotuning off (faster compiles; slower kernels possible)")
    p.add_argument("--only", default=None,
                   help="comma-separated backbones to measure (default: all of Table I)")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke test of the machinery: MobileNet and ResNet-50 at 32 px, "
                        "few steps, packs of 1 and 2")
    args = p.parse_args(argv)
    args.pack_counts = PACK_COUNTS
    if args.quick:
        args.size, args.steps, args.eval_steps, args.eval_batch = 32, 8, 3, 32
        args.only, args.pack_counts = args.only or ",".join(PACK), (1, 2)
    wanted = set(args.only.split(",")) if args.only else None
    args.models = [(b, p) for b, p in MODELS if wanted is None or b in wanted]
    return worker(args) if args.worker else orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
