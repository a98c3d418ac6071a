"""Seeds: names, configs, resume; intervals against scipy; tables over seeds; methods table."""

import json
import math
import os
import sys

import pytest

from elastic_keras.errors import ElasticKerasError
from elastic_keras.report.intervals import Interval, interval, paired
from elastic_keras.report.numbers import interval as fmt_interval
from elastic_keras.runs.names import RunName, method_run, seed_name, split_seed
from elastic_keras.runs.seeds import seed_configs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_tables import _setting, make_run  # noqa: E402


def test_interval_is_the_student_t_interval_of_scipy():
    from scipy import stats

    values = [1.0, 2.0, 3.0, 4.0, math.nan]  # NaN: a seed that did not finish
    got = interval(values)
    low, high = stats.t.interval(0.95, 3, loc=2.5, scale=stats.sem([1, 2, 3, 4]))
    assert got.n == 4 and got.mean == 2.5
    assert got.low == pytest.approx(low) and got.high == pytest.approx(high)
    assert got.half == pytest.approx(3.182446305284263 * 1.2909944487358056 / 2)
    one, none = interval([7.0]), interval([])
    assert (one.mean, one.n) == (7.0, 1) and math.isnan(one.half) and none.n == 0
    assert fmt_interval(2.5, got.half, 4, 2) == "2.50 ± 2.05 (n=4)"
    assert fmt_interval(7.0, math.nan, 1, 2) == "7.00 (n=1)" and fmt_interval(1, 1, 0, 2) == "—"


def test_differences_are_taken_per_seed_pair():
    without = {0: 10.0, 1: 12.0, 2: 11.0, 3: 9.0}
    with_ = {0: 9.0, 1: 10.8, 2: 10.1}  # seed 3 missing: it drops out of the pairs
    gap = paired(without, with_, lambda w, x: x - w)
    assert gap.n == 3 and gap.mean == pytest.approx((-1.0 - 1.2 - 0.9) / 3)
    assert gap.half == pytest.approx(interval([-1.0, -1.2, -0.9]).half)
    # Unpaired, the spread between seeds (10..12) would swamp the difference.
    assert interval([9.0, 10.8, 10.1]).overlaps(interval([10.0, 12.0, 11.0]))
    assert not gap.contains_zero and Interval(0.5, 1.0, 3).contains_zero
    assert not Interval(0.5, 1.0, 1).contains_zero  # no interval from one seed


def test_seed_names_and_configs():
    assert seed_name("digits-mobilenet-elastic", 0) == "digits-mobilenet-elastic"
    assert seed_name("digits-mobilenet-elastic", 2) == "digits-mobilenet-elastic-seed2"
    assert split_seed("x-seed2") == ("x", 2) and split_seed("x-seed0") == ("x-seed0", 0)
    name = RunName.parse("digits-mobilenet-elastic-auxnet-seed3")
    assert (name.dataset, name.backbone, name.method, name.seed) == (
        "digits", "mobilenet", "auxnet", 3)
    assert str(name) == "digits-mobilenet-elastic-auxnet-seed3"
    assert str(RunName.parse("cifar10-resnet50_5-plain").on("synthetic10")) == \
        "synthetic10-resnet50_5-plain"
    assert method_run("digits-mobilenet-elastic", "uniform") == "digits-mobilenet-elastic"
    assert method_run("digits-mobilenet-elastic", "multi_way") == \
        "digits-mobilenet-elastic-multi_way"
    with pytest.raises(ElasticKerasError, match="not a run name"):
        RunName.parse("digits-mobilenet-seed2")
    from elastic_keras.runs.config import load_config

    cfg = load_config("cifar10-mobilenet-elastic", ["train.seed=5"], profile="demo")
    seeds = seed_configs(cfg, 3)
    assert seeds[0] == cfg and seeds[0] is not cfg
    assert [(c["name"], c["train"]["seed"], c["data"]["seed"]) for c in seeds[1:]] == [
        ("cifar10-mobilenet-elastic-seed1", 6, 1), ("cifar10-mobilenet-elastic-seed2", 7, 2)]
    with pytest.raises(ElasticKerasError, match="--seeds"):
        seed_configs(cfg, 0)


def _cell(table, text):
    return next(line for line in table.splitlines() if line.startswith(f"| {text} "))


def test_table1_over_every_finished_seed_and_unchanged_with_one(tmp_path):
    import shutil

    from elastic_keras.report.render import write_tables

    root = tmp_path / "runs"
    errors = {"elastic": [5.0, 6.0, 7.0], "plain": [8.0, 8.5, 9.5]}
    for kind, finals in errors.items():
        for s, e in enumerate(finals):
            make_run(root, seed_name(f"cifar10-densenet121-{kind}", s),
                     [70.0, 60.0, 55.0, e] if kind == "elastic" else [e])
    setting = _setting()
    # Every finished seed on disk is read, whatever a command asked for (issue 27).
    three, _, _ = write_tables(str(root), setting, str(tmp_path / "three"), which=("table1",))
    for kind in errors:
        for s in (1, 2):
            shutil.rmtree(setting.run_path(str(root), RunName.parse(
                seed_name(f"cifar10-densenet121-{kind}", s))))
    one, _, _ = write_tables(str(root), setting, str(tmp_path / "one"), which=("table1",))
    single = open(one["table1"][1], encoding="utf-8").read()
    assert "(n=" not in single and "with − without" not in single
    # The paper number keeps its mark (not in the authors' results, FIDELITY.md A8).
    assert _cell(single, "DenseNet-121").split("|")[2:4] == [" 8.00 ", " 6.35? "]
    md = open(three["table1"][1], encoding="utf-8").read()
    row = _cell(md, "DenseNet-121").split("|")
    mean = interval([8.0, 8.5, 9.5])
    assert row[2].strip() == f"{mean.mean:.2f} ± {mean.half:.2f} (n=3)"
    gap = interval([-3.0, -2.5, -2.5])  # with - without, seed by seed
    assert row[-2].strip() == f"{gap.mean:.2f} ± {gap.half:.2f} (n=3)"
    imp = interval([100 * 3 / 8, 100 * 2.5 / 8.5, 100 * 2.5 / 9.5])
    assert row[8].strip() == f"{imp.mean:.1f} ± {imp.half:.1f} (n=3)"
    assert "⁰" in row[7] and "⁰" not in row[4]  # ours - paper: 0.56 ± 2.48, 2.32 ± 1.90
    csv_text = open(three["table1"][0], encoding="utf-8").read()
    assert "cifar10_with_minus_without_ci95" in csv_text and ",3," in csv_text


def _method_run(root, name, errors, aucs):
    d = make_run(root, name, errors)
    rows = ["kind,criterion,macs_fraction,test_accuracy"] + [
        f"cascade,max_prob,{x},{a}" for x, a in ((0.1, aucs), (1.0, aucs))] + [
        f"exit,,{x},{a}" for x, a in ((0.1, aucs), (1.0, aucs))]
    with open(os.path.join(d, "budget.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")


def test_methods_table_on_fabricated_runs(tmp_path):
    from elastic_keras.report.finished import Runs
    from elastic_keras.report.methods import methods_rows, write_methods

    root, cell = tmp_path / "runs", "cifar10-densenet121-elastic"
    schemes = {"uniform": "uniform", "auxnet": "AuxNet", "heads_only": "heads"}
    finals = {"uniform": [5.0, 5.2, 5.1], "auxnet": [5.1, 5.3, 5.0], "heads_only": [20, 21, 22]}
    for scheme, errs in finals.items():
        for s, e in enumerate(errs):
            _method_run(root, seed_name(method_run(cell, scheme), s),
                        [60.0, 50.0, 40.0, e], 0.9 if scheme == "heads_only" else 0.5)
    rows = methods_rows(Runs(str(root), _setting()), [cell], schemes, 3, log=lambda m: None)
    by = {r["scheme"]: r for r in rows}
    assert by["auxnet"]["run"] == "synthetic10-densenet121-elastic-auxnet"
    assert by["uniform"]["n"] == 3 and by["uniform"]["final"] == pytest.approx(5.1)
    # Uniform has the lowest mean error but overlaps auxnet: not marked. Heads only is far
    # worse at the final exit, and alone best in area (0.9 x 0.9 over [0.1, 1]).
    assert [r["final_best"] for r in rows] == ["", "", ""]
    assert by["heads_only"]["auc"] == pytest.approx(0.81) and by["heads_only"]["auc_best"]
    csv_path, md_path = write_methods(str(root), _setting(), str(tmp_path / "out"), schemes,
                                      log=lambda m: None)  # every backbone, seed found
    md = open(md_path, encoding="utf-8").read()
    assert "**81.00" in md and "NOT a reproduction" in md and os.path.isfile(
        md_path[:-3] + ".png")


def test_seeds_train_as_runs_and_a_rerun_trains_nothing(tmp_path):
    from elastic_keras.runs.config import load_config
    from elastic_keras.runs.found import open_run
    from elastic_keras.sweep.launchers import local_launcher

    cfg = load_config(None, ["name=t", "model.backbone=mobilenet", "data.dataset=synthetic",
                             "data.train_limit=40", "data.test_limit=20",
                             "phases.full.epochs=0"], profile="smoke")
    configs, logs = seed_configs(cfg, 2), []
    assert local_launcher(configs, runs_root=str(tmp_path), log=logs.append) == []
    runs = [open_run(tmp_path / "smoke" / "synthetic" / n) for n in ("t", "t-seed1")]
    splits = [json.load(open(os.path.join(r.dir, "split.json"))) for r in runs]
    assert [s["seed"] for s in splits] == [0, 1]
    assert splits[0]["val_indices_sha256"] != splits[1]["val_indices_sha256"]
    assert splits[0]["class_counts"]["test"] == splits[1]["class_counts"]["test"]
    assert all(r.finished and len(r.state.history) == 1 for r in runs)
    logs.clear()
    assert local_launcher(configs, runs_root=str(tmp_path), log=logs.append) == []
    assert sum("finished already" in m for m in logs) == 2 and not any("epoch" in m
                                                                       for m in logs)


def test_table2_over_seeds(tmp_path):
    from elastic_keras.report.finished import Runs
    from elastic_keras.report.tables import table2

    root = tmp_path / "runs"
    for s, final in enumerate([21.0, 23.0]):
        make_run(root, seed_name("cifar100-densenet169-elastic", s), [73.0, 49.0, 23.0, final])
    rows = table2(Runs(str(root), _setting()), seeds=2)
    last = rows[3]
    assert (last["cifar100_error_pct"], last["cifar100_error_pct_n"]) == (22.0, 2)
    assert last["cifar100_error_pct_ci95"] == pytest.approx(interval([21.0, 23.0]).half)
    assert rows[0]["cifar100_error_pct_ci95"] == 0.0 and rows[4]["cifar100_error_pct_n"] == 0


def test_normalised_area_and_the_band_over_seeds(tmp_path):
    from elastic_keras.inference.thresholds import normalised_auc
    from elastic_keras.report.budget import budget_seeds

    rows = [{"kind": "cascade", "macs_fraction": x, "test_accuracy": a}
            for x, a in ((0.5, 0.6), (0.2, 0.4), (1.2, 0.9))]  # any order; past x = 1: cut
    # 0 below 0.2; 0.2..0.5: mean 0.5; 0.5..1: 0.6 up to 0.6 + 0.3 * 0.5 / 0.7 at x = 1
    at_one = 0.6 + 0.3 * 0.5 / 0.7
    assert normalised_auc(rows) == pytest.approx(0.3 * 0.5 + 0.5 * (0.6 + at_one) / 2)
    root = tmp_path / "runs"
    for s, a in enumerate([0.5, 0.6, 0.7]):
        _method_run(root, seed_name("cifar10-densenet121-elastic", s), None, a)
    run = _setting().run_path(str(root), RunName.parse("cifar10-densenet121-elastic"))
    got = budget_seeds(run, out_dir=str(tmp_path), log=lambda m: None)  # every finished seed
    assert got["auc"].n == 3 and got["auc"].mean == pytest.approx(0.9 * 0.6)
    assert os.path.isfile(tmp_path / "budget-seeds.png")
    assert "mean" in open(tmp_path / "budget-seeds.csv").read()
