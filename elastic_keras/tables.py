"""Tables I and II of the paper, gathered from run directories, with the paper's numbers beside ours."""

import csv
import io as _io
import math
import os

from . import files
from .errors import ElasticKerasError
from .registry import TABLE1_BACKBONES, get_spec
from .rundir import HISTORY, RunDir

DATASETS = ("cifar10", "cifar100")  # Table I's column groups, in the paper's order
DATASET_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
TABLE2_DATASET = "cifar100"
TABLE2_ELASTIC = "densenet169"  # Table II: every exit of Elastic-DenseNet-169 ...
TABLE2_PLAIN = ("densenet169", "densenet121")  # ... beside these plain networks
PAPER_DIR_ENV = "ELASTIC_PAPER_DIR"
BLANK = "—"  # markdown cell of a number we do not have

# Missing or unfinished runs leave our cells blank; paper numbers never fill them.
MISSING, UNFINISHED, FINISHED = "missing", "unfinished", "finished"


# ---------------------------------------------------------------------------------------
# Locating runs and the paper's numbers


def run_name(dataset, backbone, plain):
    """The run (and config) name of one Table I cell: `{dataset}-{backbone}-{elastic|plain}`."""
    return f"{dataset}-{backbone}-{'plain' if plain else 'elastic'}"


def run_path(runs_root, profile, dataset_tag, dataset, name):
    """runs_root/<profile>/<tag>/<name>; with no tag, the tag is the CIFAR dataset itself."""
    return os.path.join(os.fspath(runs_root), profile, dataset_tag or dataset, name)


def load_run(runs_root, profile, dataset_tag, dataset, name):
    """(status, results or None) of one run; results only when the run is finished.

    A finished run whose results.json names another profile or dataset than the one asked
    for is refused: the tables say which profile and data produced them.
    """
    path = run_path(runs_root, profile, dataset_tag, dataset, name)
    if not os.path.isdir(path):
        return MISSING, None
    run = RunDir(path)
    if not run.finished:
        return UNFINISHED, None
    res = run.results
    expected = {"profile": profile, "dataset": dataset_tag or dataset}
    for key, want in expected.items():
        if key in res and res[key] != want:
            raise ElasticKerasError(
                f"{path}: results.json says {key} {res[key]!r}, but the table is for "
                f"{key} {want!r}; move the run or pass the matching --profile/--dataset-tag")
    return FINISHED, res


def default_paper_dir():
    """$ELASTIC_PAPER_DIR, else <repo>/../shared/reference."""
    env = os.environ.get(PAPER_DIR_ENV)
    if env:
        return env
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(os.path.dirname(repo), "shared", "reference")


def read_paper(paper_csv):
    """The paper's table as {model: {column: float or str}}, or None when the file is absent."""
    if paper_csv is None or not os.path.isfile(paper_csv):
        return None
    with open(paper_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "model" not in rows[0]:
        raise ElasticKerasError(f"paper table {paper_csv}: expected a 'model' column")
    return {r["model"]: {k: _num(v) for k, v in r.items() if k != "model"} for r in rows}


def _num(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _nan(x):
    return x is None or (isinstance(x, float) and math.isnan(x))


def _sub(a, b):
    return math.nan if _nan(a) or _nan(b) else a - b


def improvement_pct(without, with_):
    """The paper's "Improvement" (Table I): (err_without - err_with) / err_without, in %."""
    if _nan(without) or _nan(with_) or without == 0:
        return math.nan
    return 100.0 * (without - with_) / without


def final_error(results):
    """Final-exit test error (%) of a finished run."""
    if results is None:
        return math.nan
    if "final_test_error_pct" in results:
        return float(results["final_test_error_pct"])
    return float(results["exits"][-1]["test_error_pct"])


# ---------------------------------------------------------------------------------------
# Table I


def table1(runs_root, profile, dataset_tag=None, paper_csv=None):
    """Table I (paper section IV-B): final-exit test error without / with exits, both CIFARs.

    Rows in the paper's order. Our columns `{ds}_without`, `{ds}_with`,
    `{ds}_improvement_pct`; the paper's the same with `_paper`; `_diff` = ours - paper.
    ResNet-50-5's "without" is the plain ResNet-50 run, as in the paper. dataset_tag: the
    folder under runs_root/<profile>/ holding the runs; None means each column group's
    own dataset (cifar10, cifar100). Returns a pandas DataFrame (NaN = not available);
    `df.attrs["runs"]` maps each run looked for to (status, path).
    """
    import pandas as pd

    paper = read_paper(paper_csv)
    runs, rows = {}, []
    for backbone in TABLE1_BACKBONES:
        spec = get_spec(backbone)
        # ResNet-50-5 shares its baseline with ResNet-50 (the paper repeats 5.54 / 21.96).
        plain_backbone = "resnet50" if backbone == "resnet50_5" else backbone
        row = {"profile": profile, "dataset": _dataset_label(dataset_tag),
               "model": spec.paper_name, "backbone": backbone}
        p = (paper or {}).get(spec.paper_name, {})
        for ds in DATASETS:
            ours = {}
            for key, bb, plain in (("without", plain_backbone, True), ("with", backbone, False)):
                name = run_name(ds, bb, plain)
                status, res = load_run(runs_root, profile, dataset_tag, ds, name)
                runs[name] = (status, run_path(runs_root, profile, dataset_tag, ds, name))
                ours[key] = final_error(res)
            ours["improvement_pct"] = improvement_pct(ours["without"], ours["with"])
            for key in ("without", "with", "improvement_pct"):
                row[f"{ds}_{key}"] = ours[key]
            for key in ("without", "with", "improvement_pct"):
                row[f"{ds}_{key}_paper"] = p.get(f"{ds}_{key}", math.nan)
            for key in ("without", "with", "improvement_pct"):
                row[f"{ds}_{key}_diff"] = _sub(row[f"{ds}_{key}"], row[f"{ds}_{key}_paper"])
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["runs"] = runs
    df.attrs["paper"] = paper is not None
    return df


def _dataset_label(dataset_tag):
    """The `dataset` column: the tag, or both CIFARs when each group reads its own."""
    return dataset_tag or "cifar10/cifar100"


# ---------------------------------------------------------------------------------------
# Table II


def table2(runs_root, profile, dataset_tag=None, paper_csv=None, compute_missing=False):
    """Table II (paper section IV-B): CIFAR-100 error of each Elastic-DenseNet-169 exit.

    One row per exit of the elastic DenseNet-169 run (named after its convolution layers,
    as the paper does), then plain DenseNet-169 and DenseNet-121. `params_millions`
    follows the paper: everything up to and including the exit, the final elastic row the
    whole elastic model (`exits[i]["params"]`). Elastic rows meet the paper's rows by
    depth order. compute_missing: fill conv layers / params of a missing run from the
    model definition (224x224, 100 classes, no training); `counts_source` says "run" or
    "computed". The error of a missing run is always blank.
    """
    import pandas as pd

    paper = read_paper(paper_csv)
    paper_rows = list((paper or {}).items())
    paper_elastic = [(k, v) for k, v in paper_rows if k.startswith("Elastic-")]
    runs, rows = {}, []
    label = dataset_tag or TABLE2_DATASET

    def row(model, conv, params, source, err, p):
        return {"profile": profile, "dataset": label, "model": model,
                "conv_layers": conv, "params_millions": params, "counts_source": source,
                "cifar100_error_pct": err,
                "conv_layers_paper": p.get("conv_layers", math.nan),
                "params_millions_paper": p.get("params_millions", math.nan),
                "cifar100_error_pct_paper": p.get("cifar100_error_pct", math.nan),
                "cifar100_error_pct_diff": _sub(err, p.get("cifar100_error_pct", math.nan))}

    # Elastic-DenseNet-169: one row per exit.
    spec = get_spec(TABLE2_ELASTIC)
    name = run_name(TABLE2_DATASET, TABLE2_ELASTIC, False)
    status, res = load_run(runs_root, profile, dataset_tag, TABLE2_DATASET, name)
    runs[name] = (status, run_path(runs_root, profile, dataset_tag, TABLE2_DATASET, name))
    if res is not None:
        exits = [(e["conv_layers"], e["params"], "run", e["test_error_pct"]) for e in res["exits"]]
    elif compute_missing:
        exits = [(e.conv_layers, e.params, "computed", math.nan)
                 for e in _computed_exits(TABLE2_ELASTIC, plain=False)]
    else:
        exits = [(math.nan, math.nan, "", math.nan)] * spec.num_outputs
    for i, (conv, params, source, err) in enumerate(exits):
        pname, p = paper_elastic[i] if i < len(paper_elastic) else (None, {})
        if not _nan(conv):
            model = f"Elastic-{spec.paper_name}-output-{int(conv)}"
        else:  # no count of ours: the paper's row name at that depth, else the exit index
            model = pname or f"Elastic-{spec.paper_name}-exit-{i + 1}"
        rows.append(row(model, conv, _millions(params), source, _float(err), p))

    # The plain baselines: their single (final) exit.
    for backbone in TABLE2_PLAIN:
        spec = get_spec(backbone)
        name = run_name(TABLE2_DATASET, backbone, True)
        status, res = load_run(runs_root, profile, dataset_tag, TABLE2_DATASET, name)
        runs[name] = (status, run_path(runs_root, profile, dataset_tag, TABLE2_DATASET, name))
        if res is not None:
            e = res["exits"][-1]
            conv, params, source = e["conv_layers"], e["params"], "run"
        elif compute_missing:
            e = _computed_exits(backbone, plain=True)[-1]
            conv, params, source = e.conv_layers, e.params, "computed"
        else:
            conv, params, source = math.nan, math.nan, ""
        p = (paper or {}).get(spec.paper_name, {})
        rows.append(row(spec.paper_name, conv, _millions(params), source, final_error(res), p))

    df = pd.DataFrame(rows)
    df.attrs["runs"] = runs
    df.attrs["paper"] = paper is not None
    return df


def _millions(params):
    return math.nan if _nan(params) else params / 1e6


def _float(x):
    return math.nan if _nan(x) else float(x)


def _computed_exits(backbone, plain):
    """Conv layers and params from the model definition (no weights, no data)."""
    from .models import build_model, exit_info

    return exit_info(build_model(backbone, 100, input_size=224, weights=None, plain=plain))


# ---------------------------------------------------------------------------------------
# Writing


T1_FORMATS = {"without": 2, "with": 2, "improvement_pct": 2}  # decimals in the csv
T2_FORMATS = {"conv_layers": 0, "params_millions": 2, "cifar100_error_pct": 2,
              "conv_layers_paper": 0, "params_millions_paper": 2,
              "cifar100_error_pct_paper": 2, "cifar100_error_pct_diff": 2}


def _fmt(x, decimals, blank=""):
    if _nan(x):
        return blank
    if isinstance(x, str):
        return x
    if decimals == 0:
        return str(int(round(x)))
    s = f"{x:.{decimals}f}"
    return "0." + "0" * decimals if s == "-0." + "0" * decimals else s


def _decimals_t1(column):
    """Decimals of a Table I csv column: `{ds}_{key}[_paper|_diff]`; None for text columns."""
    for ds in DATASETS:
        if column.startswith(ds + "_"):
            key = column[len(ds) + 1:].removesuffix("_paper").removesuffix("_diff")
            return T1_FORMATS.get(key)
    return None


def to_csv_text(df, decimals):
    """CSV with fixed decimals per column, blanks for NaN: byte-identical for equal input."""
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(df.columns)
    for rec in df.to_dict("records"):
        writer.writerow([_fmt(rec[c], d) if (d := decimals(c)) is not None else
                         ("" if _nan(rec[c]) else rec[c]) for c in df.columns])
    return buf.getvalue()


def is_reproduction(profile, dataset_tag):
    """Only the paper profile on CIFAR data reproduces the paper; the rest test the pipeline."""
    return profile == "paper" and dataset_tag in (None, *DATASETS)


def _header(title, profile, dataset_tag, runs_root, paper_csv, paper_found):
    where = os.path.join(os.fspath(runs_root), profile, dataset_tag or "{cifar10,cifar100}")
    lines = [f"# {title}", "",
             f"Profile: `{profile}`; data: `{_dataset_label(dataset_tag)}`; runs: `{where}/`.", ""]
    if not is_reproduction(profile, dataset_tag):
        lines += [f"> **NOT a reproduction.** These numbers come from the `{profile}` profile "
                  f"on `{_dataset_label(dataset_tag)}` data, not from the paper's protocol on "
                  "CIFAR: they exercise the pipeline (smoke/demo) and are not comparable with "
                  "the paper's numbers beside them.", ""]
    source = (f"`{os.path.basename(paper_csv)}` (the paper's own numbers)" if paper_found
              else "not found: paper columns are blank")
    lines += ["Generated by `scripts/make_tables.py` from each run's `results.json`; never "
              f"edited by hand. Paper values: {source}. Δ = ours − paper. "
              f"{BLANK}: not available (run missing or unfinished; paper numbers never stand "
              "in for ours).", ""]
    return lines


def _runs_section(runs):
    missing = [(n, s, p) for n, (s, p) in runs.items() if s != FINISHED]
    if not missing:
        return ["All runs finished.", ""]
    lines = ["Runs not available:", ""]
    lines += [f"- `{n}`: {s} (`{p}`)" for n, s, p in missing]
    return lines + [""]


def _md_table(header, rows):
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def table1_markdown(df, profile, dataset_tag, runs_root, paper_csv):
    """Markdown of Table I: one sub-table per dataset, ours / paper / Δ side by side."""
    lines = _header("Table I: final-exit test error (%) without and with exits", profile,
                    dataset_tag, runs_root, paper_csv, df.attrs.get("paper", False))
    for ds in DATASETS:
        lines += [f"## {DATASET_TITLES[ds]}", ""]
        header = ["Model"]
        for key, title, _ in _T1_MD:
            header += [title, "paper", "Δ"]
        rows = []
        for rec in df.to_dict("records"):
            cells = [rec["model"]]
            for key, _, d in _T1_MD:
                cells += [_fmt(rec[f"{ds}_{key}"], d, BLANK),
                          _fmt(rec[f"{ds}_{key}_paper"], d, BLANK),
                          _signed(rec[f"{ds}_{key}_diff"], d)]
            rows.append(cells)
        lines += _md_table(header, rows) + [""]
    lines += ["Improvement = (without − with) / without, in %, from our unrounded errors "
              "(the paper's definition). ResNet-50-5's \"without\" is the plain ResNet-50 "
              "run, as in the paper.", ""]
    return "\n".join(lines + _runs_section(df.attrs.get("runs", {})))


_T1_MD = (("without", "without exits", 2), ("with", "with exits", 2),
          ("improvement_pct", "improvement %", 1))


def _signed(x, decimals):
    s = _fmt(x, decimals, BLANK)
    return s if s == BLANK or s.startswith("-") else "+" + s


def table2_markdown(df, profile, dataset_tag, runs_root, paper_csv):
    """Markdown of Table II: per-exit rows, ours / paper / Δ."""
    lines = _header("Table II: CIFAR-100 test error (%) of each exit of Elastic-DenseNet-169",
                    profile, dataset_tag, runs_root, paper_csv, df.attrs.get("paper", False))
    header = ["Model", "conv layers", "params (M)", "test error %", "paper conv", "paper params (M)",
              "paper error %", "Δ error"]
    rows = []
    computed = False
    for rec in df.to_dict("records"):
        mark = "*" if rec["counts_source"] == "computed" else ""
        computed |= bool(mark)
        rows.append([rec["model"], _fmt(rec["conv_layers"], 0, BLANK) + mark,
                     _fmt(rec["params_millions"], 2, BLANK) + mark,
                     _fmt(rec["cifar100_error_pct"], 2, BLANK),
                     _fmt(rec["conv_layers_paper"], 0, BLANK),
                     _fmt(rec["params_millions_paper"], 2, BLANK),
                     _fmt(rec["cifar100_error_pct_paper"], 2, BLANK),
                     _signed(rec["cifar100_error_pct_diff"], 2)])
    lines += _md_table(header, rows) + [""]
    lines += ["Params: everything up to and including the exit; the last elastic row counts the "
              "whole elastic model (the paper's convention). Conv layers and params of a "
              "trained run are those of its own model (input size of its profile).", ""]
    if computed:
        lines += ["\\* computed from the model definition (224x224 input, 100 classes, no "
                  "training): the run is missing, so its error is blank.", ""]
    return "\n".join(lines + _runs_section(df.attrs.get("runs", {})))


def default_prefix(profile, dataset_tag):
    """'' for the paper profile on CIFAR; '<profile>-<tag>-' otherwise, so smoke never
    overwrites the real tables."""
    if is_reproduction(profile, dataset_tag) and dataset_tag is None:
        return ""
    return f"{profile}-{dataset_tag}-" if dataset_tag else f"{profile}-"


def write_tables(runs_root, profile, dataset_tag=None, out_dir="results", paper_dir=None,
                 prefix=None, compute_missing=False, log=print):
    """Write <out>/<prefix>table1.{csv,md} and table2.{csv,md} atomically; return a dict.

    paper_dir: folder with the paper's table1.csv / table2.csv (default: see
    default_paper_dir); when absent the paper columns are blank and a note is logged.
    The output depends only on the runs and the paper files: no timestamps.
    """
    if not profile or "/" in profile:
        raise ElasticKerasError(f"profile must be a name without '/', got {profile!r}")
    if dataset_tag is not None and (not dataset_tag or "/" in dataset_tag):
        raise ElasticKerasError(f"dataset_tag must be a name without '/', got {dataset_tag!r}")
    paper_dir = default_paper_dir() if paper_dir is None else os.fspath(paper_dir)
    p1, p2 = (os.path.join(paper_dir, f"table{i}.csv") for i in (1, 2))
    for p in (p1, p2):
        if not os.path.isfile(p):
            log(f"note: paper table not found: {p}; its paper columns are blank "
                f"(set --paper-dir or ${PAPER_DIR_ENV})")
    prefix = default_prefix(profile, dataset_tag) if prefix is None else prefix
    t1 = table1(runs_root, profile, dataset_tag, p1)
    t2 = table2(runs_root, profile, dataset_tag, p2, compute_missing=compute_missing)
    out = {}
    for key, df, md, decimals, paper_csv in (
            ("table1", t1, table1_markdown, _decimals_t1, p1),
            ("table2", t2, table2_markdown, T2_FORMATS.get, p2)):
        csv_path = os.path.join(out_dir, f"{prefix}{key}.csv")
        md_path = os.path.join(out_dir, f"{prefix}{key}.md")
        files.write_text(csv_path, to_csv_text(df, decimals))
        files.write_text(md_path, md(df, profile, dataset_tag, runs_root, paper_csv))
        out[key] = df
        out[f"{key}_csv"], out[f"{key}_md"] = csv_path, md_path
    return out


# ---------------------------------------------------------------------------------------
# Checking against the paper, and reading histories


CHECKED = tuple(f"{ds}_{k}_diff" for ds in DATASETS for k in ("without", "with")) + (
    "cifar100_error_pct_diff",)


def check_against_paper(tables, tol):
    """Test errors of ours that differ from the paper's by more than `tol` points.

    Like detectron2's verify_results. Only measured test errors are checked (the
    improvement is derived from them). Returns (violations: list of str, checked: int).
    """
    if not isinstance(tol, (int, float)) or _nan(tol) or tol < 0:
        raise ElasticKerasError(f"tolerance must be a number >= 0, got {tol!r}")
    violations, checked = [], 0
    for key in ("table1", "table2"):
        df = tables[key]
        for rec in df.to_dict("records"):
            for col in CHECKED:
                if col in rec and not _nan(rec[col]):
                    checked += 1
                    if abs(rec[col]) > tol:
                        what = col[: -len("_diff")]
                        violations.append(
                            f"{key} {rec['model']} {what}: ours {rec[what]:.2f}, paper "
                            f"{rec[what + '_paper']:.2f}, diff {rec[col]:+.2f} > {tol}")
    return violations, checked


def read_history(path):
    """A run's history.csv (a run directory or the file itself) as a DataFrame."""
    import pandas as pd

    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".csv"):
        path = os.path.join(path, HISTORY)
    if not os.path.isfile(path):
        raise ElasticKerasError(f"no training history: {path} not found (has the run trained?)")
    df = pd.read_csv(path)
    missing = [c for c in ("epoch", "phase", "lr", "loss", "val_loss") if c not in df.columns]
    if missing or df.empty:
        raise ElasticKerasError(f"{path}: not a history.csv (missing columns {missing} or no rows)")
    return df


def last_epoch_table(history):
    """Per-exit losses and accuracies at the last epoch of a history, depth order."""
    import pandas as pd

    from .plots import metric_column, outputs_of

    last = history.iloc[-1]
    rows = []
    for o in outputs_of(history):
        rows.append({"output": o, **{
            f"{'val_' if val else 'train_'}{m}": float(last[metric_column(history, o, m, val)])
            for m in ("loss", "accuracy") for val in (False, True)
            if metric_column(history, o, m, val) is not None}})
    df = pd.DataFrame(rows).set_index("output")
    df.attrs["epoch"] = int(last["epoch"])
    df.attrs["phase"] = str(last["phase"])
    return df
