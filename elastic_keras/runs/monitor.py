"""Offline monitoring: a stream of images through a cascade at the threshold a controller sets."""

from __future__ import annotations

import math
import os

import numpy as np

from elastic_keras import files
from elastic_keras.errors import ElasticKerasError
from elastic_keras.inference.online import POLICIES

LOG_COLUMNS = ("image", "file", "threshold", "exit", "class", "audited", "final_class",
               "disagree")
HELP = ("stream images through a calibrated source while an online controller audits early "
        "answers and moves the threshold when the data drift")
# The `monitor` command's arguments, as data: cli.py adds them, `command` runs them.
ARGUMENTS = (
    (("source",), {"help": "a calibrated run directory, or an export of one"}),
    (("images",), {"nargs": "+", "help": "PNG/JPEG files or folders, in stream order, or one "
                                        ".npz of uint8 images"}),
    (("--audit",), {"type": float, "default": 0.05, "help": "share of early-exited images "
                    "sent on to the final exit (default 0.05)"}),
    (("--epsilon",), {"type": float, "default": None,
                      "help": "disagreement risk level (default: the calibration's)"}),
    (("--delta",), {"type": float, "default": None,
                    "help": "false-alarm probability (default: the calibration's)"}),
    (("--policy",), {"choices": POLICIES, "default": "step",
                     "help": "step: stay until an alarm, then step back slowly; aci: adaptive "
                             "conformal inference on the threshold's index"}),
    (("--batch",), {"type": int, "default": 32, "help": "images per cascade call"}),
    (("--seed",), {"type": int, "default": 0, "help": "seed of the audit coins"}),
    (("--log",), {"default": None, "help": "per-image CSV log (threshold, exit, audit)"}),
    (("--runtime",), {"choices": ("saved_model", "litert", "onnx"), "default": None,
                      "help": "export a run first and stream through this runtime"}),
)


def stream(controller, images, answer, final, last: int, rng, batch: int = 32) -> dict:
    """Run `images` (in order, by batches) through `answer(images, threshold) -> {classes,
    exits}` (exits 1-based; `last` is the final one) at the controller's threshold in force;
    the early-exited images its audit coin picks go on to `final(images) -> classes`, and
    only those count as feedback. Returns per image: threshold, exit, class, audited,
    final_class (-1 where not audited), disagree (FIDELITY.md W3)."""
    n = len(images)
    out = {"threshold": np.zeros(n), "exit": np.zeros(n, np.int64),
           "class": np.zeros(n, np.int64), "audited": np.zeros(n, bool),
           "final_class": np.full(n, -1, np.int64), "disagree": np.zeros(n, bool)}
    for s in range(0, n, batch):
        x, where = images[s:s + batch], slice(s, min(s + batch, n))
        # answer the batch at the threshold in force; draw each early image's audit coin
        threshold = controller.threshold
        got = answer(x, threshold)
        exits, classes = np.asarray(got["exits"]), np.asarray(got["classes"])
        early = exits < last
        audited = np.array([bool(e) and controller.should_audit(rng) for e in early])
        tickets = [controller.observe_served(bool(e), bool(a)) for e, a in zip(early, audited)]
        # the audited ones go on to the final exit; each answer is feedback
        finals = np.full(len(exits), -1, np.int64)
        if audited.any():
            finals[audited] = np.asarray(final(x[audited]))
        for i in np.flatnonzero(audited):
            controller.observe_audit(tickets[i], bool(finals[i] != classes[i]))
        out["threshold"][where], out["exit"][where], out["class"][where] = (
            threshold, exits, classes)
        out["audited"][where], out["final_class"][where] = audited, finals
        out["disagree"][where] = audited & (finals != classes)
    return out


def read_images(paths, shape) -> tuple[np.ndarray, list[str]]:
    """The stream's images, uint8 (N, H, W, C) in order, and their names: PNG/JPEG files and
    folders as `predict` reads them, or one .npz of uint8 images (its `images` array, or its
    only one)."""
    from elastic_keras.inference.images import expand, read_image

    if len(paths) == 1 and os.fspath(paths[0]).endswith(".npz"):
        with np.load(paths[0]) as f:
            key = "images" if "images" in f.files else f.files[0] if len(f.files) == 1 else None
            if key is None:
                raise ElasticKerasError(f"{paths[0]} holds {', '.join(f.files)}: name the "
                                        "images array `images`")
            x = f[key]
        if x.dtype != np.uint8 or tuple(x.shape[1:]) != tuple(shape):
            want = ", ".join(map(str, shape))
            raise ElasticKerasError(f"{paths[0]}: images must be uint8 (N, {want}), got "
                                    f"{x.dtype} {x.shape}")
        return x, [f"{paths[0]}[{i}]" for i in range(len(x))]
    names = expand(paths)
    return np.stack([read_image(p, shape)[0] for p in names]), names


def open_source(source, runtime=None) -> dict:
    """What the stream runs: answer, final, last exit, input shape, path MACs, the
    calibration's threshold and certificate; from an export (its runtime) or a run."""
    from elastic_keras.inference.runtimes import is_export

    if is_export(source) or runtime:
        from elastic_keras.runs.serve import open_export

        exported = open_export(source, runtime)
        meta, last = exported.manifest, len(exported.output_names)
        answer = exported.cascade
        predictor = exported.predictor(exported.output_names[-1])
        path_macs = [e["path_macs"] for e in meta["exits"]]
        shape, where = meta["input"]["shape"][1:], f"{exported.runtime} export"
        return {"answer": answer, "final": lambda x: predictor(x)["classes"], "last": last,
                "shape": shape, "path_macs": path_macs, "meta": meta, "where": where}
    return _run_source(source)


def _run_source(source) -> dict:
    from elastic_keras.inference.cascade import Cascade
    from elastic_keras.inference.export import input_spec
    from elastic_keras.inference.predictors import truncated_predictor
    from elastic_keras.runs.source import load_source

    src = load_source(source)
    cascade = Cascade(src.model, src.criterion, temperatures=src.meta.get("temperatures"))
    last = len(cascade.output_names)
    final = truncated_predictor(cascade.model, last)

    def answer(x, threshold):
        r = cascade(x, threshold)
        return {"classes": r.predictions, "exits": r.exits}

    return {"answer": answer, "last": last, "shape": input_spec(cascade.model)["shape"][1:],
            "final": lambda x: np.asarray(final.predict_on_batch(x)).argmax(axis=1),
            "path_macs": cascade.path_macs, "meta": src.meta, "where": "in-package cascade"}


def calibration_of(meta, source) -> dict:
    """calibration.json's threshold and certificate as the source records them; one line
    where it has none."""
    if not meta.get("certificate"):
        raise ElasticKerasError(f"{source} has no calibration: run `python -m elastic_keras "
                                f"calibrate RUN_DIR` first (and export again)")
    return {"threshold": (meta.get("thresholds") or {}).get("calibration"),
            "certificate": meta["certificate"]}


def change_line(c) -> str:
    """One threshold change with its evidence."""
    def thr(v):
        return "none (final exit only)" if math.isinf(v) else f"{v:.6g}"

    return (f"image {c.image}: threshold {thr(c.old)} -> {thr(c.new)} ({c.reason}); window of "
            f"{c.served} images, {c.audits} audits, {c.disagreements} disagreed, risk in "
            f"[{c.lower:.4f}, {c.bound:.4f}]")


def monitor(source, paths, audit=0.05, epsilon=None, delta=None, policy="step", batch=32,
            seed=0, log_csv=None, runtime=None, log=print) -> dict:
    """Stream image files (or an .npz) in order through SOURCE's cascade under an online
    controller; print each threshold change and a summary; write the per-image log CSV."""
    from elastic_keras.inference.online import from_calibration

    opened = open_source(source, runtime)
    controller = from_calibration(calibration_of(opened["meta"], source), epsilon, delta,
                                  audit_rate=audit, policy=policy)
    images, names = read_images(paths, opened["shape"])
    log(f"monitor: {len(images)} images through {source} ({opened['where']}); audit "
        f"{audit:g} of early exits, epsilon {controller.epsilon:g}, delta {controller.delta:g}, "
        f"policy {policy}; threshold at start {controller.threshold:.6g} (calibrated)")
    out = stream(controller, images, opened["answer"], opened["final"], opened["last"],
                 np.random.default_rng(seed), batch)
    for c in controller.changes:
        log(change_line(c))
    summary = summarize(out, controller, opened["path_macs"])
    log(summary["text"])
    if log_csv:
        rows = [{"image": i, "file": names[i], **{k: out[k][i].item() for k in LOG_COLUMNS[2:]}}
                for i in range(len(images))]
        files.write_csv(log_csv, LOG_COLUMNS, rows)
        log(f"wrote {log_csv}")
    return {**summary, "out": out, "controller": controller}


def summarize(out, controller, path_macs) -> dict:
    """MACs served and audited per image against the final exit's, and a line saying so."""
    macs = np.asarray(path_macs, dtype=np.float64)
    served = macs[out["exit"] - 1]
    audits = np.where(out["audited"], macs[-1] - served, 0.0)  # going on from the exit left
    saved = 1 - served.mean() / macs[-1]
    status = controller.status()
    thr = "none" if status["threshold"] is None else f"{status['threshold']:.6g}"
    text = (f"summary: {len(served)} images, {np.mean(out['exit'] < len(macs)):.1%} left "
            f"early, {status['audits']} audits ({int(out['disagree'].sum())} disagreed), "
            f"alarms: {status['alarms']}, threshold changes: {len(controller.changes)}, "
            f"threshold now {thr}, risk bound {status['bound']:.4f}; MACs saved {saved:.1%} "
            f"against the final exit, audits added {audits.sum() / served.sum():.1%}")
    return {"saved": float(saved), "audit_share": float(audits.sum() / served.sum()),
            "text": text, **status}


def command(args) -> int:
    """The `monitor` command (cli.py): check the numbers, stream, exit status 0."""
    from elastic_keras.checks import check_int, check_number

    check_number("--audit", args.audit, 0, 1, low_open=True, high_open=False)
    check_int("--batch", args.batch, 1)
    monitor(args.source, args.images, audit=args.audit, epsilon=args.epsilon, delta=args.delta,
            policy=args.policy, batch=args.batch, seed=args.seed, log_csv=args.log,
            runtime=args.runtime)
    return 0
