"""Image files in, predictions out: read PNG/JPEG files and folders, classify them by cascade."""

from __future__ import annotations

import json
import os

import numpy as np

from elastic_keras.errors import ElasticKerasError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def expand(paths) -> list[str]:
    """The files named, a folder standing for its PNG/JPEG files (sorted, not recursive)."""
    found = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found += sorted(os.path.join(p, n) for n in os.listdir(p)
                            if n.lower().endswith(IMAGE_EXTENSIONS))
        else:
            found.append(p)
    if not found:
        raise ElasticKerasError(f"no images: {', '.join(map(str, paths))} hold no PNG or JPEG")
    return found


def read_image(path, shape, name=None) -> tuple[np.ndarray, list[str]]:
    """The image at `path` (or a file object, `name` in messages) as uint8 (H, W, 3) of the
    network's input `shape`, and what was converted (its mode, its size; FIDELITY.md I34);
    a bad file raises ElasticKerasError."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    try:
        with Image.open(path) as opened:
            opened.load()
            img: Image.Image = opened
            done = []
            mode = "RGB" if channels == 3 else "L"
            if img.mode != mode:
                done.append(f"mode {img.mode} -> {mode}")
                img = img.convert(mode)
            if img.size != (width, height):
                done.append(f"size {img.size[0]}x{img.size[1]} -> {width}x{height}")
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            x = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ElasticKerasError(f"cannot read image {name or path}: {e}") from None
    return x.reshape(height, width, channels), done


def classify(run, paths, shape, threshold, class_names=None, output_names=None,
             batch: int = 32) -> tuple[list[dict], list[str], str | None]:
    """Classify image files with `run(images, threshold) -> {probabilities, classes, exits}`.

    Returns (one result per readable image: file, class, confidence, exit; one error line per
    unreadable file, the others go on; a note saying once what was converted, or None).
    """
    good, errors, converted = [], [], set()
    for p in expand(paths):
        try:
            x, done = read_image(p, shape)
        except ElasticKerasError as e:
            errors.append(f"{p}: error: {e}")
            continue
        converted.update(done)
        good.append((p, x))
    note = (f"note: images converted to what the network was trained on ({shape[1]}x"
            f"{shape[0]} {'RGB' if shape[2] == 3 else 'grey'}): {'; '.join(sorted(converted))}"
            if converted else None)
    results = []
    for s in range(0, len(good), batch):
        chunk = good[s:s + batch]
        got = run(np.stack([x for _, x in chunk]), threshold)
        results += [_result(p, got, i, class_names, output_names) for i, (p, _) in
                    enumerate(chunk)]
    return results, errors, note


def line(r: dict) -> str:
    """One result as a line: file, class (name where known), confidence, exit taken."""
    name = f"{r['class_name']} ({r['class']})" if r["class_name"] else f"class {r['class']}"
    exit_name = f" ({r['exit_name']})" if r["exit_name"] else ""
    return f"{r['file']}: {name}, confidence {r['confidence']:.4f}, exit {r['exit']}{exit_name}"


def _result(path, got, i, class_names, output_names):
    cls, k = int(got["classes"][i]), int(got["exits"][i])
    return {"file": path, "class": cls,
            "class_name": class_names[cls] if class_names else None,
            "confidence": float(np.asarray(got["probabilities"][i]).max()), "exit": k,
            "exit_name": output_names[k - 1] if output_names else None}


def as_json(results, errors, note, threshold) -> str:
    """The machine-readable form of `classify`'s results."""
    return json.dumps({"threshold": threshold, "predictions": results, "errors": errors,
                       "note": note}, indent=2)
