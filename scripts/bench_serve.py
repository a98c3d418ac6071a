"""Benchmark: the HTTP server under an open-loop Poisson load, the elastic cascade against the
final exit alone (the plain network), the same export and the same batching.

Elastic MobileNet (13 outputs, random weights) on 32x32 uint8 images resized to 128 px in the
graph (as bench_export.py), exported to ONNX, served twice on loopback by
`python -m elastic_keras serve` in a subprocess: at the threshold where about half of the
images leave by the middle exit, and with --final-only. Requests of one image each (the
protocol's binary tensor extension) arrive as a Poisson stream at rising rates, every rate
bounded in count and time; per rate: throughput, p50/p95/p99 latency, batch fill per segment
(/metrics), errors, refusals (503) and lost requests. Goodput = requests per second answered
within the SLO: 5x the final exit's p50 at batch 1, served (one image at a time through the
final-only server, HTTP included; goodput at 5x the predictor's own p50, compute only, is
printed too). `ceiling` is the compute-only speed-up of
the cascade at that exit mix (batches of 32, no server): what a perfect server could reach.
Then the trained demo run (digits, 8 px: HTTP dominates) for a line of its own.

    python scripts/bench_serve.py [--seconds 6] [--ray] [--soak 60] [--no-demo] [--fuse off]

Last line: goodput_elastic=... goodput_final=... goodput_ratio=... ceiling=...
p99_ms_half_load_elastic=... p99_ms_half_load_final=... fill_last_segment=... lost=N errors=N
"""

import argparse
import asyncio
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from elastic_keras.server.main import FUSE  # noqa: E402

HOST = "127.0.0.1"
RATES = (0.3, 0.5, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0)  # x the final server's saturation


class Client:
    """A lean HTTP/1.1 client of the infer route: persistent loopback connections, binary
    bodies, one request per connection at a time (so that the load generator's own CPU,
    on the same two cores, stays small next to the server's)."""

    def __init__(self, port, name, shape, connections=200):
        self.port, self.free, self.resent = port, [], 0
        self.slots = asyncio.Semaphore(connections)  # open sockets, at most
        head = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8",
                                       "shape": [1, *shape], "parameters": {
                                           "binary_data_size": int(np.prod(shape))}}],
                           "outputs": [{"name": "exit", "parameters": {"binary_data": True}}]
                           }).encode()
        self.head, self.path = head, f"/v2/models/{name}/infer"

    def body(self, image):
        data = self.head + image.tobytes()
        return (f"POST {self.path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/"
                f"octet-stream\r\nInference-Header-Content-Length: {len(self.head)}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n").encode() + data

    async def send(self, request, start=None):
        """(status, seconds since `start` (its scheduled arrival: waiting for a free
        connection counts), answered at) of one request; status 0: no answer. Kept-alive
        connections that the server has closed meanwhile (uvicorn closes one after 5 s idle)
        are dropped, and a request that fails on a reused one is sent again once on a new
        connection, as HTTP clients do (counted in `self.resent`)."""
        start = time.perf_counter() if start is None else start
        async with self.slots:
            while self.free and self.free[-1][0].at_eof():  # closed by the server
                self.free.pop()[1].close()
            reused = bool(self.free)
            for fresh in ((False, True) if reused else (True,)):
                try:
                    conn = await asyncio.open_connection(HOST, self.port) if fresh \
                        else self.free.pop()
                except OSError:
                    break
                status = await self._exchange(conn, request)
                if status is not None:
                    end = time.perf_counter()
                    return status, end - start, end
                self.resent += not fresh
        return 0, time.perf_counter() - start, time.perf_counter()

    async def _exchange(self, conn, request):
        """The status of one request on `conn` (kept for the next), or None if it failed."""
        reader, writer = conn
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError, AttributeError):
            writer.close()
            return None
        self.free.append(conn)
        return status

    def close(self):
        for _, writer in self.free:
            writer.close()


async def _stream(client, pool, rate, seconds, seed):
    """One open-loop Poisson stream: arrivals at `rate` per second for `seconds` (at most
    rate x seconds requests), then up to 30 s for the stragglers. Returns the results."""
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * seconds))
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    bodies = [client.body(pool[i]) for i in rng.integers(0, len(pool), n)]
    tasks, start = [], time.perf_counter()
    for t, body in zip(arrivals, bodies):
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(client.send(body, start + t)))
    done, pending = await asyncio.wait(tasks, timeout=30)
    for t in pending:
        t.cancel()
    client.close()
    results = [t.result() for t in done]
    span = max([arrivals[-1]] + [end - start for _, _, end in results])  # to the last answer
    return results, len(pending), span


def quiet(fn):
    """`fn()` with this process's garbage collector paused (collected after): with Keras and
    TensorFlow imported here, one full collection stalls the load generator for hundreds of
    ms, which the open loop would count against the server (FIDELITY.md S8)."""
    gc.collect()
    gc.disable()
    try:
        return fn()
    finally:
        gc.enable()
        gc.collect()


def _metrics(port):
    """{segment: {"sum", "count"}} of the batch fill histogram in /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=30).read().decode()
    fill = {}
    for kind, seg, v in re.findall(r'elastic_batch_fill_(sum|count)\{segment="(\d+)"\} (\S+)',
                                   text):
        fill.setdefault(int(seg), {})[kind] = float(v)
    return fill


def goodput(row, slo):
    """Requests per second answered within `slo` ms, over the span to the last answer."""
    return float((row["latencies"] <= slo).sum() / row["span"])


def measure(port, name, shape, pool, rates, seconds, slo):
    """Per rate: offered, throughput, goodput, latency percentiles, batch fill, errors."""
    rows = []
    for i, rate in enumerate(rates):
        before = _metrics(port)
        client = Client(port, name, shape)
        results, lost, span = quiet(lambda: asyncio.run(_stream(client, pool, rate, seconds,
                                                                 i)))
        after = _metrics(port)
        ok = np.array([s for s, _, _ in results]) == 200
        lat = np.array([t for _, t, _ in results])[ok] * 1000
        fill = {k: (after[k]["sum"] - before.get(k, {}).get("sum", 0)) / max(
            1, after[k]["count"] - before.get(k, {}).get("count", 0)) for k in sorted(after)}
        row = {"rate": rate, "sent": len(results) + lost, "answered": int(ok.sum()),
               "refused": sum(s == 503 for s, _, _ in results),
               "errors": sum(s not in (0, 200, 503) for s, _, _ in results),
               "lost": lost + sum(s == 0 for s, _, _ in results),  # unanswered, or cut off
               "resent": client.resent,
               "throughput": ok.sum() / span, "latencies": lat, "span": span,
               **{f"p{q}": float(np.percentile(lat, q)) if len(lat) else float("nan")
                  for q in (50, 95, 99)}, "fill": fill}
        row["goodput"] = goodput(row, slo)
        rows.append(row)
        print(f"  rate {rate:7.1f}/s: sent {row['sent']:5d}, {row['throughput']:7.1f}/s answered,"
              f" goodput {row['goodput']:7.1f}/s, p50/p95/p99 {row['p50']:.1f}/{row['p95']:.1f}"
              f"/{row['p99']:.1f} ms, 503 {row['refused']}, errors {row['errors']}, lost "
              f"{row['lost']},"
              f" fill " + " ".join(f"{k}:{v:.2f}" for k, v in fill.items()), flush=True)
    return rows


def start_server(source, port, *extra, ray=False, layout="cascade"):
    cmd = [sys.executable, "-m", "elastic_keras", "serve", source, "--port", str(port),
           *extra, *(["--ray", "--replicas", "2", "--ray-layout", layout] if ray else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import urllib.request

    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server failed: {proc.stdout.read()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://{HOST}:{port}/v2/health/ready", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
    return proc.returncode


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def compute_only(exported, pool, threshold, rounds=7):
    """(cascade's speed-up over the final exit on batches of 32 at `threshold`, the final
    exit's p50 seconds at batch 1): the ceiling and the SLO's base."""
    from bench_exit_latency import measure_pairs

    from elastic_keras.inference.latency import p50_p95
    from elastic_keras.inference.segment_driver import SegmentCascade

    cascade = SegmentCascade(exported.folder)
    final = exported.predictor(exported.output_names[-1])
    batches = [pool[i:i + 32] for i in range(0, len(pool), 32)]
    med = measure_pairs({"early": (lambda: [final(b) for b in batches],
                                   lambda: [cascade(b, threshold) for b in batches])}, rounds)
    one = p50_p95(lambda: final(pool[:1]), 20)[0] / 1000
    return med["early"][2], one, med["early"][1] / len(pool)


def saturation(port, name, shape, pool, seconds=3.0, inflight=64):
    """Requests per second the server answers with `inflight` requests always waiting
    (closed loop): where the rates of the open-loop streams are set."""
    async def run():
        client, count = Client(port, name, shape), [0]
        stop = time.perf_counter() + seconds

        async def worker(i):
            while time.perf_counter() < stop:
                status, _, _ = await client.send(client.body(pool[(i + count[0]) % len(pool)]))
                count[0] += status == 200
        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(inflight)))
        client.close()
        return count[0] / (time.perf_counter() - start)
    return quiet(lambda: asyncio.run(run()))


def light_p50(port, name, shape, pool, n=200):
    """p50 ms of one-image requests sent one at a time (batch 1, no load)."""
    async def run():
        client = Client(port, name, shape)
        times = []
        for i in range(n):
            status, t, _ = await client.send(client.body(pool[i % len(pool)]))
            times.append(t)
            await asyncio.sleep(0.002)
        return times
    return 1000 * float(np.median(quiet(lambda: asyncio.run(run()))[n // 5:]))


def bench(source, name, pool, threshold, args, label, soak_seconds=0.0):
    """Both servers over the same rising rates, the final exit alone first (its p50 at batch
    1 sets the SLO); returns the summary of the line."""
    from elastic_keras.inference.runtimes import Exported

    exported = Exported(source)
    ceiling, one, per_image = compute_only(exported, pool, threshold)
    shape = exported.manifest["input"]["shape"][1:]
    print(f"{label}: threshold {threshold:.6f}; compute only: cascade {ceiling:.3f}x the final "
          f"exit at batch 32 (ceiling); final exit's predictor p50 at batch 1 {one * 1000:.2f} "
          f"ms", flush=True)
    out, slo, rates = {}, None, None
    for kind, extra in (("final", ["--final-only"]),
                        ("elastic", ["--threshold", str(threshold), "--fuse", args.fuse])):
        port = args.port + (kind == "final")
        proc = start_server(source, port, "--max-wait-ms", str(args.max_wait_ms), *extra,
                            ray=args.ray, layout=args.ray_layout)
        if slo is None:  # the final exit's p50 at batch 1, served (FIDELITY.md S8)
            p50 = light_p50(port, name, shape, pool)
            slo, top = 5 * p50, saturation(port, name, shape, pool)
            rates = [r * top for r in RATES]
            print(f" SLO = 5 x {p50:.2f} ms (the final exit alone, one image at a time, "
                  f"through the server) = {slo:.1f} ms; it answers {top:.0f} requests/s with "
                  "64 always waiting (the rates below are fractions of that)", flush=True)
        print(f" {kind} server ({'Ray Serve, 2 replicas' if args.ray else 'one process'}):",
              flush=True)
        out[kind] = measure(port, name, shape, pool, rates, args.seconds, slo)
        if kind == "elastic" and soak_seconds:
            out["soak"] = soak(proc, port, name, shape, pool, out[kind], soak_seconds, slo)
        out[f"{kind}_rc"] = stop_server(proc)
    strict = 5 * one * 1000  # the same, without HTTP: compute only
    print(f" at the compute-only SLO (5 x {one * 1000:.2f} ms = {strict:.1f} ms): goodput "
          f"elastic {max(goodput(r, strict) for r in out['elastic']):.1f}/s, final "
          f"{max(goodput(r, strict) for r in out['final']):.1f}/s", flush=True)
    return summarize(out, ceiling, rates, top)


def soak(proc, port, name, shape, pool, rows, seconds, slo):
    """80% of the elastic goodput held for `seconds`: RSS growth and lost requests."""
    rate = 0.8 * max(r["goodput"] for r in rows)
    before = rss_mb(proc.pid)
    got = measure(port, name, shape, pool, [rate], seconds, slo)[0]
    after = rss_mb(proc.pid)
    print(f" soak: {rate:.0f}/s for {seconds} s: RSS {before:.0f} -> {after:.0f} MB "
          f"({100 * (after / before - 1):+.1f}%), lost {got['lost']} (sent again on a new "
          f"connection: {got['resent']})", flush=True)
    return {"rss_growth": after / before - 1, "lost": got["lost"]}


def summarize(out, ceiling, rates, final_cap):
    def best(rows):
        return max(r["goodput"] for r in rows)
    half = int(np.argmin([abs(r - 0.5 * final_cap) for r in rates]))
    top = max(range(len(rates)), key=lambda i: out["elastic"][i]["goodput"])
    last = max(out["elastic"][top]["fill"]) if out["elastic"][top]["fill"] else None
    unsaturated = [r for kind in ("elastic", "final") for r in out[kind]
                   if r["throughput"] >= 0.95 * r["rate"]]
    lost = sum(r["lost"] for kind in ("elastic", "final") for r in out[kind])
    s = {"goodput_elastic": best(out["elastic"]), "goodput_final": best(out["final"]),
         "ceiling": ceiling, "p99_ms_half_load_elastic": out["elastic"][half]["p99"],
         "p99_ms_half_load_final": out["final"][half]["p99"],
         "fill_last_segment": out["elastic"][top]["fill"].get(last, float("nan")),
         "lost": lost, "errors": sum(r["errors"] for r in unsaturated)}
    s["goodput_ratio"] = s["goodput_elastic"] / s["goodput_final"]
    s["soak"] = out.get("soak")
    return s


def line(s):
    return (f"goodput_elastic={s['goodput_elastic']:.1f} goodput_final={s['goodput_final']:.1f} "
            f"goodput_ratio={s['goodput_ratio']:.3f} ceiling={s['ceiling']:.3f} "
            f"p99_ms_half_load_elastic={s['p99_ms_half_load_elastic']:.1f} "
            f"p99_ms_half_load_final={s['p99_ms_half_load_final']:.1f} "
            f"fill_last_segment={s['fill_last_segment']:.2f} lost={s['lost']} "
            f"errors={s['errors']}")


def mobilenet(folder, size):
    """The elastic MobileNet export, its name, a pool of images and the half threshold."""
    from bench_export import half_threshold

    from elastic_keras import build_model
    from elastic_keras.inference.export import export_model
    from elastic_keras.inference.latency import probe_images
    from elastic_keras.inference.runtimes import Exported

    model = build_model("mobilenet", 10, input_size=size, weights=None,
                        source_shape=(32, 32, 3))
    out = os.path.join(folder, "elastic-onnx")
    export_model(model, "onnx", out, log=print)
    exported = Exported(out)
    pool = probe_images(exported.manifest["input"], 256, seed=1)
    threshold, middle = half_threshold(exported, pool)
    taken = exported.cascade(pool, threshold)["exits"]
    print(f"{np.mean(taken <= middle):.2f} of the pool leave at or before exit {middle}")
    return out, exported.manifest["model"], pool, threshold


def demo(folder):
    """The trained demo run's ONNX export (trained first when missing), held-out images and
    its certified threshold."""
    from bench_guarantee import DEMO_RUN, train_demo

    from elastic_keras.data.datasets import load_data
    from elastic_keras.runs.found import open_run
    from elastic_keras.runs.serve import open_export

    run_dir = DEMO_RUN if os.path.isfile(os.path.join(DEMO_RUN, "results.json")) else \
        train_demo(folder)
    run = open_run(run_dir)
    exported = open_export(run_dir, "onnx", log=print)
    pool = load_data(run.config["data"]).x_test
    thr = exported.manifest.get("threshold")
    return exported.folder, exported.manifest["source"]["name"], pool, 0.9 if thr is None \
        else thr


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per rate")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="both servers' batching window (0: a batch forms while the worker is "
                        "busy; measured best for goodput here)")
    p.add_argument("--ray-layout", choices=("cascade", "segments"), default="cascade")
    p.add_argument("--port", type=int, default=8700)
    p.add_argument("--ray", action="store_true", help="both servers on Ray Serve")
    p.add_argument("--soak", type=float, default=0, help="seconds at 80%% of the elastic goodput")
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--fuse", choices=FUSE, default="auto",
                   help="the elastic server's fused tails (serve --fuse; FIDELITY.md S9)")
    args = p.parse_args(argv)
    from elastic_keras.backend.environment import device, import_keras_quietly
    from elastic_keras.inference.segment_driver import use_threads
    from elastic_keras.server.assemble import runtime_threads

    import_keras_quietly()
    threads = runtime_threads()  # as the servers (serve --threads default)
    use_threads(threads)
    print(f"{device()}; {'Ray Serve' if args.ray else 'one server process'}; loopback; "
          f"runtime threads {threads}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        found = []
        if not args.no_demo:
            found.append(("demo run (digits, 8 px)", bench(*demo(folder), args, "demo run")))
        found.append(("MobileNet 128 px", bench(*mobilenet(folder, args.size), args,
                                                "MobileNet", args.soak)))  # its soak alone
    print(f"total {time.perf_counter() - t0:.0f} s; targets (MobileNet, one process): "
          "goodput_ratio >= 0.85 x ceiling and >= 1.3, lost = 0, errors = 0 below saturation"
          + ("; soak: RSS growth < 10%, lost = 0" if args.soak else ""))
    for label, s in found:
        if s["soak"]:
            print(f"soak: rss_growth={s['soak']['rss_growth']:.3f} lost={s['soak']['lost']}")
        print(("" if label.startswith("MobileNet") else f"{label}: ") + line(s))


if __name__ == "__main__":
    main()
