"""`serve --ray`: the same server on Ray Serve, as whole-cascade replicas or a deployment per
segment (FIDELITY.md S6); local Ray, or the cluster at RAY_ADDRESS."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading

import numpy as np

from elastic_keras.errors import ElasticKerasError
from elastic_keras.server.jobs import Job, passed_on

APP = "elastic"


class _Stop(Exception):
    """SIGTERM or Ctrl-C while Ray Serve deploys: shut down as after serving."""


class CascadeReplica:
    """One whole-cascade server (its own engine, queues per segment, online control) per
    replica; Ray Serve's proxy spreads the requests over the replicas."""

    def __init__(self, options: dict):
        from elastic_keras.server.assemble import build

        _, self.engine, _, self.asgi = build(argparse.Namespace(**options), log=lambda *_: None)

    def __serve_build_asgi_app__(self):
        return self.asgi


class SegmentReplica:
    """One segment of the cascade: Ray Serve batches its calls across requests and ingress
    replicas (serve.batch), as the engine's queues do in one process."""

    def __init__(self, folder: str, k: int):
        from elastic_keras.inference.segment_driver import SegmentCascade

        self.segment = SegmentCascade(folder).segments[k]

    async def __call__(self, rows):
        return await self.run(rows)

    def _batch(self, rows: list):
        probs, conf, features = self.segment(np.concatenate(rows))
        f = passed_on(features)
        bounds = np.cumsum([0] + [len(r) for r in rows])
        return [(probs[a:b], conf[a:b], None if f is None else f[a:b])
                for a, b in zip(bounds, bounds[1:])]


class SegmentsBackend:
    """The engine's face (submit, cancel, threshold) over segment deployments: each request's
    images go through the segments in turn; who leaves is answered (exit rule, max_exit)."""

    def __init__(self, served, handles):
        self.served, self.handles, self.control = served, handles, None
        self.threshold, self.pending, self._tasks = served.threshold, 0, set()

    def depths(self):
        return [0] * len(self.handles)

    def locked(self, fn, *args):
        return fn(*args)

    def cancel(self, job):
        job.cancelled = True

    def submit(self, images, threshold=None, deadline_ms=None, max_exit=None,
               request_id=None) -> Job:
        from elastic_keras.server.protocol import ProtocolError

        if deadline_ms is not None:
            raise ProtocolError(400, "deadline_ms needs the whole-cascade layout "
                                     "(--ray-layout cascade)")
        job = Job(len(images), self.served.classes, threshold, None, max_exit, request_id,
                  len(self.handles))
        task = asyncio.get_running_loop().create_task(self._run(job, images))
        self._tasks.add(task)  # kept until done (the loop holds tasks weakly)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job, images):
        from elastic_keras.server.routing import leaves

        rows, x = np.arange(len(images)), images
        try:
            for k, handle in enumerate(self.handles):
                probs, conf, feats = await handle.remote(x)
                last = k == len(self.handles) - 1
                go = np.zeros(len(rows), bool) if last or (
                    job.max_exit is not None and k + 1 >= job.max_exit) else ~leaves(
                    conf, self.served.criterion,
                    self.threshold if job.threshold is None else job.threshold)
                job.answer(rows[~go], probs[~go], k + 1)
                if not go.any() or job.cancelled:
                    break
                rows, x = rows[go], feats[go]
            job.finish()
        except Exception as e:  # a replica failed: the request gets it
            job.future.set_exception(e)


def _segments_app(options: dict):
    """Ingress replicas over the segment deployments (the per-segment layout)."""
    from ray import serve

    class Ingress:
        def __init__(self, options: dict, *handles):
            from elastic_keras.server.app import build_app
            from elastic_keras.server.metrics import Metrics
            from elastic_keras.server.served import open_served

            served = open_served(options["source"], None, options["name"],
                                 options["threshold"], log=lambda *_: None, fuse="off")
            metrics = Metrics(served.exit_names, len(served.segments), options["max_batch"])
            self.backend = SegmentsBackend(served, list(handles))
            self.asgi = build_app(served, self.backend, metrics,
                                 int(options["max_body_mb"] * 2**20))

        def __serve_build_asgi_app__(self):
            return self.asgi

    n = len(_segment_paths(options["source"]))
    wait = options["max_wait_ms"] / 1000
    free = {"num_cpus": 0}
    segs = [serve.deployment(name=f"segment_{k + 1}", num_replicas=options["replicas"],
                             ray_actor_options=free)(
        _batched(options["max_batch"], wait)).bind(options["source"], k) for k in range(n)]
    return serve.deployment(name="ingress", num_replicas=options["replicas"],
                            ray_actor_options=free)(serve.ingress()(Ingress)).bind(options, *segs)


def _batched(max_batch, wait):
    from ray import serve

    class Batched(SegmentReplica):
        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait)
        async def run(self, rows):
            return self._batch(rows)
    return Batched


def _segment_paths(folder):
    from elastic_keras import files

    return files.read_json(os.path.join(folder, "manifest.json"))["artifacts"]["segments"]


def serve_on_ray(args) -> int:
    """Deploy on Ray Serve (bound to --host:--port), wait for SIGTERM or Ctrl-C, shut down.
    Every replica asks Ray for no CPU: they share the machine's cores as the runtimes' own
    threads do in one process (FIDELITY.md S6)."""
    import ray
    from ray import serve

    from elastic_keras.server.assemble import check_args, format_of
    from elastic_keras.runs.serve import open_export

    check_args(args)
    if args.ray_layout == "segments" and args.final_only:
        raise ElasticKerasError("--final-only serves one segment: use --ray-layout cascade")
    folder = open_export(args.source, format_of(args)).folder  # replicas load the export
    options = {**vars(args), "source": os.path.abspath(folder), "ray": False, "format": None}
    options.pop("func", None)
    stop, up = threading.Event(), threading.Event()

    def on_signal(*_):  # while deploying: leave serve.run; once serving: stop waiting
        stop.set()
        if not up.is_set():
            raise _Stop()
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(address=os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
                 log_to_driver=False, include_dashboard=False)
        for s in old:
            signal.signal(s, on_signal)
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(_application(options), name=APP, route_prefix="/")
        up.set()
        print(f"serving on Ray Serve ({args.ray_layout} layout, {args.replicas} replicas) at "
              f"http://{args.host}:{args.port}/v2/models/", flush=True)
        stop.wait()
    except _Stop:
        pass
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
    print("stopped", flush=True)
    return 0


def _application(options: dict):
    from ray import serve

    if options["ray_layout"] == "segments":
        return _segments_app(options)
    return serve.deployment(name="cascade", num_replicas=options["replicas"],
                            max_ongoing_requests=options["max_queue"],
                            ray_actor_options={"num_cpus": 0})(
        serve.ingress()(CascadeReplica)).bind(options)
