"""manifest.json of an export: exits, classes, input, criterion, thresholds, source, versions."""

from __future__ import annotations

RUNTIME_PACKAGES = {"saved_model": (), "litert": ("ai-edge-litert",),
                    "onnx": ("onnxruntime", "onnx", "tf2onnx")}


def library_versions(fmt: str) -> dict:
    """Versions of the package, Keras, TensorFlow, NumPy and the libraries of format `fmt`."""
    from elastic_keras.backend.environment import versions

    return versions(RUNTIME_PACKAGES[fmt])


def build_manifest(model, fmt, criterion, temperatures, spec, artifacts, meta) -> dict:
    """The manifest: every exit in depth order (output, layer, MACs of the exit alone and of
    the cascade's path to it, parameters), classes, input spec and preprocessing, criterion,
    temperatures and thresholds, the source (`meta`: run, config hash, class names,
    thresholds chosen by its budget or calibration), library versions."""
    from elastic_keras.inference.cascade import path_macs
    from elastic_keras.model.exits import exit_info

    paths = path_macs(model)
    exits = [{"index": k + 1, "output": e.output, "layer": e.layer, "macs": e.macs,
              "path_macs": paths[k], "params": e.params_exit_only,
              "predictor": artifacts["predictors"][e.output]}
             for k, e in enumerate(exit_info(model))]
    classes = int(model.outputs[-1].shape[-1])
    names = meta.get("class_names")
    return {
        "format": fmt, "model": model.name, "exits": exits,
        "classes": classes, "class_names": list(names) if names else None,
        "input": spec, "criterion": criterion, "temperatures": temperatures,
        "threshold": meta.get("threshold"), "thresholds": meta.get("thresholds", {}),
        "certificate": meta.get("certificate"), "certified_on": meta.get("certified_on"),
        "quantization": meta.get("quantization"),
        "output_temperatures": meta.get("output_temperatures"),
        "outputs": {"probabilities": "softmax of the exit taken (N, C)",
                    "classes": "argmax of those (N,)", "exits": "exit taken, 1-based (N,)"},
        "artifacts": artifacts, "source": meta.get("source"),
        "config_hash": meta.get("config_hash"), "versions": library_versions(fmt),
    }


def threshold_in_force(manifest) -> dict:
    """The threshold an export serves at and what vouches for it (predict, latency, serve):
    {"threshold": float or None (None: every image to the final exit), "certificate": its
    text or None, "own": certified on this export's own outputs (`calibrate EXPORT_DIR`),
    "says": what vouches for it, in words, "line": the threshold and that, in one line}.
    `manifest`: an export's manifest.json content, or its folder (FIDELITY.md Q4)."""
    import os

    from elastic_keras import files

    if not isinstance(manifest, dict):
        manifest = files.read_json(os.path.join(os.fspath(manifest), "manifest.json"))
    threshold, cert = manifest.get("threshold"), manifest.get("certificate") or {}
    text, own = cert.get("text"), manifest.get("certified_on") == "export"
    int8 = bool(manifest.get("quantization"))
    if own:
        says = ("this export's own certificate (calibrate EXPORT_DIR, on its own outputs): "
                + str(text))
    elif text and int8:
        says = ("certified on the float network's outputs, not on this int8 export's "
                "(calibrate EXPORT_DIR certifies the export itself)")
    elif text:
        says = f"the source run's certificate: {text}"
    elif threshold is None:
        says = "no threshold was chosen: every image goes to the final exit"
    else:
        says = "the source run's budget pick (not certified)"
    shown = "none" if threshold is None else f"{threshold:g}"
    return {"threshold": threshold, "certificate": text, "own": own, "says": says,
            "line": f"threshold {shown}: {says}"}
