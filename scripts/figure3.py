"""Figure 3 of the paper: loss curves of Elastic-DenseNet-121 (final exit) and DenseNet-121.

Usage:
    python scripts/figure3.py --profile paper --out results/figure3.png
    python scripts/figure3.py --profile smoke --dataset-tag synthetic --out results/smoke-figure3.png

Reads runs/<profile>/<tag>/cifar10-densenet121-{elastic,plain}/history.csv (tag default:
cifar10). Exit status 2 with a message when a history is missing.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elastic_keras import files  # noqa: E402
from elastic_keras.cli import run_script  # noqa: E402
from elastic_keras.errors import ElasticKerasError  # noqa: E402
from elastic_keras.tables import (default_prefix, is_reproduction, read_history,  # noqa: E402
                                  run_name, run_path)

DATASET = "cifar10"
BACKBONE = "densenet121"


def figure3(runs_root, profile, dataset_tag, out):
    """Plot the final exit's train/val loss of the elastic and plain runs; write `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elastic_keras.plots import plot_final_curves, save_figure

    # Both histories first: a missing one is an error, never half a figure.
    histories, missing = {}, []
    for label, plain in (("Elastic-DenseNet-121", False), ("DenseNet-121", True)):
        path = run_path(runs_root, profile, dataset_tag, DATASET, run_name(DATASET, BACKBONE, plain))
        try:
            histories[label] = read_history(path)
        except ElasticKerasError as e:
            missing.append(str(e))
    if missing:
        raise ElasticKerasError("Figure 3 needs both CIFAR-10 DenseNet-121 runs: "
                                + "; ".join(missing))

    data = dataset_tag or DATASET
    title = f"Figure 3: final-exit loss on CIFAR-10 runs (profile {profile}, data {data})"
    if not is_reproduction(profile, dataset_tag):
        title += "\nNOT a reproduction (smoke/demo profile)"
    fig, ax = plt.subplots(figsize=(8, 5))
    plot_final_curves(histories, "loss", ax=ax, title=title)
    return save_figure(fig, out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs-root", default="runs")
    p.add_argument("--profile", default=None,
                   help="default: the profile of the last `make reproduce-*` (runs/last.json)")
    p.add_argument("--dataset-tag", default=None,
                   help="folder under RUNS_ROOT/PROFILE holding the runs; default cifar10")
    p.add_argument("--out", default=None,
                   help="default: results/figure3.png (paper profile) or "
                        "results/<profile>-<data>-figure3.png")
    args = p.parse_args(argv)
    last = os.path.join(args.runs_root, "last.json")
    if args.profile is None:
        if os.path.isfile(last):
            prev = files.read_json(last)
            args.profile, args.dataset_tag = prev["profile"], args.dataset_tag or prev["data"]
            print(f"using profile {args.profile}, data {args.dataset_tag or DATASET} "
                  f"(the last reproduce; PROFILE=... DATA=... choose others)")
        else:
            args.profile = "paper"
    if args.out is None:
        args.out = os.path.join("results", default_prefix(args.profile, args.dataset_tag)
                                + "figure3.png")
    return run_script(lambda: figure3(args.runs_root, args.profile, args.dataset_tag, args.out))


if __name__ == "__main__":
    sys.exit(main())
