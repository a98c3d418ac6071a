"""budget.csv and budget.png for every finished run under a root (`make budget`).

    python scripts/budget_all.py runs/paper [--criterion max_prob] [--n-thresholds 21]

A run directory is one holding results.json (trained and evaluated); directories with a
config.json but no results.json are unfinished and skipped with a message. Each run goes
through the same code as `python -m elastic_keras budget RUN_DIR`.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def find_runs(root):
    """(finished, unfinished) run directories under `root`, sorted."""
    finished, unfinished = [], []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "results.json" in files:
            finished.append(folder)
            dirs[:] = []  # checkpoints and logs below a run are not runs
        elif "config.json" in files:
            unfinished.append(folder)
    return sorted(finished), sorted(unfinished)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="e.g. runs/paper")
    p.add_argument("--criterion", choices=("max_prob", "entropy"), default="max_prob")
    p.add_argument("--n-thresholds", type=int, default=21)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--macs-convention", choices=("full", "bai"), default="full")
    args = p.parse_args(argv)

    if not os.path.isdir(args.root):
        print(f"error: no runs directory {args.root} (train something first, or set PROFILE)",
              file=sys.stderr)
        return 2
    finished, unfinished = find_runs(args.root)
    for d in unfinished:
        print(f"skip {d}: not finished (no results.json)")
    if not finished:
        print(f"no finished runs under {args.root}")
        return 0

    from elastic_keras.errors import ElasticKerasError
    from elastic_keras.inference import budget_run
    from elastic_keras.runs import open_run

    failed = 0
    for d in finished:
        try:
            budget_run(open_run(d), criterion=args.criterion, n_thresholds=args.n_thresholds,
                       batch_size=args.batch_size, convention=args.macs_convention)
        except ElasticKerasError as e:
            failed += 1
            print(f"error: {d}: {e}", file=sys.stderr)
    print(f"budget: {len(finished) - failed} of {len(finished)} finished runs done"
          + (f", {len(unfinished)} unfinished skipped" if unfinished else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
