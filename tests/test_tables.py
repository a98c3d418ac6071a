"""Tables I/II, the paper's numbers, Figure 3 and the notebook, on fabricated run directories."""

import csv
import json
import math
import os
import re
import subprocess
import sys

import pytest

from elastic_keras.report import paper
from elastic_keras.errors import ElasticKerasError
from elastic_keras.report.plots import last_epoch_table, lr_drops, outputs_of, phase_boundaries
from elastic_keras.report.render import write_tables
from elastic_keras.runs.history import history_columns, read_history
from elastic_keras.report.finished import Runs
from elastic_keras.report.tables import check, improvement_pct, table1, table2
from elastic_keras.runs.names import RunName, Setting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE, TAG = "smoke", "synthetic"
sys.path.insert(0, os.path.join(REPO, "tests"))
from notebook import run_notebook  # noqa: E402


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "elastic_keras", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def make_run(root, name, errors=None, profile=PROFILE, tag=TAG, finished=True, outputs=None,
             conv=None, params=None):
    """A run directory in the formats train/evaluate write; `errors`: test error per output."""
    plain = name.endswith("-plain")
    outputs = outputs or (["final"] if plain else ["exit_1", "exit_2", "exit_3", "final"])
    errors = errors or [50.0] * len(outputs)
    conv = conv or [14, 39, 104, 168][-len(outputs):]
    params = params or [390_000, 1_470_000, 6_710_000, 20_900_000][-len(outputs):]
    setting = _setting(profile, tag)
    cell = RunName.parse(name)
    d = setting.run_path(str(root), cell)
    os.makedirs(d)
    name = str(setting.run_name(cell))  # named by the data it saw (synthetic10-...)
    cfg = {"name": name, "profile": profile, "protocol": "paper",
           "model": {"backbone": cell.backbone, "plain": plain}, "data": {"dataset": tag}}
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
               "backend": "tensorflow", "device": "CPU (test)",
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
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "cifar10-densenet121-elastic", [70.0, 60.0, 55.0, 5.0])
    make_run(root, "cifar10-densenet121-plain", [8.0])
    make_run(root, "cifar10-resnet50-plain", [6.0])
    make_run(root, "cifar10-resnet50_5-elastic", [9.0, 8.0, 7.0, 4.5])
    make_run(root, "cifar10-densenet169-elastic", finished=False)  # trained, not evaluated
    make_run(root, "cifar100-densenet169-elastic", [73.0, 49.0, 23.0, 21.0])
    make_run(root, "cifar100-densenet121-plain", [25.0], conv=[120], params=[12_060_000])
    make_run(root, "cifar10-mobilenet_authors-plain", [11.0])
    make_run(root, "cifar10-mobilenet_authors-elastic", [40.0, 20.0, 9.5, 8.0])
    return root


def _row(rows, model):
    return next(r for r in rows if r["model"] == model)


def _setting(profile=PROFILE, tag=TAG):
    return Setting(profile, "paper", None if tag in ("cifar10", "cifar100", None) else tag)


def _table1(root, tag=TAG):
    return table1(Runs(str(root), _setting(PROFILE, tag)))


def test_improvement_is_relative_to_without():
    assert improvement_pct(8.0, 5.0) == pytest.approx(37.5)
    assert improvement_pct(7.71, 8.20) == pytest.approx(-6.355, abs=1e-3)  # VGG-16 CIFAR-10
    assert math.isnan(improvement_pct(math.nan, 5.0))


def test_the_papers_numbers_ship_with_the_package():
    """Issue 10.1: read from package data, never from ../shared."""
    assert paper.table1()["DenseNet-169"]["cifar10_with"] == 5.58
    assert [r["params_millions"] for r in paper.table2()] == [0.39, 1.47, 6.71, 20.90, 20.80,
                                                              12.06]
    assert paper.bai_table2()[("MobileNet", 0.75)]["macs_last"] == 3.16e8
    sources = paper.table1_sources()
    assert len(sources) == 28 and {s["exit"] for s in sources} == {"final", "penultimate"}
    # Issue 20: one vocabulary; 16 cells are in none of the authors' results.
    origins = [s["origin"] for s in sources]
    assert set(origins) == {"best", "epoch", "not found"} and origins.count("not found") == 16
    code = [os.path.join(d, f) for top in ("elastic_keras", "scripts", "tests")
            for d, _, fs in os.walk(os.path.join(REPO, top)) for f in fs
            if f.endswith((".py", ".toml"))] + [os.path.join(REPO, "Makefile")]
    for path in code:
        if os.path.abspath(path) == os.path.abspath(__file__):  # this test names the folder
            continue
        text = open(path, encoding="utf-8").read()
        assert not re.search(r"\.\./shared|[\"']shared[\"']", text), path


def test_table1_math_blanks_marks_and_like_with_like(runs):
    rows, like = _table1(runs)
    assert [r["model"] for r in rows] == [
        "DenseNet-121", "DenseNet-169", "InceptionV3", "MobileNet", "MobileNet (authors' code)",
        "VGG-16", "ResNet-50", "ResNet-50-5"]
    r = _row(rows, "DenseNet-121")
    assert (r["cifar10_without"], r["cifar10_with"]) == (8.0, 5.0)
    assert r["cifar10_improvement_pct"] == pytest.approx(37.5)
    assert r["cifar10_with_paper"] == 5.44 and r["cifar10_improvement_pct_paper"] == 14.3
    assert r["cifar10_with_diff"] == pytest.approx(5.0 - 5.44) and r["cifar10_with_mark"] == "?"
    assert r["cifar10_improvement_pct_diff"] == pytest.approx(37.5 - 14.3)
    r5 = _row(rows, "ResNet-50-5")  # its "without" is the plain ResNet-50 run
    assert r5["cifar10_without"] == 6.0 and r5["cifar10_improvement_pct"] == pytest.approx(25.0)
    r169 = _row(rows, "DenseNet-169")  # unfinished or missing: blank, paper still beside
    assert math.isnan(r169["cifar10_with"]) and r169["cifar10_with_paper"] == 5.58
    # Issue 10.5: the paper's MobileNet numbers are the authors' variant's; some are a
    # penultimate exit's. Marked, and no difference against a run they were not measured on.
    mob, authors = _row(rows, "MobileNet"), _row(rows, "MobileNet (authors' code)")
    assert (mob["cifar10_without_mark"], mob["cifar10_with_mark"]) == ("a", "ap")
    assert math.isnan(mob["cifar10_without_diff"])
    assert (authors["cifar10_without_mark"], authors["cifar10_with_mark"]) == ("", "p")
    assert authors["cifar100_with_mark"] == "?"
    assert authors["cifar10_without"] == 11.0 and authors["cifar10_without_diff"] == \
        pytest.approx(11.0 - 10.37)
    assert _row(rows, "ResNet-50")["cifar100_with_mark"] == "pe"  # 24.20: epoch 8's value
    assert _row(rows, "InceptionV3")["cifar100_without_mark"] == "i"  # 24.98: at 139 px
    # Like with like: 7.82 against the penultimate exit of the authors' variant.
    c = next(c for c in like if c["model"] == "MobileNet" and c["dataset"] == "cifar10"
             and c["column"] == "with")
    assert (c["ours_run"], c["exit"], c["ours"]) == ("cifar10-mobilenet_authors-elastic",
                                                    "penultimate", 9.5)
    inc = next(c for c in like if c["model"] == "InceptionV3" and c["column"] == "with"
               and c["dataset"] == "cifar10")
    assert inc["ours_run"] == "cifar10-inceptionv3_authors-elastic" and math.isnan(inc["ours"])
    inc = next(c for c in like if c["model"] == "InceptionV3" and c["column"] == "without"
               and c["dataset"] == "cifar100")
    assert inc["status"] == "measured at another input size" and inc["marks"] == "i"


def test_under_the_authors_protocol_each_number_meets_the_run_that_made_it(tmp_path):
    """Issue 20: 4.48 against the 12-output variant's second-to-last exit; 24.98 against
    the 139 px run; 24.20 against the penultimate exit."""
    root = tmp_path / "runs"
    twelve = [f"exit_{k}" for k in range(1, 12)] + ["final"]
    make_run(root, "cifar10-inceptionv3-elastic", [50.0] * 10 + [4.0, 4.6], outputs=twelve,
             profile="smoke-authors", conv=[1] * 12, params=[1] * 12)
    make_run(root, "cifar100-inceptionv3-plain", [25.5], profile="smoke-authors")
    make_run(root, "cifar100-resnet50-elastic", [30.0, 30.0, 24.0, 25.0],
             profile="smoke-authors")
    rows, like = table1(Runs(str(root), Setting("smoke", "authors", TAG)))
    got = {(c["model"], c["dataset"], c["column"]): c for c in like}
    c = got[("InceptionV3", "cifar10", "with")]
    assert (c["ours_run"], c["exit"], c["ours"]) == ("cifar10-inceptionv3-elastic",
                                                    "penultimate", 4.0)
    c = got[("InceptionV3", "cifar100", "without")]
    assert (c["ours_run"], c["ours"], c["marks"]) == ("cifar100-inceptionv3-plain", 25.5, "")
    c = got[("ResNet-50", "cifar100", "with")]
    assert (c["ours"], c["origin"], c["marks"]) == (24.0, "epoch", "pe")
    inc = _row(rows, "InceptionV3")
    assert inc["cifar100_without_mark"] == "" and inc["cifar10_with_mark"] == "p"
    assert inc["cifar100_without_diff"] == pytest.approx(25.5 - 24.98)


def test_a_table_is_every_finished_run_of_its_setting(runs, tmp_path):
    """Issue 27: no selection limits what a table reports; the count says how many of its
    runs are finished; the missing ones are listed, those not started on one line."""
    rows, _ = _table1(runs)
    assert len(rows) == 8 and "cifar100_with" in rows[0]
    written, _, _ = write_tables(runs, _setting(), out_dir=tmp_path, which=("table1",),
                                 log=(logs := []).append)
    md = open(written["table1"][1], encoding="utf-8").read()
    assert "This table: 8 of 30 runs finished." in md
    assert "- `synthetic10-densenet169-elastic`: unfinished (trained)" in md
    assert "Not started (21): `synthetic10-densenet169-plain`" in md
    assert any(m.startswith("table1: 8 of 30 runs finished") for m in logs), logs


def test_digits_tables_hold_the_cifar10_cells_only(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "cifar10-mobilenet-elastic", [20.0, 20.0, 20.0, 10.0], tag="digits")
    rows, _ = _table1(root, tag="digits")
    assert "cifar100_with" not in rows[0] and len(rows) == 8
    assert _row(rows, "MobileNet")["cifar10_with"] == 10.0
    runs_read = Runs(str(root), _setting(PROFILE, "digits"))
    table1(runs_read)
    assert len(runs_read.seen) == 15 and not any("cifar100" in n for n in runs_read.seen)


def test_table2_rows_per_exit(runs):
    rows = table2(Runs(str(runs), _setting()))
    assert [r["model"] for r in rows] == [
        "Elastic-DenseNet-169-output-14", "Elastic-DenseNet-169-output-39",
        "Elastic-DenseNet-169-output-104", "Elastic-DenseNet-169-output-168",
        "DenseNet-169", "DenseNet-121"]
    assert [r["cifar100_error_pct"] for r in rows[:4]] == [73.0, 49.0, 23.0, 21.0]
    assert [r["params_millions"] for r in rows[:4]] == pytest.approx([0.39, 1.47, 6.71, 20.9])
    assert rows[0]["cifar100_error_pct_diff"] == pytest.approx(73.0 - 73.37)
    d169 = _row(rows, "DenseNet-169")
    assert math.isnan(d169["cifar100_error_pct"]) and d169["cifar100_error_pct_paper"] == 23.06
    d121 = _row(rows, "DenseNet-121")
    assert (d121["conv_layers"], d121["params_millions"], d121["counts_source"]) == \
        (120, 12.06, "run")


def test_write_tables_headers_and_byte_identical(runs, tmp_path):
    out = tmp_path / "results"
    written, _, _ = write_tables(runs, _setting(), out_dir=out)
    paths = [p for pair in written.values() for p in pair]
    assert os.path.basename(written["table1"][0]) == "smoke-synthetic-table1.csv"
    first = {p: open(p, "rb").read() for p in paths}
    write_tables(runs, _setting(), out_dir=out)
    assert first == {p: open(p, "rb").read() for p in paths}
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths)
    md1 = first[written["table1"][1]].decode()
    assert "Setting: `smoke`" in md1 and "`synthetic`" in md1 and "NOT a reproduction" in md1
    assert "ᵃ measured by the authors" in md1 and "## Like with like" in md1
    rows = list(csv.DictReader(first[written["table1"][0]].decode().splitlines()))
    assert {r["setting"] for r in rows} == {"smoke"} and {r["dataset"] for r in rows} == {TAG}
    assert (rows[0]["cifar10_with"], rows[0]["cifar10_with_paper"],
            rows[0]["cifar10_with_diff"]) == ("5.00", "5.44", "-0.44")
    assert rows[1]["cifar10_with"] == "" and rows[1]["cifar10_with_paper"] == "5.58"
    assert rows[0]["environment"] == "tensorflow / CPU (test)"
    # The paper profile on CIFAR data is a reproduction: no such note, plain file names.
    root = tmp_path / "paper_runs"
    make_run(root, "cifar10-densenet121-plain", [6.0], profile="paper", tag="cifar10")
    p, _, _ = write_tables(root, Setting(), out_dir=out, which=("table1",))
    assert os.path.basename(p["table1"][1]) == "table1.md"
    md = open(p["table1"][1]).read()
    assert "NOT a reproduction" not in md and "Setting: `paper`" in md


def test_a_run_of_other_data_is_refused(tmp_path):
    root = tmp_path / "runs"
    d = make_run(root, "cifar10-densenet121-plain", [6.0])
    res = json.load(open(os.path.join(d, "results.json")))
    res["dataset"] = "digits"
    json.dump(res, open(os.path.join(d, "results.json"), "w"))
    with pytest.raises(ElasticKerasError, match="dataset"):
        _table1(root)


def test_check_compares_like_with_like_and_the_cli(runs, tmp_path):
    _, like, t2 = write_tables(runs, _setting(), out_dir=tmp_path / "r")
    violations, compared = check(like, t2, 1.0)
    # Table I: D121 x3, D169 x1, R50 plain x2 (the ResNet-50 and ResNet-50-5 baselines),
    # R50-5 x1, the authors' MobileNet x2; Table II: 4 exits + DenseNet-121.
    assert compared == 9 + 5
    assert any("DenseNet-121 cifar10 without (final exit of cifar10-densenet121-plain; "
               "theirs: not found)" in v
               for v in violations)
    args = ["tables", "--profile", PROFILE, "--data", TAG, "--runs-root", str(runs),
            "--out", str(tmp_path / "cli")]
    assert _cli(*args).returncode == 0
    assert _cli(*args, "--check", "100").returncode == 0
    r = _cli(*args, "--check", "0.1")
    assert r.returncode == 1 and "FAIL" in r.stdout
    r = _cli(*args[:-2], "--out", str(tmp_path / "e"), "--runs-root", str(tmp_path / "none"),
             "--check", "1")
    assert r.returncode == 1 and "nothing checked" in r.stdout
    r = _cli("tables", "--profile", "a/b", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "without '/'" in r.stderr


def test_history_helpers_and_depth_order(runs):
    h = read_history(runs / PROFILE / TAG / "synthetic10-densenet121-elastic")
    assert outputs_of(h) == ["exit_1", "exit_2", "exit_3", "final"]
    assert phase_boundaries(h) == [(2.5, "heads", "full")]
    assert lr_drops(h) == [(5, 1e-3, 1e-4)]
    last = last_epoch_table(h)
    assert list(last.index) == ["exit_1", "exit_2", "exit_3", "final"]
    assert last.loc["final", "val_loss"] == pytest.approx(3.2 / 6)
    assert outputs_of(read_history(runs / PROFILE / TAG / "synthetic10-densenet121-plain")) == \
        ["final"]
    with pytest.raises(ElasticKerasError, match="no training history"):
        read_history(runs / "nope")
    # Issue 11.6: history columns in depth order (exit_10 after exit_9, not after exit_1).
    outputs = [f"exit_{i}" for i in range(1, 13)] + ["final"]
    row = {"epoch": 1, "phase": "full", "phase_epoch": 1, "lr": 0.1, "loss": 1.0,
           "time_s": 1.0, **{f"{p}{o}_{m}": 0.5 for p in ("", "val_") for o in sorted(outputs)
                              for m in ("accuracy", "loss")}, "clipped": 0, "val_loss": 1.0}
    cols = history_columns([row], outputs)
    assert cols.index("exit_9_loss") < cols.index("exit_10_loss") < cols.index("final_loss")
    assert cols[:5] == ["epoch", "phase", "phase_epoch", "lr", "loss"] and cols[-1] == "time_s"


def test_figure3_cli(runs, tmp_path):
    out = tmp_path / "fig" / "figure3.png"
    r = _cli("figure3", "--runs-root", str(runs), "--profile", PROFILE, "--data", TAG,
             "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = tmp_path / "fig" / "none.png"
    r = _cli("figure3", "--runs-root", str(tmp_path / "empty"), "--profile", PROFILE,
             "--data", TAG, "--out", str(missing))
    assert r.returncode == 2 and "Figure 3 needs both" in r.stderr and not missing.exists()


def test_notebook_executes_headless(runs):
    pytest.importorskip("nbclient")
    nb = run_notebook(os.path.join(REPO, "notebooks", "loss_curves.ipynb"),
                      run_dir=runs / PROFILE / TAG / "synthetic100-densenet169-elastic", timeout=120)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "synthetic100-densenet169-elastic" in text and "NOT a reproduction" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # per-exit curves, error vs MACs


def test_notebook_finds_first_run_by_default(runs, tmp_path, monkeypatch):
    pytest.importorskip("nbclient")
    monkeypatch.delenv("ELASTIC_RUN_DIR", raising=False)
    tree = tmp_path / "tree"
    tree.mkdir()
    os.symlink(os.path.join(REPO, "elastic_keras"), tree / "elastic_keras")
    os.symlink(runs, tree / "runs")
    nb = run_notebook(os.path.join(REPO, "notebooks", "loss_curves.ipynb"), timeout=120,
                      cwd=str(tree))
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "synthetic10-densenet121-elastic" in text  # sorted first under runs/smoke/synthetic
    os.remove(tree / "runs")
    os.mkdir(tree / "runs")
    with pytest.raises(ElasticKerasError, match="no run with a history.csv"):
        run_notebook(os.path.join(REPO, "notebooks", "loss_curves.ipynb"), timeout=120,
                     cwd=str(tree))


@pytest.mark.slow
def test_table2_computes_counts_of_missing_runs(tmp_path):
    rows = table2(Runs(str(tmp_path / "none"), _setting()), compute_missing=True)
    assert [r["counts_source"] for r in rows] == ["computed"] * 6
    assert [round(r["params_millions"], 2) for r in rows] == [0.39, 1.47, 6.71, 20.90, 20.80,
                                                              12.06]
    assert all(math.isnan(r["cifar100_error_pct"]) for r in rows)
