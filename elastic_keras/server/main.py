"""The `serve` command: an export (or a run, exported on first use) behind the HTTP server."""

from __future__ import annotations

import gc
import signal

from elastic_keras.errors import ElasticKerasError
from elastic_keras.server.assemble import build

SWITCH_INTERVAL = 0.0005  # seconds (Python's default: 0.005)
HELP = ("serve an export over HTTP (Open Inference Protocol): batches across requests per "
        "segment, deadlines, online control")
FORMATS = ("litert", "onnx", "saved_model")
FUSE = ("auto", "always", "off")  # fused tails (fusion.py, FIDELITY.md S9)
# The `serve` command's arguments, as data: cli.py adds them, `command` runs them.
ARGUMENTS = (
    (("source",), {"help": "an export folder, or a run directory (exported on first use)"}),
    (("--name",), {"default": None, "help": "the model's name in URLs (default: the run's)"}),
    # Loopback by default: no authentication (FIDELITY.md S7).
    (("--host",), {"default": "127.0.0.1", "help": "address to bind (default: loopback "
                   "only; the server has no authentication)"}),
    (("--port",), {"type": int, "default": 8000}),
    (("--format",), {"choices": FORMATS, "default": None,
                     "help": "runtime (default: the export's own; onnx for a run)"}),
    (("--max-batch",), {"type": int, "default": 32, "help": "rows per segment call"}),
    (("--max-wait-ms",), {"type": float, "default": 5.0,
                          "help": "how long a queue waits to fill a batch (default 5)"}),
    (("--threshold",), {"type": float, "default": None, "help": "instead of the export's "
                        "certified (else budget) threshold; turns online control off"}),
    (("--max-queue",), {"type": int, "default": 1024, "help": "images waiting at most; "
                        "more are refused at once with 503 (default 1024)"}),
    (("--max-body-mb",), {"type": float, "default": 32.0, "help": "request body limit"}),
    (("--audit",), {"type": float, "default": 0.05, "help": "share of early answers sent "
                    "on to the final exit for online control (default 0.05; 0: off)"}),
    (("--final-only",), {"action": "store_true", "help": "serve the final exit's predictor "
                         "alone (the plain network), with the same batching"}),
    (("--ray",), {"action": "store_true", "help": "serve on Ray Serve (RAY_ADDRESS or a "
                  "local Ray) behind the same protocol"}),
    (("--replicas",), {"type": int, "default": 2, "help": "--ray: replicas (default 2)"}),
    (("--ray-layout",), {"choices": ("cascade", "segments"), "default": "cascade",
                         "help": "--ray: whole-cascade replicas (default) or a deployment "
                                 "per segment (FIDELITY.md S6)"}),
    (("--threads",), {"type": int, "default": None, "help": "the runtime's compute threads "
                      "(default: every core but one, which serves HTTP)"}),
    (("--seed",), {"type": int, "default": 0, "help": "seed of the audit coins"}),
    (("--fuse",), {"choices": FUSE, "default": "auto",
                   "help": "ONNX: past the first segment, run a small batch's remaining "
                           "segments in one call when the exits seen say it costs less "
                           "(auto), always, or never; the answers are the same "
                           "(FIDELITY.md S9)"}),
)


def command(args) -> int:
    """Serve until SIGTERM or Ctrl-C: then stop accepting, answer every request in flight,
    exit 0."""
    if args.ray:
        from elastic_keras.server.ray_serve import serve_on_ray

        return serve_on_ray(args)
    import sys

    import uvicorn

    from elastic_keras.server.served import threshold_words

    # The engine thread takes the GIL back after every segment the runtime ran; a busy
    # event loop would otherwise keep it up to 5 ms each time (FIDELITY.md S2).
    sys.setswitchinterval(SWITCH_INTERVAL)
    served, engine, metrics, app = build(args)
    gc.collect()  # what start-up made (modules, runtimes, warm-up) is never scanned again:
    gc.freeze()  # a full collection then pauses serving for what serving made alone
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=60))
    print(f"serving {served.name} ({served.format} export in {served.folder}) on "
          f"http://{args.host}:{args.port}/v2/models/{served.name}: {served.exits} exits, "
          f"threshold {threshold_words(engine.threshold)} ({served.threshold_source}); "
          f"segment costs {served.cost_source}", flush=True)
    if served.certificate:
        print(f"certificate: {served.certificate}", flush=True)
    stop = {s: signal.signal(s, lambda *_: setattr(server, "should_exit", True))
            for s in (signal.SIGTERM, signal.SIGINT)}  # uvicorn's own while it runs
    try:
        server.run()
    finally:
        for s, handler in stop.items():
            signal.signal(s, handler)
        engine.close()
    if not server.started:
        raise ElasticKerasError(f"could not serve on {args.host}:{args.port} (in use?)")
    print(f"stopped: every request in flight answered; {int(_answered(metrics))} answered "
          "in all", flush=True)
    return 0


def _answered(metrics) -> float:
    return sum(s.value for m in metrics.requests.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("code") == "200")
