"""The command line: python -m elastic_keras (or elastic-keras) COMMAND ...

Bad input ends in one line on stderr and exit status 2; a failed check, or failed runs in a
sweep, end in exit status 1.
"""

import argparse
import sys

from elastic_keras import commands as C
from elastic_keras.cli_serving import add_serving
from elastic_keras.backend.environment import import_keras_quietly
from elastic_keras.errors import ElasticKerasError, Terminated, interrupts
from elastic_keras.files import os_error_line


def _setting(p, profile_default="paper"):
    p.add_argument("--profile", default=profile_default,
                   help="paper (default), smoke or demo" if profile_default else
                   "default: that of the last reproduction under RUNS_ROOT, else paper")
    p.add_argument("--protocol", default="paper", choices=("paper", "authors"),
                   help="paper (default): the paper's text; authors: what their scripts ran")
    p.add_argument("--runs-root", default="runs")


def _overrides(p):
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set phases.full.epochs=3 (repeatable)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run the paper profile even where no GPU is visible")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config(s) as JSON and train nothing")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="N runs of each config, seeds 0..N-1 (seed 0: the run as it is; "
                        "seed s: its own run directory NAME-seedS); tables give mean and 95%% "
                        "interval over seeds")
    way = p.add_mutually_exclusive_group()  # FIDELITY.md B9
    way.add_argument("--seeds-together", dest="together", action="store_true", default=None,
                     help="under JAX, a config's seeds in one program (default on a GPU)")
    way.add_argument("--seeds-apart", dest="together", action="store_false",
                     help="the seeds one by one (default on a CPU and other backends)")


def _describe(sub):
    from elastic_keras.model.costs import CONVENTIONS

    d = sub.add_parser("describe", help="exits, conv layers, parameters and MACs of a model")
    d.add_argument("backbone")
    d.add_argument("--classes", type=int, default=100)
    d.add_argument("--input-size", type=int, default=224)
    d.add_argument("--alpha", type=float, default=None, help="MobileNet width multiplier")
    d.add_argument("--plain", action="store_true", help="the baseline without exits")
    d.add_argument("--macs-convention", choices=CONVENTIONS, default="full",
                   help="'bai' leaves depthwise convolutions out, as Bai et al.'s counter did")
    d.add_argument("--format", choices=("table", "json"), default="table")
    d.set_defaults(func=C.cmd_describe)


def _train(sub):
    sub.add_parser("configs", help="list the configs shipped with the package").set_defaults(
        func=C.cmd_configs)
    t = sub.add_parser("train", help="train a config (paper section IV-A), then evaluate it")
    t.add_argument("config", help="a config name (see the `configs` command) or a TOML file")
    _setting(t, profile_default=None)
    t.add_argument("--run-dir", default=None, help="default: RUNS_ROOT/SETTING/DATASET/NAME")
    _overrides(t)
    t.set_defaults(func=C.cmd_train)
    e = sub.add_parser("evaluate", help="per-exit test error of a trained run")
    e.add_argument("run_dir")
    e.set_defaults(func=C.cmd_evaluate)


def _reproduce(sub):
    from elastic_keras.data.datasets import DATASETS
    from elastic_keras.sweep.launchers import LAUNCHERS

    r = sub.add_parser("reproduce", help="train every unfinished run of a table, then write it")
    r.add_argument("table", choices=("table1", "table2", "methods"),
                   help="methods: the papers' loss weightings compared on one backbone")
    _setting(r)
    r.add_argument("--data", default=None, choices=DATASETS,
                   help="each cell's data instead (synthetic: its class count; digits: 10)")
    r.add_argument("--data-dir", default=None, help="local copy of the official CIFAR files")
    r.add_argument("--weights", default=None,
                   help="imagenet, none, a *_notop.h5 file or a folder of them (~/.keras/models)")
    r.add_argument("--runs", default=None,
                   help="comma-separated run names or backbones (default: the whole table)")
    r.add_argument("--out", default="results")
    r.add_argument("--backbone", default="mobilenet",
                   help="methods: the backbone whose elastic run each scheme varies")
    r.add_argument("--schemes", default=None,
                   help="methods: comma-separated loss schemes to train (default: all)")
    r.add_argument("--launcher", default="local", choices=LAUNCHERS,
                   help="local: runs one after another here; ray: Ray tasks (RAY_ADDRESS)")
    r.add_argument("--gpus-per-run", type=float, default=None,
                   help="ray: GPU share of each run (0.25: four per GPU; default 1)")
    r.add_argument("--cpus-per-run", type=float, default=1.0, help="ray: CPUs of each run")
    _overrides(r)
    r.set_defaults(func=C.cmd_reproduce)


def _report(sub):
    from elastic_keras.model.costs import CONVENTIONS

    t = sub.add_parser("tables", help="Tables I and II from finished runs, the paper's beside")
    _setting(t, profile_default=None)
    t.add_argument("--data", default=None, help="the data the runs used (synthetic, digits)")
    t.add_argument("--out", default="results")
    t.add_argument("--compute-missing", action="store_true",
                   help="Table II: conv layers and params of missing runs from the model")
    t.add_argument("--check", type=float, default=None, metavar="TOL",
                   help="exit 1 when a test error of ours differs from the paper's by more "
                        "than TOL points")
    t.set_defaults(func=C.cmd_tables)
    f = sub.add_parser("figure3", help="Figure 3: loss curves of the CIFAR-10 DenseNet-121 runs")
    _setting(f, profile_default=None)
    f.add_argument("--data", default=None)
    f.add_argument("--out", default=None, help="default: results/[PREFIX]figure3.png")
    f.set_defaults(func=C.cmd_figure3)
    b = sub.add_parser("bai-table2", help="Bai et al. Table II: MACs per exit, beside theirs")
    b.add_argument("--out", default="results")
    b.set_defaults(func=C.cmd_bai_table2)
    g = sub.add_parser("budget", help="elastic inference: test accuracy vs MACs of exit "
                                      "cascades, thresholds chosen on validation")
    g.add_argument("path", help="a finished run, or a folder of runs (e.g. runs/paper)")
    g.add_argument("--out", default=None, help="folder for budget.csv/png (default: the run's)")
    g.add_argument("--criterion", choices=("max_prob", "entropy"), default="max_prob")
    g.add_argument("--n-thresholds", type=int, default=21,
                   help="quantiles of the validation confidences (plus both extremes)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="default: the run's train.eval_batch_size")
    g.add_argument("--macs-convention", choices=CONVENTIONS, default="full")
    g.add_argument("--cost", choices=("macs", "latency"), default="macs",
                   help="x-axis: MACs, or measured ms per image from latency.csv")
    g.add_argument("--latency", default=None,
                   help="latency.csv to use (default: the one in RUN/export-*/)")
    g.set_defaults(func=C.cmd_budget)
    _calibrate(sub)
    p = sub.add_parser("plot", help="loss and accuracy of every exit of a run, as a PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="default: RUN_DIR/curves.png")
    p.set_defaults(func=C.cmd_plot)


def _calibrate(sub):
    c = sub.add_parser("calibrate", help="per-exit temperatures and the cheapest early-exit "
                                         "threshold whose risk is certified (calibration.json)")
    c.add_argument("source", help="a finished run directory, or an export (on its own outputs)")
    c.add_argument("--epsilon", type=float, default=0.02, help="risk level (default 0.02)")
    c.add_argument("--delta", type=float, default=0.1,
                   help="ltt/ucb: the guarantee fails with probability at most delta")
    c.add_argument("--risk", choices=("drop", "disagreement"), default="drop",
                   help="drop: accuracy lost against the final exit; disagreement: the early "
                        "prediction differs from the final one")
    c.add_argument("--method", choices=("ltt", "ucb", "crc"), default="ltt",
                   help="ltt: Learn-then-Test; ucb: upper confidence bounds (both P(risk <= "
                        "epsilon) >= 1 - delta); crc: conformal risk control (E[risk] <= "
                        "epsilon)")
    budget = c.add_mutually_exclusive_group()
    budget.add_argument("--max-macs", type=float, default=None,
                        help="budget mode: mean MACs per image; reports the certified bound")
    budget.add_argument("--max-ms", type=float, default=None,
                        help="budget mode: mean milliseconds per image, each exit's path as "
                             "`latency` measured it (per image, largest batch)")
    c.add_argument("--latency", default=None,
                   help="a latency.csv (default: the one RUN/export-*/latency.csv)")
    c.add_argument("--fit-fraction", type=float, default=0.3,
                   help="share of the validation split that fits the temperatures; the rest "
                        "certifies (default 0.3)")
    c.add_argument("--seed", type=int, default=0, help="seed of that split")
    c.set_defaults(func=C.cmd_calibrate)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m elastic_keras", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_describe, _train, _reproduce, _report, add_serving):
        add(sub)
    return p


def _needs_network(args):
    """Whether a command builds or runs a network, so imports Keras first (FIDELITY.md R13):
    not configs, --dry-run, tables (but --compute-missing), reproduce (its launcher does),
    serve (only to export a run)."""
    if getattr(args, "dry_run", False) or args.command in ("configs", "reproduce", "serve"):
        return False
    return args.func is not C.cmd_tables or args.compute_missing


def main(argv=None):
    """Parse, run a command; bad input or an OS error: one line, exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        with interrupts():
            if _needs_network(args):
                import_keras_quietly()
            return args.func(args)
    except ElasticKerasError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the one place an OS error becomes a line (FIDELITY.md R11)
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what, status = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else (
            "interrupted", 130)
        print(f"{what}: " + ("every finished epoch is kept; the same command resumes" if
                             args.command in ("train", "reproduce") else "stopped"), file=sys.stderr)
        return status
