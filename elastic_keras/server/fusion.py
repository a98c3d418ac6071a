"""Fused tails (ONNX): after segment k, the rest of the cascade in one runtime call, taken for
small batches when the exits seen so far say that it costs less (FIDELITY.md S9).

A small batch pays a runtime call, a thread handoff and the engine's routing per segment;
past segment k the tail's one call pays them once but runs every later segment on every row,
also those that would have left early. Its outputs are every later exit's probabilities and
confidence, computed by the same kernels on the same features (the segments' optimized
graphs, joined): the exit rule then picks each row's exit as the split segments would, so
the answers are the same; only the cost differs, and the plan picks the cheaper.
"""

from __future__ import annotations

import time

import numpy as np

FUSE_UP_TO = 4  # rows: at 4 the split segments' call overhead was already <2% (FIDELITY S9)
ROUTING_S = 45e-6  # the engine's own work per segment call it routes (measured: FIDELITY S9)


def merged(models, first: int):
    """One ONNX model of segments first..last (their optimized, layout-joined graphs): each
    one's `tap` read from the previous one's `features`; outputs `s{j}/probabilities` and
    `s{j}/confidence` of every segment j."""
    from onnx import compose, helper

    parts = [compose.add_prefix(m, f"s{j}/") for j, m in enumerate(models[first:], first)]
    nodes, inits, info, outputs = [], [], [], []
    for j, part in enumerate(parts, first):
        for node in part.graph.node:
            if j > first:
                node.input[:] = [f"s{j - 1}/features" if v == f"s{j}/tap" else v
                                 for v in node.input]
            nodes.append(node)
        inits += part.graph.initializer
        info += part.graph.value_info
        outputs += [o for o in part.graph.output if not o.name.endswith("/features")]
    graph = helper.make_graph(nodes, f"tail{first}", [parts[0].graph.input[0]], outputs,
                              inits, value_info=info)
    return helper.make_model(graph, opset_imports=models[first].opset_import,
                             ir_version=models[first].ir_version)


def tails(cascade) -> dict | None:
    """{k: features -> [(probabilities, confidence) of segments k..last]} for k >= 1, from a
    SegmentCascade opened with keep_models; None where tails do not apply (not ONNX, no
    `onnx` package, int8 segments whose features are requantized between segments)."""
    from elastic_keras.inference.segment_driver import optimized_session
    from elastic_keras.inference.segment_int8 import confidence, exit_probabilities

    m = cascade.manifest
    if cascade.models is None or (m.get("quantization") or {}).get("tensors"):
        return None
    temps = m.get("output_temperatures") or [None] * len(cascade.models)
    scaled = any(t not in (None, 1.0) for t in temps)  # as exit_outputs wraps the segments
    found = {}
    for k in range(1, len(cascade.models)):
        session = optimized_session(merged(cascade.models, k))
        keys = [o.name for o in session.get_outputs()]
        name = session.get_inputs()[0].name

        def run(x, session=session, keys=keys, name=name, k=k):
            got = dict(zip(keys, session.run(None, {name: x})))  # NumPy in and out (I31)
            out = []
            for j in range(k, len(temps)):
                probs, conf = got[f"s{j}/probabilities"], got.get(f"s{j}/confidence")
                if scaled:
                    probs = exit_probabilities(probs, None, temps[j])
                    conf = confidence(probs, m["criterion"])
                out.append((probs, conf))
            return out
        found[k] = run
    return found


class TailPlan:
    """Per segment k >= 1 and batch size up to FUSE_UP_TO: the tail or the split segments,
    whichever costs less in expectation. Costs are measured at start-up (median of 5 calls
    per size); the chance that a row reaching segment k reaches segment j comes from the
    exits the engine answered (halved every 4096, so that it follows the traffic). `policy`
    "always" takes the tail for every batch past the first segment (tests, bench_serve)."""

    def __init__(self, runs: dict, segments, shape, policy="auto", up_to=FUSE_UP_TO,
                 costs=None):
        self.runs, self.policy, self.up_to = runs, policy, up_to
        self.n = len(segments)
        self.counts = np.zeros(self.n)  # answers by exit (1-based exit e at e - 1)
        self.seen = 0
        # (split, tail): seconds per call [segment, rows]; given (tests) or measured now
        self.split, self.tail = costs if costs is not None else self._measure(segments, shape)
        self._fused = np.zeros((self.n, up_to + 1), bool)
        if policy == "always":
            self._fused[1:] = True

    def _measure(self, segments, shape):
        """Seconds per call of every segment and every tail at 1..up_to rows."""
        from elastic_keras.server.jobs import passed_on

        split = np.zeros((self.n, self.up_to + 1))
        tail = np.zeros((self.n, self.up_to + 1))
        images = np.random.default_rng(2).integers(0, 256, (self.up_to, *shape), np.uint8)
        for b in range(1, self.up_to + 1):
            x = images[:b]
            for k, segment in enumerate(segments):
                if k in self.runs:
                    tail[k, b] = _median(lambda: self.runs[k](x))
                split[k, b] = _median(lambda: segment(x)) + ROUTING_S
                x = passed_on(segment(x)[2])
                if x is None:
                    break
        return split, tail

    def words(self) -> str:
        if self.policy == "always":
            return "fused tails: always past segment 1 (--fuse always)"
        b = 1
        saving = [self.split[k:, b].sum() - self.tail[k, b] for k in range(1, self.n)]
        return (f"fused tails: segments k..{self.n} in one call for batches of up to "
                f"{self.up_to} rows when the exits seen make it cheaper (at 1 row, when "
                f"every row goes on to the end, it saves {1000 * max(saving):.2f} ms at best)")

    def observe(self, exit_number: int, count: int) -> None:
        """Rows answered at an exit by the exit rule (the engine's worker, under its lock)."""
        self.counts[exit_number - 1] += count
        self.seen += count
        if self.seen >= 64 and self.policy == "auto":
            self.seen = 0
            self._decide()
        if self.counts.sum() > 4096:
            self.counts /= 2

    def _decide(self) -> None:
        reach = np.cumsum(self.counts[::-1])[::-1]  # rows that reached segment j
        for k in range(1, self.n):
            if reach[k] < 1:
                self._fused[k] = False
                continue
            p = reach[k:] / reach[k]
            self._fused[k, 1:] = self.tail[k, 1:] < (p[:, None] * self.split[k:, 1:]).sum(0)

    def use(self, k: int, rows: int) -> bool:
        return k in self.runs and rows <= self.up_to and bool(self._fused[k, rows])


def _median(fn, repeats=5) -> float:
    fn()  # a runtime's first call at a shape plans its memory
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))
