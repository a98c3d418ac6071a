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
        "certificate": meta.get("certificate"),
        "outputs": {"probabilities": "softmax of the exit taken (N, C)",
                    "classes": "argmax of those (N,)", "exits": "exit taken, 1-based (N,)"},
        "artifacts": artifacts, "source": meta.get("source"),
        "config_hash": meta.get("config_hash"), "versions": library_versions(fmt),
    }
