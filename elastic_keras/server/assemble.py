"""One server assembled from the `serve` command's arguments: the served export, the engine,
its online control, the metrics and the ASGI app (main.py runs it on uvicorn, ray_serve.py in
each Ray Serve replica)."""

from __future__ import annotations

import os

from elastic_keras.errors import ElasticKerasError


def build(args, log=print):
    """(served, engine, metrics, app) of the command's arguments; the engine running."""
    from elastic_keras.inference.runtimes import is_export
    from elastic_keras.inference.segment_driver import use_threads
    from elastic_keras.server.app import build_app
    from elastic_keras.server.engine import Engine
    from elastic_keras.server.metrics import Metrics
    from elastic_keras.server.served import open_served

    check_args(args)
    use_threads(runtime_threads(args.threads))
    if not is_export(args.source):  # a run: exported on first use
        from elastic_keras.backend.environment import import_keras_quietly

        import_keras_quietly()
    served = open_served(args.source, format_of(args), args.name, args.threshold,
                         args.final_only, args.max_batch, log=log, fuse=args.fuse)
    log(served.fusion_words)
    control = control_of(served, args, log)
    metrics = Metrics(served.exit_names, len(served.segments), args.max_batch)
    engine = Engine(served.segments, served.classes, served.criterion, served.threshold,
                    args.max_batch, args.max_wait_ms, args.max_queue, served.costs, control,
                    args.seed, metrics, served.fusion)
    metrics.watch(engine, served)
    app = build_app(served, engine, metrics, int(args.max_body_mb * 2**20))
    return served, engine, metrics, app


def runtime_threads(requested: int | None = None) -> int:
    """The runtime's compute threads: `requested`, else every core but one, which serves
    HTTP (FIDELITY.md S2)."""
    return requested or max(1, (os.cpu_count() or 1) - 1)


def check_args(args) -> None:
    """Every number of the command's arguments in range, or one line and exit 2."""
    from elastic_keras.checks import check_int, check_number

    if check_int("--port", args.port, 0) > 65535:
        raise ElasticKerasError(f"--port must be at most 65535; received {args.port}")
    check_int("--max-batch", args.max_batch, 1)
    check_int("--max-queue", args.max_queue, 1)
    check_int("--replicas", args.replicas, 1)
    check_int("--threads", args.threads, 1, optional=True)
    check_number("--max-wait-ms", args.max_wait_ms, 0, None)
    check_number("--max-body-mb", args.max_body_mb, 0, None, low_open=True)
    check_number("--audit", args.audit, 0, 1, high_open=False)


def format_of(args):
    """The runtime to serve: --format, else the export's own (onnx for a run)."""
    from elastic_keras.inference.runtimes import is_export

    return args.format or (None if is_export(args.source) else "onnx")


def control_of(served, args, log=print):
    """Online control over the certified threshold (FIDELITY.md W1, S5), or None, said why."""
    from elastic_keras.inference.online import from_calibration

    why = ("--audit 0" if not args.audit else "--final-only" if args.final_only else
           "--threshold replaces the certified threshold" if args.threshold is not None else
           "the export has no certificate (run calibrate on the run, then export again)"
           if served.calibration is None else None)
    if why:
        log(f"online control: off ({why})")
        return None
    control = from_calibration(served.calibration, audit_rate=args.audit)
    log(f"online control: audit {args.audit:g} of early answers; alarm when the disagreement "
        f"risk's bound passes epsilon {control.epsilon:g} (false alarms <= delta "
        f"{control.delta:g}); policy {control.policy}")
    return control
