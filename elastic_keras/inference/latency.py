"""Measured cost: latency of every exit's path through an exported cascade and of each predictor."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError

LATENCY_CSV = "latency.csv"
COLUMNS = ("kind", "exit", "index", "batch", "p50_ms", "p95_ms", "per_image_ms", "repeats",
           "threshold", "runtime", "device", "versions", "note")


def p50_p95(call, repeats: int) -> tuple[float, float]:
    """p50 and p95 in ms of `call` after two warm-up calls (tracing, allocation)."""
    call()
    call()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        samples.append(1e3 * (time.perf_counter() - t0))
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def probe_images(spec: dict, n: int = 64, seed: int = 0) -> np.ndarray:
    """Varied images of the artifacts' input spec (noise, flat colours, gradients), to
    find images that leave at each exit (latency paths, tests)."""
    rng = np.random.default_rng(seed)
    shape = [n, *spec["shape"][1:]]
    top = 255.0 if spec["dtype"] == "uint8" else 1.0
    x = rng.random(shape) * top * rng.random((n, 1, 1, 1))
    x[n // 3: 2 * n // 3] = rng.random((n - n // 3 - (n - 2 * n // 3), 1, 1, shape[-1])) * top
    ramp = np.linspace(0, 1, shape[1])[None, :, None, None]
    x[2 * n // 3:] = (ramp * rng.random((n - 2 * n // 3, 1, 1, shape[-1])) * top)
    return x.round().astype(spec["dtype"]) if spec["dtype"] == "uint8" else x.astype(
        spec["dtype"])


def path_thresholds(exported, probes) -> dict:
    """{exit k (1-based): (probe image index, threshold)} such that the probe image leaves
    at exit k, the threshold halfway inside its interval. Exit 1 and the final exit are
    always reached (max_prob 0 and 2; entropy inf and -1); the others where a probe allows
    (FIDELITY.md I32)."""
    from keras import ops

    from elastic_keras.inference.predictors import confidence  # the one definition (I2)

    names, criterion = exported.output_names, exported.manifest["criterion"]
    conf = np.stack([ops.convert_to_numpy(confidence(
        exported.predictor(n)(probes)["probabilities"], criterion)) for n in names[:-1]])
    sign = 1.0 if criterion == "max_prob" else -1.0  # leaving: sign * conf >= sign * t
    found = {1: (0, 0.0 if sign > 0 else math.inf), len(names): (0, 2.0 if sign > 0 else -1.0)}
    s = sign * conf
    for k in range(1, len(names) - 1):
        before = s[:k].max(axis=0)
        gap = s[k] - before
        i = int(gap.argmax())
        if gap[i] > 1e-4:  # a margin far above float32 rounding
            found[k + 1] = (i, float(sign * (before[i] + s[k, i]) / 2))
    return found


def _path_rows(exported, batch, repeats, probes):
    rows = []
    names = exported.output_names
    found = path_thresholds(exported, probes)
    for k, name in enumerate(names, 1):
        row = {"kind": "path", "exit": name, "index": k, "batch": batch}
        forced = k not in found and exported.driver
        if k not in found and not forced:
            rows.append({**row, "note": "no probe image leaves here"})
            continue
        i, thr = found.get(k, (0, 0.0))
        x = np.repeat(probes[i:i + 1], batch, axis=0)
        at = k if forced else None
        taken = exported.cascade(x, thr, exit_at=at)["exits"]
        if not (np.asarray(taken) == k).all():
            raise ElasticKerasError(f"latency: the batch meant to leave at {name} left at "
                                    f"{sorted(set(np.asarray(taken).tolist()))}")
        p50, p95 = p50_p95(lambda: exported.cascade(x, thr, exit_at=at), repeats)
        rows.append({**row, "p50_ms": p50, "p95_ms": p95, "per_image_ms": p50 / batch,
                     "repeats": repeats, "threshold": "" if forced else thr,
                     "note": "no probe image leaves here: the segment driver sent the "
                             "batch out here (the same segments run)" if forced else ""})
    return rows


def measure(exported, batches=(1, 32), repeats: int = 20, seed: int = 0) -> list[dict]:
    """Latency rows of an export: each exit's path through the cascade (a batch that all
    leaves there) and each truncated predictor, at each batch size."""
    from elastic_keras.backend.environment import device

    probes = probe_images(exported.manifest["input"], 64, seed)
    rows = []
    for batch in batches:
        rows += _path_rows(exported, batch, repeats, probes)
        x = probe_images(exported.manifest["input"], batch, seed + 1)
        for k, name in enumerate(exported.output_names, 1):
            run = exported.predictor(name)
            p50, p95 = p50_p95(lambda: run(x), repeats)
            rows.append({"kind": "predictor", "exit": name, "index": k, "batch": batch,
                         "p50_ms": p50, "p95_ms": p95, "per_image_ms": p50 / batch,
                         "repeats": repeats})
    common = {"runtime": exported.runtime, "device": device(),
              "versions": json.dumps(exported.manifest["versions"], sort_keys=True)}
    return [{**common, **r} for r in rows]


def write_latency(exported, rows) -> str:
    """latency.csv beside the export's manifest, atomically."""
    path = os.path.join(exported.folder, LATENCY_CSV)
    files.write_csv(path, list(COLUMNS), rows)
    return path


def read_path_costs(path) -> dict:
    """{"path": [ms per image by exit], "predictor": [...]} from a latency.csv, at
    the largest batch it measured (FIDELITY.md I33)."""
    import csv

    if not os.path.isfile(path):
        raise ElasticKerasError(f"no latency measurements: {path} not found (run `python -m "
                                "elastic_keras latency SOURCE` first)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ElasticKerasError(f"{path} holds no measurements")
    batch = max(int(r["batch"]) for r in rows)
    costs: dict[str, Any] = {}
    for kind in ("path", "predictor"):
        got = sorted((int(r["index"]), r["per_image_ms"]) for r in rows
                     if r["kind"] == kind and int(r["batch"]) == batch)
        missing = [i for i, v in got if v in ("", None)]
        if missing:
            raise ElasticKerasError(f"{path}: no {kind} latency at batch {batch} for exits "
                                    f"{missing}; the x-axis in ms needs every exit")
        costs[kind] = [float(v) for _, v in got]
    costs["batch"] = batch
    return costs


def add_latency(rows, costs) -> None:
    """Put measured ms per image into budget rows ("test_ms"): a cascade row costs the mean,
    over its test images, of the path latency of the exit each took; an exit row costs its
    truncated predictor (FIDELITY.md I33)."""
    paths, preds = costs["path"], costs["predictor"]
    exits = iter(preds)  # exit rows come in output order
    for r in rows:
        if r["kind"] == "exit":
            r["test_ms"] = next(exits)
            continue
        fractions = [float(f) for f in str(r.get("exit_fractions") or "").split()]
        if len(fractions) != len(paths):
            raise ElasticKerasError("latency.csv does not fit this run: "
                                    f"{len(paths)} exits measured, {len(fractions)} here")
        r["test_ms"] = float(np.dot(fractions, paths))


def find_latency(run_dir) -> str:
    """The latency.csv of a run's one export (RUN/export-*/latency.csv)."""
    import glob

    from elastic_keras.inference.export import EXPORT_PREFIX

    found = sorted(glob.glob(os.path.join(os.fspath(run_dir), EXPORT_PREFIX + "*",
                                          LATENCY_CSV)))
    if len(found) != 1:
        raise ElasticKerasError(
            f"costs in ms (budget --cost latency, calibrate --max-ms) need one latency.csv "
            f"in {run_dir}/export-*/, found {len(found)}"
            f"{': ' + ', '.join(found) if found else ''}; run `python -m elastic_keras "
            "latency RUN` or pass --latency PATH")
    return found[0]
