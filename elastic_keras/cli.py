"""Command line: python -m elastic_keras {describe,train,evaluate,budget} ..."""

import argparse
import json
import os
import sys

from .errors import ElasticKerasError


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
    return p


def main(argv=None):
    _quiet_tf()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ElasticKerasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
