"""/metrics in Prometheus' text format (prometheus_client): what the server and its engine did."""

from __future__ import annotations

FILL_BUCKETS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The server's metrics in a registry of their own (several servers in one process keep
    theirs apart); also the engine's hooks (on_batch, on_exits, on_audits, on_verdict)."""

    def __init__(self, exit_names, segments: int, max_batch: int):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.exit_names, self.max_batch, self.engine = list(exit_names), max_batch, None
        r = self.registry
        self.requests = Counter("elastic_requests", "Requests answered, by HTTP status",
                                ["code"], registry=r)
        self.images = Counter("elastic_images", "Images answered, by the exit they took",
                              ["exit"], registry=r)
        self.forced = Counter("elastic_forced_exits", "Images that left before their "
                              "threshold was met, to meet their request's deadline", registry=r)
        self.fill = Histogram("elastic_batch_fill", "Rows of a segment's batch / --max-batch",
                              ["segment"], buckets=FILL_BUCKETS, registry=r)
        self.latency = Histogram("elastic_request_latency_seconds", "Infer requests, from "
                                 "arrival to answer", buckets=LATENCY_BUCKETS, registry=r)
        self.audits = Counter("elastic_audits", "Early-exited images sent on to the final "
                              "exit after their answer (online control)", registry=r)
        self.disagreements = Counter("elastic_audit_disagreements", "Audits whose final "
                                     "class differed from the early answer", registry=r)
        self.fused = Counter("elastic_fused_rows", "Rows a segment ran on inside a fused "
                             "tail (one call for the segments past a small batch's)",
                             ["segment"], registry=r)
        # every series shows from the start; the worker's hooks use them without a lookup
        self._fill = [self.fill.labels(str(k + 1)) for k in range(segments)]
        self._fused = [self.fused.labels(str(k + 1)) for k in range(segments)]
        for name in self.exit_names:
            self.images.labels(name)

    def watch(self, engine, served) -> None:
        """Read the engine's queues, threshold and online control at every scrape."""
        self.engine = engine
        self.registry.register(_Live(engine, served))

    # -- the engine's hooks (called on its worker thread) -----------------------------------
    def on_batch(self, segment: int, rows: int, fused: bool = False) -> None:
        self._fill[segment].observe(rows / self.max_batch)
        if fused:
            self._fused[segment].inc(rows)

    def on_exits(self, exit_number: int, count: int, forced: bool = False) -> None:
        self.images.labels(self.exit_names[exit_number - 1]).inc(count)
        if forced:
            self.forced.inc(count)

    def on_audits(self, count: int) -> None:
        self.audits.inc(count)

    def on_verdict(self, disagree: bool) -> None:
        if disagree:
            self.disagreements.inc()

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Live:
    """Values read at scrape time: queue depths, threshold in force, online control."""

    def __init__(self, engine, served):
        self.engine, self.served = engine, served

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily("elastic_queue_depth", "Rows waiting at each segment",
                                  labels=["segment"])
        for k, rows in enumerate(self.engine.depths()):
            depth.add_metric([str(k + 1)], rows)
        yield depth
        yield GaugeMetricFamily("elastic_pending_images", "Images queued or running, not yet "
                                "answered", value=self.engine.pending)
        yield GaugeMetricFamily("elastic_threshold", "The threshold in force (+Inf: every "
                                "image to the final exit)", value=_finite(self.engine.threshold))
        control = self.engine.control
        if control is None:
            return
        status = self.engine.locked(control.status)
        for key, what in (("bound", "Anytime-valid upper bound on the disagreement risk of "
                                    "the threshold in force (current window)"),
                          ("alarms", "Alarms raised by online control"),
                          ("changes", "Threshold changes made by online control"),
                          ("served", "Images counted by online control")):
            yield GaugeMetricFamily(f"elastic_control_{key}", what, value=float(status[key]))


def _finite(value: float) -> float:
    return float("inf") if value > 1 else float(value)
