"""Serving a SOURCE: export it, measure its latency, classify image files through it."""

from __future__ import annotations

from elastic_keras.errors import ElasticKerasError


def export_source(path, fmt: str, out=None, log=print, quantize: dict | None = None) -> str:
    """Export a run directory or .keras file in `fmt` (default folder: source.py's
    default_export_dir, RUN/export-FORMAT-int8 when quantized); returns the export folder.
    quantize: runs.quantized.prepare's options (count, data, io, float_heads) for an int8
    export, whose temperatures the driver applies (FIDELITY.md Q2)."""
    from elastic_keras.inference.export import check_format, export_model, require_tensorflow
    from elastic_keras.runs.source import default_export_dir, load_source

    check_format(fmt)
    require_tensorflow()
    if quantize is None:
        src = load_source(path)
        out = out or default_export_dir(path, fmt)
        export_model(src.model, fmt, out, criterion=src.criterion,
                     temperatures=src.meta.get("temperatures"), meta=src.meta, log=log)
        return out
    from elastic_keras.inference.quantize import check_plan
    from elastic_keras.runs.quantized import prepare, summary

    check_plan(fmt, quantize["io"], quantize["count"])
    src = load_source(path)
    out = out or default_export_dir(path, f"{fmt}-int8")
    plan, finish = prepare(src, fmt, **quantize)
    export_model(src.model, fmt, out, criterion=src.criterion, log=log, quantize=plan,
                 temperatures=src.meta.get("temperatures"), meta=src.meta, finish=finish)
    for line in summary(out):
        log(line)
    return out


def open_export(path, fmt: str | None = None, log=print):
    """An export folder as it is, or the export of a run/.keras in `fmt` (made when missing
    or older than the source). Returns an inference.runtimes.Exported."""
    from elastic_keras.inference.runtimes import Exported, is_export

    if is_export(path):
        found = Exported(path)
        if fmt and found.format != fmt:
            raise ElasticKerasError(f"{path} is a {found.format} export, not {fmt}; export the "
                                    f"source again with --format {fmt}")
        return found
    from elastic_keras.runs.source import default_export_dir  # imports Keras: exports only

    fmt = fmt or "saved_model"
    out = default_export_dir(path, fmt)
    if not is_export(out):
        export_source(path, fmt, out, log=log)
    else:
        log(f"using the export in {out}")
    return Exported(out)


def cascade_runner(path, fmt: str | None = None):
    """(run(images, threshold) -> {probabilities, classes, exits}, input shape, metadata)
    of an export (its runtime) or of a run/.keras (the in-package Cascade; `fmt` exports
    it first)."""
    from elastic_keras.inference.runtimes import is_export

    if is_export(path) or fmt:
        exported = open_export(path, fmt)
        m = exported.manifest
        meta = {"threshold": m.get("threshold"), "class_names": m.get("class_names"),
                "output_names": exported.output_names, "criterion": m["criterion"],
                "chosen": exported.in_force()["says"]}
        return exported.cascade, m["input"]["shape"][1:], meta
    return _in_package(path)


def _in_package(path):
    from elastic_keras.inference.cascade import Cascade
    from elastic_keras.inference.export import input_spec
    from elastic_keras.runs.source import load_source

    src = load_source(path)
    cascade = Cascade(src.model, src.criterion, temperatures=src.meta.get("temperatures"))

    def run(images, threshold):
        r = cascade(images, threshold)
        return {"probabilities": r.probabilities, "classes": r.predictions, "exits": r.exits}

    meta = {"threshold": src.threshold, "class_names": src.class_names,
            "output_names": list(src.model.output_names), "criterion": src.criterion}
    return run, input_spec(src.model)["shape"][1:], meta
