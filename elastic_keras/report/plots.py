"""Figures: per-exit curves of a run, Figure 3, test error and accuracy against MACs."""

import re

from elastic_keras.errors import ElasticKerasError
from elastic_keras.model.exits import FINAL, exit_name

_EXIT_LOSS = re.compile(r"^exit_(\d+)_loss$")


def outputs_of(history):
    """Output names in a history, in depth order: exit_1 ... exit_{K-1}, final."""
    exits = sorted(int(m.group(1)) for c in history.columns if (m := _EXIT_LOSS.match(c)))
    names = [exit_name(i) for i in exits]
    if f"{FINAL}_loss" in history.columns or not names:
        names.append(FINAL)
    return names


def metric_column(history, output, metric, val=False):
    """Column of `output`'s `metric` (loss, accuracy), train or val; None if absent.

    A plain model's only output is `final`; where its history lacks `final_loss`, the
    total `loss` is the same number and serves instead.
    """
    prefix = "val_" if val else ""
    col = f"{prefix}{output}_{metric}"
    if col in history.columns:
        return col
    total = f"{prefix}{metric}"
    if output == FINAL and outputs_of(history) == [FINAL] and total in history.columns:
        return total
    return None


def phase_boundaries(history):
    """[(x, from_phase, to_phase)]: x halfway between the last epoch of a phase and the next."""
    ep, ph = history["epoch"].tolist(), history["phase"].astype(str).tolist()
    return [((ep[i - 1] + ep[i]) / 2, ph[i - 1], ph[i])
            for i in range(1, len(ep)) if ph[i] != ph[i - 1]]


def lr_drops(history):
    """[(epoch, old_lr, new_lr)]: epochs trained at a lower rate than the one before, within
    a phase (ReduceLROnPlateau, paper section IV-A). A new phase's own rate is no drop."""
    ep, ph, lr = (history["epoch"].tolist(), history["phase"].astype(str).tolist(),
                  history["lr"].astype(float).tolist())
    return [(ep[i], lr[i - 1], lr[i])
            for i in range(1, len(ep)) if ph[i] == ph[i - 1] and lr[i] < lr[i - 1]]


def mark_schedule(ax, history, color="0.35", label=True, lr_label="lr drop"):
    """Vertical line at each phase boundary (heads -> full); dotted lines where lr drops.

    label: put the phase boundary in the legend; lr_label: legend entry of the lr drops
    (None: none)."""
    for x, a, b in phase_boundaries(history):
        ax.axvline(x, color="0.25", lw=1.2, alpha=0.7, label=f"{a} → {b}" if label else None)
    for i, (epoch, _, new) in enumerate(lr_drops(history)):
        x = epoch - 0.5
        ax.axvline(x, color=color, ls=":", lw=1.2, label=lr_label if i == 0 else None)
        ax.annotate(f"lr {new:.0e}", (x, 1.0), xycoords=ax.get_xaxis_transform(),
                    xytext=(2, -2), textcoords="offset points", fontsize="x-small",
                    va="top", color=color, rotation=90)
    return ax


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.gca()
    return ax


def _colors(n):
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(i / max(n - 1, 1) * 0.9) for i in range(n)]


def plot_exit_curves(history, metric="loss", ax=None, outputs=None, title=None):
    """Train (solid) and validation (dashed) `metric` of every exit against the epoch,
    with the phase boundary and the learning-rate drops marked. Returns the axes."""
    from matplotlib.lines import Line2D

    ax = _axes(ax)
    outputs = list(outputs or outputs_of(history))
    colors = _colors(len(outputs) - 1) + ["black"] if len(outputs) > 1 else ["black"]
    x = history["epoch"]
    for o, c in zip(outputs, colors):
        for val, style in ((False, "-"), (True, "--")):
            col = metric_column(history, o, metric, val)
            if col is not None:
                ax.plot(x, history[col], style, color=c, lw=1.4 if o == FINAL else 1.0,
                        label=o if not val else None)
    mark_schedule(ax, history)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--")]
    labels += ["train", "validation"]
    # Beside the axes, never over the curves.
    ax.legend(handles, labels, fontsize="x-small", ncol=2 if len(labels) > 16 else 1,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    return ax


def plot_final_curves(histories, metric="loss", ax=None, title=None):
    """Figure 3 of the paper: the final exit's train (solid) and validation (dashed)
    `metric` of several runs ({label: history}), with each run's schedule marked."""
    ax = _axes(ax)
    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple"]
    for i, (label, history) in enumerate(histories.items()):
        c = colors[i % len(colors)]
        for val, style, what in ((False, "-", "train"), (True, "--", "validation")):
            col = metric_column(history, FINAL, metric, val)
            if col is None:
                raise ElasticKerasError(f"{label}: history has no {'val_' if val else ''}"
                                        f"{FINAL}_{metric} column")
            ax.plot(history["epoch"], history[col], style, color=c, label=f"{label} ({what})")
        mark_schedule(ax, history, color=c, label=i == 0, lr_label=f"lr drop ({label})")
    ax.legend(fontsize="small")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    return ax


def plot_error_vs_macs(results, ax=None, title=None):
    """Test error (%) of each exit against its multiply-accumulates (results.json)."""
    ax = _axes(ax)
    exits = results["exits"]
    x = [e["macs"] / 1e9 for e in exits]
    y = [e["test_error_pct"] for e in exits]
    ax.plot(x, y, "o-", color="tab:blue")
    for e, xi, yi in zip(exits, x, y):
        ax.annotate(f"{e['output']} ({e['conv_layers']} conv)", (xi, yi), xytext=(4, 4),
                    textcoords="offset points", fontsize="x-small")
    ax.set_xlabel("GMACs per image (up to the exit)")
    ax.set_ylabel("test error (%)")
    if title:
        ax.set_title(title)
    return ax


def new_figure(*args, **kwargs):
    """A figure on the Agg canvas (no global backend switch, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(*args, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def plot_run(run, out=None):
    """Loss and accuracy of every exit of one run (a RunDir), labelled with its profile and
    data; curves.png in the run directory unless `out` is given."""
    history = run.history()
    cfg = run.config
    label = f"{cfg['name']} ({cfg['profile']} profile, {cfg['data']['dataset']} data)"
    fig = new_figure(figsize=(16, 5))
    for i, metric in enumerate(("loss", "accuracy")):
        plot_exit_curves(history, metric, ax=fig.add_subplot(1, 2, i + 1),
                         title=f"{label}: {metric} of every exit")
    return save_figure(fig, out or run.output("curves.png"), dpi=110)


def figure3(runs_root, setting, out):
    """Figure 3 of the paper: the final exit's training and validation loss of the CIFAR-10
    Elastic-DenseNet-121 and DenseNet-121 runs. Both histories or an error: never half a
    figure (FIDELITY.md G14)."""
    from elastic_keras.runs.names import RunName
    from elastic_keras.runs.rundir import RunDir

    histories, missing = {}, []
    for label, plain in (("Elastic-DenseNet-121", False), ("DenseNet-121", True)):
        path = setting.run_path(runs_root, RunName("cifar10", "densenet121", plain))
        try:
            histories[label] = RunDir(path).history()
        except ElasticKerasError as e:
            missing.append(str(e))
    if missing:
        raise ElasticKerasError("Figure 3 needs both CIFAR-10 DenseNet-121 runs: "
                                + "; ".join(missing))
    title = (f"Figure 3: final-exit loss on CIFAR-10 runs ({setting.folder}, data "
             f"{setting.data or 'cifar10'})")
    if not setting.is_reproduction:
        title += "\nNOT a reproduction"
    fig = new_figure(figsize=(8, 5))
    plot_final_curves(histories, "loss", ax=fig.add_subplot(1, 1, 1), title=title)
    return save_figure(fig, out)


def last_epoch_table(history):
    """Per-exit losses and accuracies at the last epoch of a history, depth order."""
    import pandas as pd

    last = history.iloc[-1]
    rows = [{"output": o, **{f"{'val_' if val else 'train_'}{m}":
                             float(last[metric_column(history, o, m, val)])
                             for m in ("loss", "accuracy") for val in (False, True)
                             if metric_column(history, o, m, val) is not None}}
            for o in outputs_of(history)]
    df = pd.DataFrame(rows).set_index("output")
    df.attrs["epoch"], df.attrs["phase"] = int(last["epoch"]), str(last["phase"])
    return df


def save_figure(fig, out, dpi=120):
    """Write `fig` to the PNG `out` atomically (no timestamp metadata), close it, return out."""
    import matplotlib.pyplot as plt

    from elastic_keras import files

    fig.tight_layout()
    with files.atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return out
