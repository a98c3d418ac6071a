"""Tables I/II, Figure 3 and the loss-curve notebook, on run directories fabricated here."""

import csv
import importlib.util
import json
import math
import os

import pytest

from elastic_keras.errors import ElasticKerasError
from elastic_keras.plots import lr_drops, outputs_of, phase_boundaries
from elastic_keras.tables import (check_against_paper, improvement_pct, last_epoch_table,
                                  read_history, table1, table2, write_tables)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE, TAG = "smoke", "synthetic"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_run(root, name, errors=None, profile=PROFILE, tag=TAG, finished=True, outputs=None,
             conv=None, params=None):
    """A run directory in the formats train/evaluate write; `errors`: test error per output."""
    plain = name.endswith("-plain")
    outputs = outputs or (["final"] if plain else ["exit_1", "exit_2", "exit_3", "final"])
    errors = errors or [50.0] * len(outputs)
    conv = conv or [14, 39, 104, 168][-len(outputs):]
    params = params or [390_000, 1_470_000, 6_710_000, 20_900_000][-len(outputs):]
    d = os.path.join(root, profile, tag, name)
    os.makedirs(d)
    backbone = name.split("-")[1]
    cfg = {"name": name, "profile": profile, "model": {"backbone": backbone, "plain": plain},
           "data": {"dataset": tag}}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    # history: 2 heads epochs, 4 full epochs with an lr drop before epoch 5
    cols = ["epoch", "phase", "phase_epoch", "lr", "loss", "val_loss"]
    for o in outputs:
        cols += [f"{o}_loss", f"{o}_accuracy", f"val_{o}_loss", f"val_{o}_accuracy"]
    cols.append("time_s")
    with open(os.path.join(d, "history.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for e in range(1, 7):
            phase, pe = ("heads", e) if e <= 2 else ("full", e - 2)
            lr = 1e-3 if e < 5 else 1e-4
            row = [e, phase, pe, lr, 3.0 / e * len(outputs), 3.2 / e * len(outputs)]
            for k, _ in enumerate(outputs):
                row += [3.0 / e, 0.1 * e + 0.01 * k, 3.2 / e, 0.09 * e + 0.01 * k]
            w.writerow(row + [1.5])
    if finished:
        exits = [{"output": o, "layer": "x", "conv_layers": c, "params": p,
                  "params_exit_only": p, "macs": 10 ** 8 * (k + 1), "test_error_pct": err,
                  "test_accuracy": 1 - err / 100}
                 for k, (o, c, p, err) in enumerate(zip(outputs, conv, params, errors))]
        res = {"name": name, "profile": profile, "dataset": tag, "config": cfg,
               "checkpoint": {"epoch": 5, "phase": "full", "val_loss": 1.0}, "exits": exits,
               "final_test_error_pct": errors[-1]}
        with open(os.path.join(d, "results.json"), "w") as f:
            json.dump(res, f)
    with open(os.path.join(d, "state.json"), "w") as f:  # what rundir writes last
        json.dump({"status": "evaluated" if finished else "trained", "history": [],
                   "best": {"full": {"epoch": 5, "phase": "full", "val_loss": 1.0,
                                     "file": "ckpt/best-epoch-0005.weights.h5"}}}, f)
    return d


@pytest.fixture
def paper_dir(tmp_path):
    d = tmp_path / "paper"
    d.mkdir()
    (d / "table1.csv").write_text(
        "model,cifar10_without,cifar10_with,cifar10_improvement_pct,cifar100_without,"
        "cifar100_with,cifar100_improvement_pct\n"
        "DenseNet-121,6.35,5.44,14.3,24.48,23.44,4.3\n"
        "DenseNet-169,8.14,5.58,31.5,23.06,21.65,6.1\n"
        "ResNet-50,5.54,6.19,-11.7,21.96,24.20,-10.2\n"
        "ResNet-50-5,5.54,5.39,2.7,21.96,21.54,1.9\n")
    (d / "table2.csv").write_text(
        "model,conv_layers,params_millions,cifar100_error_pct\n"
        "Elastic-DenseNet-169-output-14,14,0.39,73.37\n"
        "Elastic-DenseNet-169-output-39,39,1.47,48.96\n"
        "Elastic-DenseNet-169-output-104,104,6.71,22.86\n"
        "Elastic-DenseNet-169-output-168,168,20.90,21.65\n"
        "DenseNet-169,168,20.80,23.06\n"
        "DenseNet-121,120,12.06,24.48\n")
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "cifar10-densenet121-elastic", [70.0, 60.0, 55.0, 5.0])
    make_run(root, "cifar10-densenet121-plain", [8.0])
    make_run(root, "cifar10-resnet50-plain", [6.0])
    make_run(root, "cifar10-resnet50_5-elastic", [9.0, 8.0, 7.0, 4.5])
    make_run(root, "cifar10-densenet169-elastic", finished=False)  # trained, not evaluated
    make_run(root, "cifar100-densenet169-elastic", [73.0, 49.0, 23.0, 21.0])
    make_run(root, "cifar100-densenet121-plain", [25.0], conv=[120], params=[12_060_000])
    return root


def _row(df, model):
    return df[df["model"] == model].iloc[0]


def test_improvement_is_relative_to_without():
    assert improvement_pct(8.0, 5.0) == pytest.approx(37.5)
    assert improvement_pct(7.71, 8.20) == pytest.approx(-6.355, abs=1e-3)  # VGG-16 CIFAR-10
    assert math.isnan(improvement_pct(math.nan, 5.0))


def test_table1_math_blanks_and_paper(runs, paper_dir):
    df = table1(runs, PROFILE, TAG, paper_dir / "table1.csv")
    assert list(df["model"]) == ["DenseNet-121", "DenseNet-169", "InceptionV3", "MobileNet",
                                 "VGG-16", "ResNet-50", "ResNet-50-5"]
    r = _row(df, "DenseNet-121")
    assert (r["cifar10_without"], r["cifar10_with"]) == (8.0, 5.0)
    assert r["cifar10_improvement_pct"] == pytest.approx(37.5)
    assert r["cifar10_with_paper"] == 5.44 and r["cifar10_improvement_pct_paper"] == 14.3
    assert r["cifar10_with_diff"] == pytest.approx(5.0 - 5.44)
    assert r["cifar10_improvement_pct_diff"] == pytest.approx(37.5 - 14.3)
    # ResNet-50-5's "without" is the plain ResNet-50 run
    r5 = _row(df, "ResNet-50-5")
    assert r5["cifar10_without"] == 6.0
    assert r5["cifar10_improvement_pct"] == pytest.approx(25.0)
    # missing / unfinished runs: blank, never the paper's numbers; paper columns still filled
    r169 = _row(df, "DenseNet-169")
    for col in ("cifar10_without", "cifar10_with", "cifar10_improvement_pct", "cifar10_with_diff",
                "cifar100_without", "cifar100_improvement_pct"):
        assert math.isnan(r169[col]), col
    assert r169["cifar10_with_paper"] == 5.58
    assert df.attrs["runs"]["cifar10-densenet169-elastic"][0] == "unfinished"
    assert df.attrs["runs"]["cifar10-mobilenet-elastic"][0] == "missing"
    assert math.isnan(_row(df, "ResNet-50")["cifar10_with"])  # resnet50 elastic missing
    ours = [c for c in df.columns if c.startswith("cifar") and not c.endswith(("_paper", "_diff"))]
    # only numbers from finished runs: D121 (cifar10 x3, cifar100 without), D169 (cifar100
    # with), ResNet-50 (cifar10 without), ResNet-50-5 (cifar10 x3)
    assert df[ours].notna().sum(axis=1).tolist() == [4, 1, 0, 0, 0, 1, 3]


def test_paper_columns_blank_without_paper_file(runs, tmp_path):
    df = table1(runs, PROFILE, TAG, tmp_path / "nowhere" / "table1.csv")
    paper = [c for c in df.columns if c.endswith(("_paper", "_diff"))]
    assert df[paper].isna().all().all()
    assert _row(df, "DenseNet-121")["cifar10_with"] == 5.0


def test_table2_rows_per_exit(runs, paper_dir):
    df = table2(runs, PROFILE, TAG, paper_dir / "table2.csv")
    assert list(df["model"]) == [
        "Elastic-DenseNet-169-output-14", "Elastic-DenseNet-169-output-39",
        "Elastic-DenseNet-169-output-104", "Elastic-DenseNet-169-output-168",
        "DenseNet-169", "DenseNet-121"]
    assert list(df["cifar100_error_pct"][:4]) == [73.0, 49.0, 23.0, 21.0]
    assert list(df["params_millions"][:4]) == pytest.approx([0.39, 1.47, 6.71, 20.9])
    assert df["cifar100_error_pct_diff"][0] == pytest.approx(73.0 - 73.37)
    d169 = _row(df, "DenseNet-169")  # plain DenseNet-169 missing: blank, paper beside it
    assert math.isnan(d169["cifar100_error_pct"]) and math.isnan(d169["conv_layers"])
    assert d169["cifar100_error_pct_paper"] == 23.06
    d121 = _row(df, "DenseNet-121")
    assert (d121["conv_layers"], d121["params_millions"], d121["counts_source"]) == (120, 12.06, "run")


def test_write_tables_headers_and_byte_identical(runs, paper_dir, tmp_path):
    out = tmp_path / "results"
    a = write_tables(runs, PROFILE, TAG, out_dir=out, paper_dir=paper_dir, log=lambda *_: None)
    assert os.path.basename(a["table1_csv"]) == "smoke-synthetic-table1.csv"
    first = {k: open(a[k], "rb").read() for k in ("table1_csv", "table1_md", "table2_csv", "table2_md")}
    write_tables(runs, PROFILE, TAG, out_dir=out, paper_dir=paper_dir, log=lambda *_: None)
    assert first == {k: open(a[k], "rb").read() for k in first}
    assert sorted(os.listdir(out)) == sorted(os.path.basename(a[k]) for k in first)  # no temp files
    md1 = first["table1_md"].decode()
    assert "Profile: `smoke`" in md1 and "`synthetic`" in md1 and "NOT a reproduction" in md1
    assert "NOT a reproduction" in first["table2_md"].decode()
    rows = list(csv.DictReader(first["table1_csv"].decode().splitlines()))
    assert {r["profile"] for r in rows} == {"smoke"} and {r["dataset"] for r in rows} == {"synthetic"}
    d121 = rows[0]
    assert (d121["cifar10_with"], d121["cifar10_with_paper"], d121["cifar10_with_diff"]) == (
        "5.00", "5.44", "-0.44")
    assert rows[1]["cifar10_with"] == "" and rows[1]["cifar10_with_paper"] == "5.58"
    # the paper profile on CIFAR data is a reproduction: no such note
    root = tmp_path / "paper_runs"
    make_run(root, "cifar10-densenet121-plain", [6.0], profile="paper", tag="cifar10")
    p = write_tables(root, "paper", None, out_dir=out, paper_dir=paper_dir, log=lambda *_: None)
    assert os.path.basename(p["table1_md"]) == "table1.md"
    md = open(p["table1_md"]).read()
    assert "NOT a reproduction" not in md and "Profile: `paper`" in md
    assert _row(p["table1"], "DenseNet-121")["cifar10_without"] == 6.0


def test_profile_mismatch_is_refused(tmp_path, paper_dir):
    root = tmp_path / "runs"
    d = make_run(root, "cifar10-densenet121-plain", [6.0])
    res = json.load(open(os.path.join(d, "results.json")))
    res["profile"] = "paper"
    json.dump(res, open(os.path.join(d, "results.json"), "w"))
    with pytest.raises(ElasticKerasError, match="profile"):
        table1(root, PROFILE, TAG, paper_dir / "table1.csv")


def test_check_and_cli(runs, paper_dir, tmp_path, capsys):
    tables = write_tables(runs, PROFILE, TAG, out_dir=tmp_path / "r", paper_dir=paper_dir,
                          log=lambda *_: None)
    violations, checked = check_against_paper(tables, 1.0)
    assert checked == 7 + 5  # table1: D121 x3, D169 x1, R50 x1, R50-5 x2; table2: 4 exits + D121
    assert any("DenseNet-121 cifar10_without" in v for v in violations)
    mt = _script("make_tables")
    args = ["--profile", PROFILE, "--dataset-tag", TAG, "--runs-root", str(runs),
            "--out", str(tmp_path / "cli"), "--paper-dir", str(paper_dir)]
    assert mt.main(args) == 0
    assert mt.main(args + ["--check", "100"]) == 0
    assert mt.main(args + ["--check", "0.1"]) == 1
    assert "FAIL" in capsys.readouterr().out
    # no paper dir: blank paper columns and a note; nothing to check
    assert mt.main(args[:-2] + ["--paper-dir", str(tmp_path / "none"), "--check", "1"]) == 1
    assert "note: paper table not found" in capsys.readouterr().out
    assert mt.main(["--profile", "a/b", "--out", str(tmp_path / "x")]) == 2


def test_history_helpers(runs):
    h = read_history(runs / PROFILE / TAG / "cifar10-densenet121-elastic")
    assert outputs_of(h) == ["exit_1", "exit_2", "exit_3", "final"]
    assert phase_boundaries(h) == [(2.5, "heads", "full")]
    assert lr_drops(h) == [(5, 1e-3, 1e-4)]
    last = last_epoch_table(h)
    assert list(last.index) == ["exit_1", "exit_2", "exit_3", "final"]
    assert last.loc["final", "val_loss"] == pytest.approx(3.2 / 6)
    plain = read_history(runs / PROFILE / TAG / "cifar10-densenet121-plain")
    assert outputs_of(plain) == ["final"]
    with pytest.raises(ElasticKerasError, match="no training history"):
        read_history(runs / "nope")


def test_figure3(runs, tmp_path, capsys):
    fig = _script("figure3")
    out = tmp_path / "fig" / "figure3.png"
    assert fig.main(["--runs-root", str(runs), "--profile", PROFILE, "--dataset-tag", TAG,
                     "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = tmp_path / "fig" / "none.png"
    assert fig.main(["--runs-root", str(tmp_path / "empty"), "--profile", PROFILE,
                     "--dataset-tag", TAG, "--out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "Figure 3 needs both" in err and "history" in err
    assert not missing.exists()


def test_notebook_executes_headless(runs):
    pytest.importorskip("nbclient")
    rn = _script("run_notebook")
    nb = rn.run_notebook(os.path.join(REPO, "notebooks", "loss_curves.ipynb"),
                         run_dir=runs / PROFILE / TAG / "cifar100-densenet169-elastic", timeout=120)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "cifar100-densenet169-elastic" in text and "NOT a reproduction" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # per-exit curves, error vs MACs


def test_notebook_finds_first_run_by_default(runs, tmp_path, monkeypatch):
    # a working tree whose runs/ holds the fabricated runs; the first (sorted) is used
    pytest.importorskip("nbclient")
    monkeypatch.delenv("ELASTIC_RUN_DIR", raising=False)
    tree = tmp_path / "tree"
    tree.mkdir()
    os.symlink(os.path.join(REPO, "elastic_keras"), tree / "elastic_keras")
    os.symlink(runs, tree / "runs")
    rn = _script("run_notebook")
    nb = rn.run_notebook(os.path.join(REPO, "notebooks", "loss_curves.ipynb"), timeout=120,
                         cwd=str(tree))
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "cifar10-densenet121-elastic" in text  # sorted first under runs/smoke/synthetic
    assert "no results.json" not in text
    os.remove(tree / "runs")
    os.mkdir(tree / "runs")
    with pytest.raises(ElasticKerasError, match="no run with a history.csv"):
        rn.run_notebook(os.path.join(REPO, "notebooks", "loss_curves.ipynb"), timeout=120,
                        cwd=str(tree))


@pytest.mark.slow
def test_table2_computes_counts_of_missing_runs(tmp_path, paper_dir):
    df = table2(tmp_path / "empty", PROFILE, TAG, paper_dir / "table2.csv", compute_missing=True)
    assert list(df["conv_layers"]) == [14, 39, 104, 168, 168, 120]
    assert list(df["params_millions"].round(2)) == [0.39, 1.47, 6.71, 20.90, 20.80, 12.06]
    assert set(df["counts_source"]) == {"computed"} and df["cifar100_error_pct"].isna().all()
