"""What a server serves: an export's segments, its exits and their costs, its threshold."""

from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from elastic_keras.errors import ElasticKerasError
from elastic_keras.server.jobs import passed_on


@dataclass
class Served:
    """An export opened for serving: its segments (each features -> probabilities,
    confidence, features thunk), exits, MACs per path, threshold and certificate."""

    name: str
    format: str
    folder: str
    segments: list
    shape: tuple
    classes: int
    exit_names: list
    path_macs: list
    criterion: str
    threshold: float
    threshold_source: str
    certificate: str | None = None
    calibration: dict | None = None
    class_names: list | None = None
    costs: list = field(default_factory=list)
    cost_source: str = ""
    fusion: object = None  # a fusion.TailPlan, or None
    fusion_words: str = "fused tails: off"

    @property
    def exits(self) -> int:
        return len(self.exit_names)


def open_served(source, fmt=None, name=None, threshold=None, final_only=False,
                max_batch=32, log=print, fuse="auto") -> Served:
    """SOURCE (an export folder, or a run exported on first use as `predict` does) opened in
    its runtime. `threshold`: instead of the export's certified (else budget) one;
    `final_only`: the final exit's predictor alone, as one segment (the plain network);
    `fuse`: one of main.FUSE, the fused tails of an ONNX export (FIDELITY.md S9)."""
    from elastic_keras.inference.segment_driver import SegmentCascade
    from elastic_keras.runs.serve import open_export

    exported = open_export(source, fmt, log=log)
    m = exported.manifest
    if "segments" not in m["artifacts"]:
        raise ElasticKerasError(f"{exported.folder} has no segments (an export older than the "
                                "server): export the source again")
    cascade = None if final_only else SegmentCascade(exported.folder,
                                                      keep_models=fuse != "off")
    segments = (cascade.segments if cascade is not None
                else [_predictor(exported.predictor(exported.output_names[-1]))])
    names = exported.output_names[-1:] if final_only else exported.output_names
    macs = [e["path_macs"] for e in m["exits"]]
    chosen, said = _threshold(m, threshold)
    served = Served(name or (m.get("source") or {}).get("name") or m["model"], m["format"],
                    exported.folder, segments, tuple(m["input"]["shape"][1:]), m["classes"],
                    names, macs[-1:] if final_only else macs, m["criterion"], chosen, said,
                    (m.get("certificate") or {}).get("text"),
                    _calibration(m) if not final_only else None, m.get("class_names"))
    warm_up(segments, served.shape, max_batch)
    if cascade is not None and fuse != "off":
        _fuse(served, cascade, fuse, max_batch)
    served.costs, served.cost_source = segment_costs(exported.folder, segments,
                                                     served.shape, final_only, max_batch)
    return served


def warm_up(segments, shape, max_batch) -> None:
    """Every segment once at every batch size up to max_batch: a runtime's first call at a
    new shape is several times slower (onnxruntime plans its memory per shape), and the
    first requests must not pay for it (FIDELITY.md S3)."""
    images = np.random.default_rng(1).integers(0, 256, (max_batch, *shape), dtype=np.uint8)
    for b in range(1, max_batch + 1):
        x = images[:b]
        for segment in segments:
            x = passed_on(segment(x)[2])
            if x is None:
                break


def _fuse(served, cascade, policy, max_batch) -> None:
    """The fused tails and their plan (FIDELITY.md S9), where the export's runtime has them."""
    from elastic_keras.server.fusion import FUSE_UP_TO, TailPlan, tails

    runs = tails(cascade)
    cascade.models = None  # the tails hold what they need
    if not runs:
        served.fusion_words = (f"fused tails: none ({served.format} export: only float ONNX "
                               "segments are joined)")
        return
    served.fusion = TailPlan(runs, served.segments, served.shape, policy,
                             min(FUSE_UP_TO, max_batch))
    served.fusion_words = served.fusion.words()


def _predictor(run):
    """The final exit's predictor as the one segment of the plain network."""
    def segment(x):
        return run(x)["probabilities"], None, None
    return segment


def _threshold(manifest, threshold) -> tuple[float, str]:
    """The threshold in force and what vouches for it: --threshold, else the export's own
    (manifest.threshold_in_force: its certificate, the source run's, or a budget pick)."""
    from elastic_keras.inference.manifest import threshold_in_force

    if threshold is not None:
        return float(threshold), "--threshold"
    found = threshold_in_force(manifest)
    if found["threshold"] is None:
        return (2.0 if manifest["criterion"] == "max_prob" else -1.0), found["says"]
    return float(found["threshold"]), found["says"]


def _calibration(manifest) -> dict | None:
    """calibrate's threshold and certificate as the export records them (online control)."""
    cert = manifest.get("certificate")
    if not cert:
        return None
    return {"threshold": (manifest.get("thresholds") or {}).get("calibration"),
            "certificate": cert}


def segment_costs(folder, segments, shape, final_only=False, batch=32) -> tuple[list, str]:
    """Each segment's p95 seconds per batch: from the export's latency.csv (path p95
    differences at the batch nearest `batch`, scaled to it), else measured now on generated
    images (FIDELITY.md S3)."""
    path = os.path.join(folder, "latency.csv")
    if os.path.isfile(path) and not final_only:
        with open(path, encoding="utf-8", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["kind"] == "path" and r["p95_ms"]]
        sizes = sorted({int(r["batch"]) for r in rows}, key=lambda b: abs(b - batch))
        if sizes:
            at = sorted((int(r["index"]), float(r["p95_ms"])) for r in rows
                        if int(r["batch"]) == sizes[0])
            if len(at) == len(segments):
                p95 = [ms for _, ms in at]
                costs = [max(0.0, b - a) for a, b in zip([0.0] + p95, p95)]
                return ([c / 1000 * batch / sizes[0] for c in costs],
                        f"latency.csv (batch {sizes[0]})")
    return _measure(segments, shape, batch), "measured at start-up"


def _measure(segments, shape, batch, repeats=5) -> list[float]:
    """p95 (the slowest of `repeats` calls after one warm-up) of each segment on a batch."""
    x = np.random.default_rng(0).integers(0, 256, (batch, *shape), dtype=np.uint8)
    costs = []
    for segment in segments:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            _, _, features = segment(x)
            times.append(time.perf_counter() - start)
        costs.append(max(times[1:]))
        x = passed_on(features)
        if x is None:
            break
    return costs


def threshold_words(value: float) -> str:
    return "none (final exit only)" if not math.isfinite(value) or value > 1 else f"{value:.6g}"
