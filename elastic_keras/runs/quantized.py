"""Int8 exports of a SOURCE: calibration images, and quantization.csv (float against int8)."""

from __future__ import annotations

import os

import numpy as np

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference.quantize import CALIBRATION_IMAGES, IO_TYPES, Plan, check_plan

QUANTIZATION_CSV = "quantization.csv"
COLUMNS = ("exit", "images", "n", "float_accuracy", "int8_accuracy", "accuracy_drop_pts",
           "agreement", "int8_tie_share", "ece_float", "ece_int8", "mean_confidence_shift",
           "threshold", "exit_change_share")
SEED = 0  # which training images calibrate: a seeded draw, recorded by its hash
ARGUMENTS = (  # export's int8 options, as cli.py adds them
    (("--quantize",), dict(choices=("int8",), help="int8 (litert, onnx); also writes "
                           "quantization.csv, float against int8")),
    (("--calibration-images",), dict(type=int, metavar="N", help="training images that set "
                                     f"the int8 ranges (default {CALIBRATION_IMAGES})")),
    (("--calibration-data",), dict(metavar="PATH", help="or a folder of PNG/JPEG or an .npz "
                                   "('x', optional 'y'); needed for a .keras file")),
    (("--io",), dict(choices=IO_TYPES, help="integer type of the int8 artifacts' inputs and "
                     "outputs (default: the runtime's own, int8 LiteRT, uint8 onnxruntime)")),
    (("--float-heads",), dict(action="store_true", help="the exits' heads stay float")))


def quantize_options(args) -> dict | None:
    """The command line's int8 options as export_source takes them (None: a float export);
    they are refused without --quantize."""
    if args.quantize is None:
        given = [flag for flag, value in (("--io", args.io), ("--float-heads", args.float_heads),
                                          ("--calibration-images", args.calibration_images),
                                          ("--calibration-data", args.calibration_data))
                 if value not in (None, False)]
        if given:
            raise ElasticKerasError(f"{', '.join(given)} apply to int8 exports: add "
                                    "--quantize int8")
        return None
    return {"count": CALIBRATION_IMAGES if args.calibration_images is None
            else args.calibration_images, "data": args.calibration_data,
            "io": args.io, "float_heads": args.float_heads}


def prepare(src, fmt, count=CALIBRATION_IMAGES, data=None, io=None, float_heads=False):
    """(the Plan of an int8 export of `src`, the `finish` that writes its quantization.csv):
    calibration images from `data` (a folder of PNG/JPEG or an .npz), else `count` drawn
    from the run's training split; quantization.csv on the run's validation split (or on
    labelled `data`) (FIDELITY.md Q1, Q3)."""
    from elastic_keras.inference.export import input_spec

    io = check_plan(fmt, io, count)
    shape = input_spec(src.model)["shape"][1:]
    if data is not None:
        x, y = read_images(data, shape)
        held = (x, y, f"the calibration images of {os.path.abspath(data)} (no held-out split)")
        where = {"from": os.path.abspath(data)}
    elif src.kind == "run":
        from elastic_keras.data.datasets import load_data
        from elastic_keras.runs.found import open_run

        split = load_data(open_run(src.path).config["data"])
        x, where = split.x_train, {
            "from": f"the training split of run {os.path.abspath(src.path)}"}
        held = (split.x_val, np.asarray(split.y_val).reshape(-1), "validation split")
    else:
        raise ElasticKerasError("quantizing a .keras file needs --calibration-data FOLDER or "
                                "NPZ (images like those it will serve): it has no training split")
    from elastic_keras.data.splits import indices_sha256

    pick = np.sort(np.random.default_rng(SEED).permutation(len(x))[:count])
    where.update(seed=SEED, available=int(len(x)), positions_sha256=indices_sha256(pick))
    plan = Plan(np.ascontiguousarray(x[pick]), where, io, float_heads)
    return plan, lambda folder, manifest: write_report(folder, src, *held)


def read_images(path, shape) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 images of the network's input `shape`, labels or None) from an .npz (arrays
    "x" and optionally "y") or a folder of PNG/JPEG files (converted as predict does)."""
    from elastic_keras.inference.images import expand, read_image

    path = os.fspath(path)
    if path.endswith(".npz"):
        try:
            with np.load(path) as found:
                x, y = found["x"], found["y"] if "y" in found else None
        except (OSError, ValueError, KeyError) as e:
            raise ElasticKerasError(f"--calibration-data {path}: an .npz with an array 'x' "
                                    f"(and optionally 'y') is needed ({e})") from None
        if x.dtype != np.uint8 or tuple(x.shape[1:]) != tuple(shape):
            raise ElasticKerasError(f"--calibration-data {path}: 'x' must be uint8 images "
                                    f"of shape (N, {', '.join(map(str, shape))}); received "
                                    f"{x.dtype} {tuple(x.shape)}")
        return x, None if y is None else np.asarray(y).reshape(-1)
    if not os.path.isdir(path):
        raise ElasticKerasError(f"--calibration-data must be a folder of images or an .npz; "
                                f"received {path}")
    return np.stack([read_image(p, shape)[0] for p in expand([path])]), None


def write_report(folder, src, x, y, images) -> str:
    """quantization.csv of the int8 export in `folder`: per exit, on `x` (labels `y`), float
    and int8 accuracy, their agreement, how often int8's top two probabilities tie, ECE
    before and after, the mean shift of the confidence, and the share of images whose exit
    changes at the threshold in force."""
    from elastic_keras.inference.runtimes import Exported

    exported = Exported(folder)
    m = exported.manifest
    rows = report_rows(exported.output_names,
                       float_outputs(src.model, m.get("output_temperatures"), x),
                       exported_outputs(exported, x), y, m["criterion"], m.get("threshold"))
    path = os.path.join(folder, QUANTIZATION_CSV)
    files.write_csv(path, list(COLUMNS), [{"images": images, **{  # no labels: blank
        k: None if isinstance(v, float) and np.isnan(v) else v for k, v in r.items()}}
        for r in rows])
    return path


def float_outputs(model, temperatures, x) -> list[np.ndarray]:
    """Every exit's float softmax on `x`, scaled by the temperatures the export serves with."""
    from elastic_keras.inference.segment_int8 import exit_probabilities
    from elastic_keras.inference.predictors import exit_probabilities as softmaxes

    temps = temperatures or [None] * len(model.outputs)
    return [exit_probabilities(p.astype(np.float32), None, t)
            for p, t in zip(softmaxes(model, x), temps)]


def exported_outputs(exported, x, batch: int = 256) -> list[np.ndarray]:
    """Every exit's probabilities on `x` through the export's own predictors, as served."""
    return [np.concatenate([exported.predictor(n)(x[i:i + batch])["probabilities"]
                            for i in range(0, len(x), batch)]) for n in exported.output_names]


def report_rows(names, floats, ints, labels, criterion, threshold) -> list[dict]:
    """quantization.csv's rows; `int8_tie_share`: the images whose two largest int8
    probabilities are equal, where the class (argmax) is the lower index (FIDELITY.md Q3);
    `exit_change_share` of exit k: the images that leave at k in float and elsewhere in int8
    (the rows sum to the share whose exit changes)."""
    from keras import ops

    from elastic_keras.inference.calibration import ece
    from elastic_keras.inference.predictors import confidence, route

    thr = threshold if threshold is not None else (2.0 if criterion == "max_prob" else -1.0)
    taken = [route(p, criterion, thr) for p in (floats, ints)]
    rows = []
    for k, (f, q) in enumerate(zip(floats, ints)):
        conf = [ops.convert_to_numpy(confidence(p, criterion)) for p in (f, q)]
        acc = [float(np.mean(p.argmax(1) == labels)) if labels is not None else np.nan
               for p in (f, q)]
        rows.append({"exit": names[k], "n": len(f), "float_accuracy": acc[0],
                     "int8_accuracy": acc[1], "accuracy_drop_pts": 100 * (acc[0] - acc[1]),
                     "agreement": float(np.mean(f.argmax(1) == q.argmax(1))),
                     "int8_tie_share": float(np.mean(top_two_tie(q))),
                     "ece_float": ece(f, labels) if labels is not None else np.nan,
                     "ece_int8": ece(q, labels) if labels is not None else np.nan,
                     "mean_confidence_shift": float(np.mean(conf[1] - conf[0])),
                     "threshold": threshold,
                     "exit_change_share": float(np.mean((taken[0] == k) & (taken[1] != k)))})
    return rows


def top_two_tie(p) -> np.ndarray:
    """Per row of `p` (two classes or more: elastify's check), whether its two largest
    values are equal."""
    top = np.partition(p, -2, axis=1)
    return top[:, -1] == top[:, -2]


def summary(folder) -> list[str]:
    """What export says of an int8 export's quantization.csv, and where it is."""
    import csv

    path = os.path.join(folder, QUANTIZATION_CSV)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    drops = [(float(r["accuracy_drop_pts"]), r["exit"]) for r in rows if r["accuracy_drop_pts"]]
    share = sum(float(r["exit_change_share"]) for r in rows)
    worst = f"largest accuracy drop {max(drops)[0]:.2f} points ({max(drops)[1]}), " if drops \
        else ""
    thr = rows[0]["threshold"] or "none"
    most = max(rows, key=lambda r: float(r["int8_tie_share"]))
    ties = (f"int8 top-two ties on {100 * float(most['int8_tie_share']):.1f}% at most "
            f"({most['exit']}; the class is the lower index there)"
            if float(most["int8_tie_share"]) else "no int8 top-two ties")
    return [f"int8 against float on the {rows[0]['images']} ({rows[0]['n']} images): {worst}"
            f"agreement {min(float(r['agreement']) for r in rows):.3f} at worst, {ties}, "
            f"{100 * share:.1f}% of images change exit at threshold {thr}",
            f"wrote {path}"]
