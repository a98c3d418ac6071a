"""Command line: python -m elastic_keras {describe,train,evaluate,reproduce,budget} ..."""

import argparse
import json
import os
import sys

from .errors import ElasticKerasError


def cmd_describe(args):
    """Per-output table of a registered model: layer, conv layers, params, MACs."""
    from .models import build_model, exit_info
    from .registry import get_spec

    spec = get_spec(args.backbone)
    model = build_model(args.backbone, args.classes, input_size=args.input_size,
                        alpha=args.alpha, weights=None, plain=args.plain)
    rows = [e.as_dict() for e in exit_info(model, args.macs_convention)]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return
    kind = "plain" if args.plain else "elastic"
    alpha = f", alpha {args.alpha if args.alpha is not None else spec.alpha}" if spec.alpha else ""
    print(f"{spec.paper_name} ({kind}{alpha}), {args.classes} classes, "
          f"{args.input_size}x{args.input_size} input, MACs convention '{args.macs_convention}'")
    header = f"{'output':<8} {'after layer':<20} {'conv':>5} {'params (M)':>11} {'MACs (G)':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['output']:<8} {r['layer']:<20} {r['conv_layers']:>5} "
              f"{r['params'] / 1e6:>11.2f} {r['macs'] / 1e9:>9.3f}")
    if not args.plain:
        print("params: up to and including each exit; the final row counts the whole elastic "
              "model, as the paper's Table II does.")


def cmd_train(args):
    """Train one config (resuming if its run directory has a partial run), then evaluate."""
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.set, profile=args.profile, protocol=args.protocol)
    if args.dry_run:
        print(json.dumps(cfg, indent=2))
        return
    train(cfg, runs_root=args.runs_root, run_dir=args.run_dir, allow_cpu=args.allow_cpu)


def cmd_evaluate(args):
    """Evaluate a trained run on its test set (best checkpoint by validation loss)."""
    from .evaluate import evaluate

    evaluate(args.run_dir)


def cmd_budget(args):
    """Accuracy vs average MACs of early-exit cascades on a finished run (budget.csv/png)."""
    from .budget import budget_run
    from .rundir import open_run

    budget_run(open_run(args.run_dir), criterion=args.criterion,
               n_thresholds=args.n_thresholds, batch_size=args.batch_size,
               convention=args.macs_convention, out_dir=args.out)


def cmd_reproduce(args):
    """Train every run of a table that is not finished, then write the table files."""
    from .reproduce import reproduce

    out = reproduce(args.table, profile=args.profile, data=args.data, data_dir=args.data_dir,
                    weights=args.weights, runs=args.runs, runs_root=args.runs_root,
                    out_dir=args.out, paper_dir=args.paper_dir, extra=args.set,
                    allow_cpu=args.allow_cpu)
    for key in ("table1", "table2"):
        print(f"wrote {out[key + '_csv']} and {out[key + '_md']}")
    print(open(out[args.table + "_md"], encoding="utf-8").read())


def build_parser():
    from .costs import CONVENTIONS

    p = argparse.ArgumentParser(prog="python -m elastic_keras", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("describe", help="exits, conv layers, parameters and MACs of a model")
    d.add_argument("backbone")
    d.add_argument("--classes", type=int, default=100)
    d.add_argument("--input-size", type=int, default=224)
    d.add_argument("--alpha", type=float, default=None, help="MobileNet width multiplier")
    d.add_argument("--plain", action="store_true", help="the baseline without exits")
    d.add_argument("--macs-convention", choices=CONVENTIONS, default="full",
                   help="'bai' leaves depthwise convolutions out, as Bai et al.'s counter did")
    d.add_argument("--format", choices=("table", "json"), default="table")
    d.set_defaults(func=cmd_describe)

    t = sub.add_parser("train", help="train a config (paper section IV-A), then evaluate")
    t.add_argument("config", help="a config file, e.g. configs/table1/cifar10-mobilenet-elastic.toml")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set phases.full.epochs=3 (repeatable)")
    t.add_argument("--profile", default=None, help="paper (default), smoke or demo")
    t.add_argument("--runs-root", default="runs")
    t.add_argument("--run-dir", default=None, help="default: RUNS_ROOT/PROFILE/DATASET/NAME")
    t.add_argument("--protocol", default=None, help="paper (default) or authors")
    t.add_argument("--allow-cpu", action="store_true",
                   help="run the paper profile even where no GPU is visible")
    t.add_argument("--dry-run", action="store_true",
                   help="print the resolved config as JSON and train nothing")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("reproduce", help="train every unfinished run of a table, then write it")
    r.add_argument("table", choices=("table1", "table2"))
    r.add_argument("--profile", default="paper", help="paper (default), smoke or demo")
    r.add_argument("--data", default=None, choices=("cifar10", "cifar100", "digits", "synthetic"),
                   help="replace each cell's dataset (synthetic keeps its class count; "
                        "digits serves the 10-class cells)")
    r.add_argument("--data-dir", default=None, help="local copy of the official CIFAR files")
    r.add_argument("--weights", default=None,
                   help="imagenet, none, a *_notop.h5 file or a folder of them (~/.keras/models)")
    r.add_argument("--runs", default=None,
                   help="comma-separated run names or backbones (default: the whole table)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--runs-root", default="runs")
    r.add_argument("--out", default="results")
    r.add_argument("--paper-dir", default=None, help="the paper's numbers (../shared/reference)")
    r.add_argument("--allow-cpu", action="store_true",
                   help="run the paper profile even where no GPU is visible")
    r.set_defaults(func=cmd_reproduce)

    e = sub.add_parser("evaluate", help="per-exit test error of a trained run")
    e.add_argument("run_dir")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("budget", help="elastic inference: test accuracy vs MACs of exit "
                                      "cascades, thresholds chosen on validation")
    b.add_argument("run_dir")
    b.add_argument("--out", default=None, help="folder for budget.csv/png (default: RUN_DIR)")
    b.add_argument("--criterion", choices=("max_prob", "entropy"), default="max_prob",
                   help="leave at an exit when max softmax >= t, or entropy <= t")
    b.add_argument("--n-thresholds", type=int, default=21,
                   help="quantiles of the validation confidences (plus both extremes)")
    b.add_argument("--batch-size", type=int, default=None,
                   help="default: the run's train.eval_batch_size")
    b.add_argument("--macs-convention", choices=CONVENTIONS, default="full")
    b.set_defaults(func=cmd_budget)
    return p


def run_script(action):
    """Run a script's `action()`, printing 'wrote <its result>'; a user error prints one
    message and gives exit status 2 (for scripts/*.py)."""
    try:
        print(f"wrote {action()}")
    except ElasticKerasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        from .environment import import_keras_quietly

        import_keras_quietly()
        args.func(args)
    except ElasticKerasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
