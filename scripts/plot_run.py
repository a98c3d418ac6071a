"""Loss and accuracy of every exit of one run, phase boundary and lr drops marked.

Usage: python scripts/plot_run.py RUN_DIR [--out FILE.png]   (default RUN_DIR/curves.png)
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elastic_keras.cli import run_script  # noqa: E402
from elastic_keras.tables import read_history  # noqa: E402


def plot_run(run_dir, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elastic_keras.plots import plot_exit_curves, save_figure

    history = read_history(run_dir)
    name = os.path.basename(os.path.normpath(run_dir))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        plot_exit_curves(history, metric, ax=ax, title=f"{name}: {metric} of every exit")
    return save_figure(fig, out, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    return run_script(lambda: plot_run(args.run_dir,
                                       args.out or os.path.join(args.run_dir, "curves.png")))


if __name__ == "__main__":
    sys.exit(main())
