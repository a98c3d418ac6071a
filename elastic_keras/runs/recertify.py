"""Certify the artifact that is served: an export calibrated on its own outputs."""

from __future__ import annotations

import os

import numpy as np

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference import calibration as cal
from elastic_keras.runs.calibrate import (CALIBRATION_CSV, CSV_COLUMNS, certify_outputs,
                                          check_ask, path_ms)


def source_run(manifest, folder):
    """The run an export was made from (its validation split calibrates the export)."""
    from elastic_keras.runs.found import open_run

    source = manifest.get("source") or {}
    if source.get("kind") != "run":
        raise ElasticKerasError(f"calibrate {folder}: an export is calibrated on its source "
                                "run's validation split; this one was made from "
                                f"{source.get('kind') or 'no recorded source'}, not a run")
    if not os.path.isdir(source["path"]):
        raise ElasticKerasError(f"calibrate {folder}: its source run {source['path']} is not "
                                "there any more")
    return open_run(source["path"])


def export_outputs(folder, x) -> list[np.ndarray]:
    """Every exit's probabilities on `x` through the export's own predictors, as its
    artifacts give them (dequantized; without the temperatures the driver applies)."""
    from elastic_keras.inference.runtimes import Exported
    from elastic_keras.runs.quantized import exported_outputs

    exported = Exported(folder)
    exported.manifest = {**exported.manifest, "output_temperatures": None}
    return exported_outputs(exported, x)


def calibrate_export(folder, epsilon=0.02, delta=0.1, risk="drop", method="ltt", max_macs=None,
                     max_ms=None, seed=0, fit_fraction=0.3, latency=None) -> dict:
    """Fit per-exit temperatures on the export's own outputs and certify a threshold on
    them, split as `calibrate RUN` splits the source run's validation images (same seed and
    fraction); write calibration.json/csv into the export and its threshold, certificate
    and temperatures into manifest.json, which the driver and the predictors then serve
    with (FIDELITY.md Q4). Float and int8 exports alike; returns calibration.json's content
    plus "reliability"."""
    from elastic_keras.data.datasets import load_data
    from elastic_keras.inference.export import MANIFEST
    from elastic_keras.inference.latency import LATENCY_CSV
    from elastic_keras.inference.runtimes import Exported
    from elastic_keras.inference.segment_int8 import exit_probabilities

    ask = {**check_ask(epsilon, delta, method, max_macs, max_ms), "risk": risk}
    exported = Exported(folder)
    if "segments" not in exported.manifest["artifacts"]:
        raise ElasticKerasError(f"calibrate {folder}: its temperatures are applied by the "
                                "segment driver, and this export's cascade is one graph; "
                                "export a litert or onnx one")
    manifest, names = exported.manifest, exported.output_names
    if manifest["criterion"] != "max_prob":
        raise ElasticKerasError(f"calibrate {folder}: it certifies max_prob thresholds; this "
                                f"export's criterion is {manifest['criterion']}")
    run = source_run(manifest, folder)
    data = load_data(run.config["data"])
    labels = np.asarray(data.y_val).reshape(-1)
    probs = export_outputs(folder, data.x_val)
    macs = [e["path_macs"] for e in manifest["exits"]]
    own = os.path.join(exported.folder, LATENCY_CSV)
    ms = path_ms(None, latency or own, names, needed=max_ms is not None)
    out, rows, reliability = certify_outputs(probs, labels, names, macs, ms, ask, seed,
                                             fit_fraction, scale=lambda p, t: exit_probabilities(
                                                 p, None, t))
    out.update(certified_on="export", export=os.path.abspath(exported.folder),
               run=os.path.abspath(run.dir))
    files.write_csv(os.path.join(exported.folder, CALIBRATION_CSV), CSV_COLUMNS, rows)
    files.write_json(os.path.join(exported.folder, cal.CALIBRATION_JSON), out)
    thresholds = {**manifest.get("thresholds", {}), "export_calibration": out["threshold"]}
    files.write_json(os.path.join(exported.folder, MANIFEST), {
        **manifest, "threshold": out["threshold"], "certificate": out["certificate"],
        "certified_on": "export", "output_temperatures": out["temperatures"],
        "thresholds": thresholds})
    return {**out, "reliability": reliability}
