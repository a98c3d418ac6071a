"""Tables I and II of the paper from run directories: results/<prefix>table{1,2}.{csv,md}.

Usage:
    python scripts/make_tables.py --profile paper
    python scripts/make_tables.py --profile smoke --dataset-tag synthetic --out results
    python scripts/make_tables.py --profile paper --check 1.0   # non-zero if |ours - paper| > 1

Exit status: 0 ok; 1 --check found a difference above the tolerance (or nothing to check);
2 bad input (message on stderr).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from elastic_keras.errors import ElasticKerasError  # noqa: E402
from elastic_keras.tables import (PAPER_DIR_ENV, check_against_paper,  # noqa: E402
                                  default_paper_dir, write_tables)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", required=True, help="paper, smoke or demo")
    p.add_argument("--dataset-tag", default=None,
                   help="folder under RUNS_ROOT/PROFILE holding the runs (e.g. synthetic, digits); "
                        "default: cifar10 for the CIFAR-10 columns, cifar100 for CIFAR-100")
    p.add_argument("--runs-root", default="runs")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--prefix", default=None,
                   help="file name prefix; default '' for the paper profile, "
                        "'<profile>-<tag>-' otherwise")
    p.add_argument("--paper-dir", default=None,
                   help=f"folder with the paper's table1.csv/table2.csv; default ${PAPER_DIR_ENV} "
                        "or <repo>/../shared/reference")
    p.add_argument("--compute-missing", action="store_true",
                   help="Table II: fill conv layers / params of missing runs from the model "
                        "definition (builds the models, ~15 s)")
    p.add_argument("--check", type=float, default=None, metavar="TOL",
                   help="exit 1 when an available test error differs from the paper's by more "
                        "than TOL points")
    return p


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    try:
        out = write_tables(args.runs_root, args.profile, args.dataset_tag, out_dir=args.out,
                           paper_dir=args.paper_dir or default_paper_dir(), prefix=args.prefix,
                           compute_missing=args.compute_missing)
        for key in ("table1_csv", "table1_md", "table2_csv", "table2_md"):
            print(f"wrote {out[key]}")
        if args.check is None:
            return 0
        violations, checked = check_against_paper(out, args.check)
    except ElasticKerasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for v in violations:
        print(f"FAIL {v}")
    if checked == 0:
        print("check: no test error of ours has a paper value to compare with; nothing checked")
        return 1
    print(f"check: {checked - len(violations)}/{checked} test errors within {args.check} points "
          "of the paper")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
