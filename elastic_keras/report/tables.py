"""Tables I and II of the paper from finished runs, the paper's numbers beside ours, and --check."""

import math
from dataclasses import dataclass

from elastic_keras.report import paper
from elastic_keras.runs.config import PROTOCOLS
from elastic_keras.errors import ElasticKerasError
from elastic_keras.report.intervals import interval, paired
from elastic_keras.report.sources import UNLIKE, marks, measured_on, source_run
from elastic_keras.runs.names import CIFAR_SETS, RunName, seed_name

TABLE1_DATASETS = CIFAR_SETS  # Table I's column groups, in the paper's order


@dataclass(frozen=True)
class Row:
    """One row of Table I: its label, the backbone of its runs, its row in the paper."""

    model: str
    backbone: str
    paper_model: str
    plain_backbone: str = ""  # the baseline's backbone, when not the row's own

    @property
    def baseline(self):
        return self.plain_backbone or self.backbone


TABLE1_ROWS = (
    Row("DenseNet-121", "densenet121", "DenseNet-121"),
    Row("DenseNet-169", "densenet169", "DenseNet-169"),
    Row("InceptionV3", "inceptionv3", "InceptionV3"),
    Row("MobileNet", "mobilenet", "MobileNet"),
    # The paper's MobileNet numbers came from the authors' alpha-0.75 variant (FIDELITY.md A8).
    Row("MobileNet (authors' code)", "mobilenet_authors", "MobileNet"),
    Row("VGG-16", "vgg16", "VGG-16"),
    Row("ResNet-50", "resnet50", "ResNet-50"),
    # ResNet-50-5's baseline is plain ResNet-50: the paper prints the same numbers (FIDELITY.md G2).
    Row("ResNet-50-5", "resnet50_5", "ResNet-50-5", plain_backbone="resnet50"),
)
TABLE2_DATASET, TABLE2_ELASTIC, TABLE2_PLAIN = "cifar100", "densenet169", ("densenet169",
                                                                             "densenet121")


def run_name(dataset: str, backbone: str, plain: bool) -> str:
    """The run (and packaged config) name of a table cell: cifar10-mobilenet-elastic."""
    return str(RunName(dataset, backbone, plain))


def table1_rows(protocol="paper"):
    """The rows of Table I. Under a protocol that swaps a backbone for its authors' variant
    (--protocol authors), the variant's own row would train the same runs twice: dropped."""
    swapped = set(PROTOCOLS[protocol]["backbones"].values())
    return [r for r in TABLE1_ROWS if r.backbone not in swapped]


def table_runs(table, protocol="paper"):
    """The run names of a table, in order."""
    if table == "table2":
        return [run_name(TABLE2_DATASET, TABLE2_ELASTIC, False)] + [
            run_name(TABLE2_DATASET, b, True) for b in TABLE2_PLAIN]
    if table != "table1":
        raise ElasticKerasError(f"unknown table {table!r}; valid: table1, table2")
    names = [run_name(ds, b, plain) for ds in TABLE1_DATASETS for r in table1_rows(protocol)
             for b, plain in ((r.backbone, False), (r.baseline, True))]
    return list(dict.fromkeys(names))


def improvement_pct(without, with_):
    """The paper's "Improvement" (Table I): (err_without - err_with) / err_without, in %, from
    unrounded errors (FIDELITY.md G1)."""
    if math.isnan(without) or math.isnan(with_) or without == 0:
        return math.nan
    return 100.0 * (without - with_) / without


def table_cells(table, setting):
    """The cells of a table that the setting's data can serve (digits: the CIFAR-10 ones)."""
    from elastic_keras.data.datasets import serves

    return [n for n in table_runs(table, setting.protocol)
            if serves(setting.data, RunName.parse(n).dataset)]


def seeded(cells, seeds):
    """The run names of `cells`, seeds 0..seeds-1 (seed 0: the cell's own)."""
    return [seed_name(n, s) for n in cells for s in range(seeds)]


def _cell(row, ds, key, runs, src, seeds):
    """Ours ({seed: error} and their interval), the paper's, their difference (like with
    like only), and the paper's marks."""
    backbone, plain = (row.baseline, True) if key == "without" else (row.backbone, False)
    name = run_name(ds, backbone, plain)
    per_seed = runs.seeds_of(ds, name, seeds)
    ours = interval(per_seed.values())
    found = marks(src, name, runs.protocol)
    diff = ours.mean - src["paper"] if not UNLIKE & set(found) else math.nan
    return per_seed, ours, src["paper"], diff, found


def _group(out, row, ds, runs, sources, printed, seeds):
    """The columns of one dataset group of a row; with seeds > 1 also each number's 95%
    interval and n, and the improvement and with - without per seed pair (FIDELITY.md G17)."""
    errors = {}
    for key in ("without", "with"):
        errors[key], ours, theirs, diff, mark = _cell(
            row, ds, key, runs, sources[(row.paper_model, ds, key)], seeds)
        out.update({f"{ds}_{key}": ours.mean, f"{ds}_{key}_paper": theirs,
                    f"{ds}_{key}_diff": diff, f"{ds}_{key}_mark": mark})
        if seeds > 1:
            out.update({f"{ds}_{key}_ci95": ours.half, f"{ds}_{key}_n": ours.n})
    imp = paired(errors["without"], errors["with"], improvement_pct)
    imp_paper = printed[row.paper_model][f"{ds}_improvement_pct"]
    like = not UNLIKE & set(out[f"{ds}_without_mark"] + out[f"{ds}_with_mark"])
    out.update({f"{ds}_improvement_pct": imp.mean, f"{ds}_improvement_pct_paper": imp_paper,
                f"{ds}_improvement_pct_diff": imp.mean - imp_paper if like else math.nan})
    if seeds > 1:
        gap = paired(errors["without"], errors["with"], lambda without, with_: with_ - without)
        out.update({f"{ds}_improvement_pct_ci95": imp.half, f"{ds}_improvement_pct_n": imp.n,
                    f"{ds}_with_minus_without": gap.mean, f"{ds}_with_minus_without_ci95":
                    gap.half, f"{ds}_with_minus_without_n": gap.n})


def table1(runs, seeds=None):
    """Table I (paper section IV-B) from `runs` (a Runs): final-exit test error without and
    with exits, improvement, the paper's numbers and marks. Every finished run of the
    setting (FIDELITY.md G9): every row, every dataset group the data serves, each number
    over every finished seed (`seeds`: detected; > 1: the mean with its 95% interval); a
    cell without a finished run is blank. Returns (rows, like-with-like comparisons)."""
    sources = {(s["model"], s["dataset"], s["column"]): s for s in paper.table1_sources()}
    printed = paper.table1()
    cells = table_cells("table1", runs.setting)
    seeds = seeds or runs.seed_count(cells)
    groups = [ds for ds in TABLE1_DATASETS if any(n.startswith(ds + "-") for n in cells)]
    rows = []
    for row in table1_rows(runs.protocol):
        names = [run_name(ds, b, p) for ds in groups
                 for b, p in ((row.baseline, True), (row.backbone, False))]
        out = {"setting": runs.setting.folder, "dataset": runs.setting.data or "/".join(groups),
               "model": row.model, "backbone": row.backbone}
        for ds in groups:
            _group(out, row, ds, runs, sources, printed, seeds)
        out["environment"] = runs.environments(seeded(names, seeds))
        rows.append(out)
    shown = {r["model"] for r in rows}
    return rows, like_with_like(runs, set(cells), groups,
                                {row.paper_model for row in TABLE1_ROWS if row.model in shown},
                                seeds)


def like_with_like(runs, cells, groups, models, seeds=1):
    """Each paper number of Table I (of the `models` shown) beside the run and exit of ours
    it was measured on (the mean over its finished seeds)."""
    found = []
    for src in paper.table1_sources():
        name = source_run(src, runs.protocol)
        if src["dataset"] not in groups or src["model"] not in models:
            continue
        if name is None or name not in cells:
            status, ours = ("measured at another input size" if name is None else
                            "no matching run in this table"), math.nan
        else:
            exit_kind = "penultimate" if src["exit"] == "penultimate" else "final"
            ours = interval(runs.seeds_of(src["dataset"], name, seeds, exit_kind).values()).mean
            status = runs.seen[name][0]
        found.append({**src, "ours_run": name or "", "ours": ours, "status": status,
                      "diff": ours - src["paper"],
                      "marks": marks(src, measured_on(src, runs.protocol), runs.protocol)})
    return found


def table2(runs, compute_missing=False, seeds=None):
    """Table II (paper section IV-B): CIFAR-100 error of each Elastic-DenseNet-169 exit
    (named after its convolution layers, params up to and including it, the last row the
    whole elastic model), then plain DenseNet-169 and DenseNet-121; the paper's rows beside
    (elastic rows by depth order, plain rows by name; FIDELITY.md G10). compute_missing:
    conv layers and params of a missing run from the model definition (224 px, 100 classes;
    FIDELITY.md G11). Each error over every finished seed (detected; G9, G16)."""
    from elastic_keras.model.registry import get_spec

    seeds = seeds or runs.seed_count(table_cells("table2", runs.setting))
    printed = paper.table2()
    elastic_paper = [r for r in printed if r["model"].startswith("Elastic-")]
    rows = []

    def add(model, conv, params, source, err, p, spread=None):
        err = err if spread is None else spread.mean
        rows.append({"setting": runs.setting.folder,
                     "dataset": runs.setting.data or TABLE2_DATASET,
                     "model": model, "conv_layers": conv, "params_millions": params / 1e6,
                     "counts_source": source, "cifar100_error_pct": err,
                     "conv_layers_paper": p.get("conv_layers", math.nan),
                     "params_millions_paper": p.get("params_millions", math.nan),
                     "cifar100_error_pct_paper": p.get("cifar100_error_pct", math.nan),
                     "cifar100_error_pct_diff": err - p.get("cifar100_error_pct", math.nan),
                     **({} if spread is None else {"cifar100_error_pct_ci95": spread.half,
                                                   "cifar100_error_pct_n": spread.n})})

    for backbone, plain in [(TABLE2_ELASTIC, False)] + [(b, True) for b in TABLE2_PLAIN]:
        spec = get_spec(backbone)
        name = run_name(TABLE2_DATASET, backbone, plain)
        exits = _table2_exits(runs.get(TABLE2_DATASET, name), backbone, plain, compute_missing)
        over = runs.exit_errors(TABLE2_DATASET, name, seeds, len(exits)) if seeds > 1 else None
        for i, (conv, params, source, err) in enumerate(exits if not plain else exits[-1:]):
            spread = over and over[-1 if plain else i]
            if plain:
                add(spec.paper_name, conv, params, source, err,
                    next((r for r in printed if r["model"] == spec.paper_name), {}), spread)
                continue
            p = elastic_paper[i] if i < len(elastic_paper) else {}
            name = (f"Elastic-{spec.paper_name}-output-{int(conv)}" if not math.isnan(conv)
                    else p.get("model", f"Elastic-{spec.paper_name}-exit-{i + 1}"))
            add(name, conv, params, source, err, p, spread)
    return rows


def _table2_exits(results, backbone, plain, compute_missing):
    """(conv layers, params, where they come from, test error) of each exit of a run."""
    if results is not None:
        return [(e["conv_layers"], e["params"], "run", e["test_error_pct"])
                for e in results["exits"]]
    if compute_missing:
        from elastic_keras.model.factory import build_model
        from elastic_keras.model.exits import exit_info

        model = build_model(backbone, 100, input_size=224, weights=None, plain=plain)
        return [(e.conv_layers, e.params, "computed", math.nan) for e in exit_info(model)]
    from elastic_keras.model.registry import get_spec

    return [(math.nan, math.nan, "", math.nan)] * (1 if plain else get_spec(backbone).num_outputs)


def check(table1_like, table2_rows, tol):
    """Our test errors that differ from the paper's by more than `tol` points, each paper
    number against the run and exit it was measured on (like detectron2's verify_results;
    FIDELITY.md G13, A8).
    Returns (violations, number compared)."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ElasticKerasError(f"tolerance must be a number >= 0, got {tol!r}")
    pairs = [(f"Table I {c['model']} {c['dataset']} {c['column']} ({c['exit']} exit of "
              f"{c['ours_run']}; theirs: {c['origin']})", c["ours"], c["paper"])
             for c in table1_like]
    pairs += [(f"Table II {r['model']}", r["cifar100_error_pct"], r["cifar100_error_pct_paper"])
              for r in table2_rows]
    compared = [(what, o, p) for what, o, p in pairs if not (math.isnan(o) or math.isnan(p))]
    violations = [f"{what}: ours {o:.2f}, paper {p:.2f}, diff {o - p:+.2f} > {tol}"
                  for what, o, p in compared if abs(o - p) > tol]
    return violations, len(compared)
