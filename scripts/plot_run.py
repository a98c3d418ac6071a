"""Loss and accuracy of every exit of one run, phase boundary and lr drops marked.

Usage: python scripts/plot_run.py RUN_DIR [--out FILE.png]   (default RUN_DIR/curves.png)
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elastic_keras import io  # noqa: E402
from elastic_keras.errors import ElasticKerasError  # noqa: E402
from elastic_keras.tables import read_history  # noqa: E402


def plot_run(run_dir, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elastic_keras.plots import plot_exit_curves

    history = read_history(run_dir)
    name = os.path.basename(os.path.normpath(run_dir))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        plot_exit_curves(history, metric, ax=ax, title=f"{name}: {metric} of every exit")
    fig.tight_layout()
    with io.atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        print(f"wrote {plot_run(args.run_dir, args.out or os.path.join(args.run_dir, 'curves.png'))}")
    except ElasticKerasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
