"""What each command of the command line does (cli.py parses the arguments)."""

import json
import os

from elastic_keras.errors import ElasticKerasError


def cmd_describe(args):
    """Per-output table of a registered model: layer, conv layers, params, MACs."""
    from elastic_keras.model.factory import build_model
    from elastic_keras.model.exits import exit_info
    from elastic_keras.model.registry import get_spec

    spec = get_spec(args.backbone)
    model = build_model(args.backbone, args.classes, input_size=args.input_size,
                        alpha=args.alpha, weights=None, plain=args.plain)
    rows = [e.as_dict() for e in exit_info(model, args.macs_convention)]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    alpha = f", alpha {args.alpha if args.alpha is not None else spec.alpha}" if spec.alpha else ""
    print(f"{spec.paper_name} ({'plain' if args.plain else 'elastic'}{alpha}), {args.classes} "
          f"classes, {args.input_size}x{args.input_size} input, MACs convention "
          f"'{args.macs_convention}'" + (f"; {spec.note}" if spec.note and not args.plain else ""))
    header = f"{'output':<8} {'after layer':<20} {'conv':>5} {'params (M)':>11} {'MACs (G)':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['output']:<8} {r['layer']:<20} {r['conv_layers']:>5} "
              f"{r['params'] / 1e6:>11.2f} {r['macs'] / 1e9:>9.3f}")
    if not args.plain:
        print("params: up to and including each exit; the final row counts the whole elastic "
              "model, as the paper's Table II does.")
    return 0


def cmd_configs(args):
    """The configs shipped with the package, one per table cell."""
    from elastic_keras.runs.config import packaged_configs

    print("\n".join(sorted(packaged_configs())))
    return 0


def cmd_train(args):
    """Train one config (resuming its run directory's partial run), then evaluate it; with
    --seeds N, its seeds, each in its own run directory (under JAX on a GPU together in one
    program: --seeds-together/--seeds-apart)."""
    from elastic_keras.runs.config import load_config
    from elastic_keras.runs.seeds import seed_configs
    from elastic_keras.runs.train import train
    from elastic_keras.sweep.reproduce import train_seeds

    cfg = load_config(args.config, args.set, profile=args.profile, protocol=args.protocol)
    configs = seed_configs(cfg, args.seeds)
    if args.dry_run:
        print(json.dumps(cfg if len(configs) == 1 else configs, indent=2))
    elif len(configs) == 1:
        train(cfg, runs_root=args.runs_root, run_dir=args.run_dir, allow_cpu=args.allow_cpu)
    else:
        return 1 if train_seeds(configs, args.runs_root, args.allow_cpu, args.run_dir,
                                together=args.together) else 0
    return 0


def cmd_evaluate(args):
    """Evaluate a trained run on its test set (best checkpoint by validation loss)."""
    from elastic_keras.runs.evaluate import evaluate

    evaluate(args.run_dir)
    return 0


def cmd_reproduce(args):
    """Train every unfinished run of a table, then write the tables."""
    from elastic_keras.sweep.launchers import make_launcher
    from elastic_keras.sweep.reproduce import reproduce

    written, failures = reproduce(
        args.table, profile=args.profile, protocol=args.protocol, data=args.data,
        data_dir=args.data_dir, weights=args.weights, runs=args.runs, runs_root=args.runs_root,
        out_dir=args.out, extra=args.set, allow_cpu=args.allow_cpu, dry_run=args.dry_run,
        seeds=args.seeds, backbone=args.backbone, schemes=args.schemes,
        launcher=make_launcher(args.launcher, args.gpus_per_run, args.cpus_per_run,
                               args.profile, args.allow_cpu, together=args.together))
    for key, (csv_path, md_path) in written.items():
        print(f"wrote {csv_path} and {md_path}")
    if args.table in written:
        with open(written[args.table][1], encoding="utf-8") as f:
            print(f.read())
    return 1 if failures else 0


def cmd_tables(args):
    """Write Tables I and II from finished runs; --check compares with the paper."""
    from elastic_keras.report.render import write_tables
    from elastic_keras.report.tables import check

    written, like, t2 = write_tables(args.runs_root, _last_setting(args), args.out,
                                     compute_missing=args.compute_missing)
    for csv_path, md_path in written.values():
        print(f"wrote {csv_path} and {md_path}")
    if args.check is None:
        return 0 if written else 1
    violations, compared = check(like, t2, args.check)
    for v in violations:
        print(f"FAIL {v}")
    if not compared:
        print("check: no finished run has a paper number to compare with; nothing checked")
        return 1
    print(f"check: {compared - len(violations)}/{compared} test errors within {args.check} "
          "points of the paper (each against the run and exit it was measured on)")
    return 1 if violations else 0


def _last_setting(args):
    """The Setting of --profile/--protocol/--data, else of the last reproduction under the
    runs root."""
    from elastic_keras.runs.names import Setting

    previous = Setting.last(args.runs_root)
    if args.profile is None and previous:
        print(f"using profile {previous.profile}, data {previous.data or 'cifar'} "
              "(the last reproduction; --profile/--data choose others)")
        return Setting(previous.profile, args.protocol, args.data or previous.data)
    return Setting(args.profile or "paper", args.protocol, args.data)


def cmd_figure3(args):
    """Figure 3 of the paper from the CIFAR-10 DenseNet-121 runs' histories."""
    from elastic_keras.report.plots import figure3

    setting = _last_setting(args)
    out = args.out or os.path.join("results", setting.prefix + "figure3.png")
    print(f"wrote {figure3(args.runs_root, setting, out)}")
    return 0


def cmd_bai_table2(args):
    """Bai et al.'s Table II (MACs at the first weighted and the last exit), beside theirs."""
    from elastic_keras.report.bai import bai_table2

    csv_path, md_path, ok = bai_table2(args.out)
    print(f"wrote {csv_path} and {md_path}")
    return 0 if ok else 1


def cmd_budget(args):
    """Accuracy against average MACs of exit cascades, for a run or every run under a folder."""
    from elastic_keras.report.budget import budget_path

    budget_path(args.path, criterion=args.criterion, n_thresholds=args.n_thresholds,
                batch_size=args.batch_size, convention=args.macs_convention, out_dir=args.out,
                cost=args.cost, latency=args.latency)
    return 0


def cmd_calibrate(args):
    """Temperatures per exit and a certified threshold for a finished run, or for an export
    on its own outputs (written into the export)."""
    from elastic_keras.inference.calibration import CALIBRATION_JSON
    from elastic_keras.inference.runtimes import is_export
    from elastic_keras.report.reliability import write_reliability
    from elastic_keras.runs import calibrate as c
    from elastic_keras.runs.found import open_run
    from elastic_keras.runs.recertify import calibrate_export

    ask = dict(epsilon=args.epsilon, delta=args.delta, risk=args.risk, method=args.method,
               max_macs=args.max_macs, max_ms=args.max_ms, seed=args.seed,
               fit_fraction=args.fit_fraction, latency=args.latency)
    if is_export(args.source):
        out, folder = calibrate_export(args.source, **ask), args.source
    else:
        run = open_run(args.source)
        out, folder = c.calibrate_run(run, **ask), run.dir
    name = os.path.basename(os.path.normpath(folder))
    write_reliability(os.path.join(folder, c.RELIABILITY_PNG), out["reliability"],
                      f"{name}: reliability per exit (calibration part of validation)")
    print("\n".join(c.summary(out)))
    print("wrote " + ", ".join(os.path.join(folder, f) for f in (
        CALIBRATION_JSON, c.CALIBRATION_CSV, c.RELIABILITY_PNG))
        + (" and the export's manifest.json" if is_export(args.source) else ""))
    return 0


def cmd_plot(args):
    """Loss and accuracy of every exit of a run, as a PNG."""
    from elastic_keras.report.plots import plot_run
    from elastic_keras.runs.found import open_run

    print(f"wrote {plot_run(open_run(args.run_dir), args.out)}")
    return 0


def cmd_export(args):
    """Export a run or .keras file: cascade, one predictor per exit, manifest.json."""
    from elastic_keras.runs.quantized import quantize_options
    from elastic_keras.runs.serve import export_source

    export_source(args.source, args.format, args.out, quantize=quantize_options(args))
    return 0


def cmd_latency(args):
    """Measure an export's latency per exit path and per predictor; write latency.csv."""
    from elastic_keras.inference.latency import measure, write_latency
    from elastic_keras.runs.serve import open_export

    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1 or args.repeats < 1:
        raise ElasticKerasError(f"--batch must be positive integers like 1,32 and --repeats "
                                f"positive, got {args.batch!r} and {args.repeats}")
    exported = open_export(args.source, args.format)
    print(exported.in_force()["line"])
    rows = measure(exported, batches, args.repeats)
    for r in rows:
        ms = f"p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms" if r.get("p50_ms") else \
            r.get("note")
        print(f"{r['kind']:<12} {r['exit']:<8} batch {r['batch']:>3}: {ms}")
    print(f"wrote {write_latency(exported, rows)} ({exported.format} on {rows[0]['device']})")
    return 0


def cmd_predict(args):
    """Classify image files through an export or a run; non-zero exit if a file was bad."""
    from elastic_keras.inference.images import as_json, classify, line
    from elastic_keras.runs.serve import cascade_runner

    run, shape, meta = cascade_runner(args.source, args.runtime)
    threshold = args.threshold if args.threshold is not None else meta["threshold"]
    chosen = ("from --threshold" if args.threshold is not None else
              meta.get("chosen") or "chosen by the source's calibration or budget")
    if threshold is None:  # no early exit without a chosen threshold (FIDELITY.md I34)
        threshold = 2.0 if meta["criterion"] == "max_prob" else -1.0
        chosen = ("none was chosen (no budget or calibration), so every image goes to the "
                  "final exit")
    results, errors, note = classify(run, args.images, shape, threshold, meta["class_names"],
                                     meta["output_names"])
    if args.format == "json":
        print(as_json(results, errors, note, threshold))
    else:
        print(f"threshold {threshold:g}, {chosen}; criterion {meta['criterion']}")
        for text in ([note] if note else []) + [line(r) for r in results] + errors:
            print(text)
    return 1 if errors else 0
