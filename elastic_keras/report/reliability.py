"""The reliability diagram of a calibrated run: one panel per exit, before and after scaling."""

from __future__ import annotations

import math

import numpy as np


def reliability_figure(curves, title: str):
    """Accuracy against confidence per bin, before and after temperature scaling, one panel
    per exit. curves: [(output name, bins before, bins after)] (calibration.reliability)."""
    from elastic_keras.report.plots import new_figure

    cols = min(4, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig = new_figure(figsize=(3.2 * cols, 3.0 * rows + 0.4))
    for i, (name, before, after) in enumerate(curves):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        for bins, style, label in ((before, "o-", "before"), (after, "s-", "after")):
            used = np.asarray(bins["count"]) > 0
            ax.plot(np.asarray(bins["confidence"])[used], np.asarray(bins["accuracy"])[used],
                    style, ms=3, lw=1, label=f"{label}: ECE {bins['ece']:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize="small")
        ax.legend(fontsize="x-small", loc="upper left")
        if i % cols == 0:
            ax.set_ylabel("accuracy")
        if i >= len(curves) - cols:
            ax.set_xlabel("confidence")
    fig.suptitle(title, fontsize="medium")
    return fig


def write_reliability(path, curves, title: str):
    """The reliability diagram as a PNG at `path`, atomically; returns the path."""
    from elastic_keras.report.plots import save_figure

    return save_figure(reliability_figure(curves, title), path)
