"""The reproduction drivers end to end on smoke runs: tables, resume, figure, notebook."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from elastic_keras import ElasticKerasError
from elastic_keras.sweep.cells import run_configs, select
from elastic_keras.report.tables import table_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = "cifar10-densenet121-elastic,cifar10-densenet121-plain"


def _reproduce(tmp, *extra, popen=False, table="table1", runs=RUNS):
    cmd = [sys.executable, "-m", "elastic_keras", "reproduce", table, "--profile", "smoke",
           "--data", "synthetic", *(["--runs", runs] if runs else []), "--runs-root",
           str(tmp / "runs"), "--out", str(tmp / "results"), *extra]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_selection_and_data_replacement():
    # 7 elastic + 6 plain models of the paper, and the authors' MobileNet (elastic and plain),
    # on both datasets; Table II reuses three of them.
    assert len(table_runs("table1")) == 30 and len(table_runs("table2")) == 3
    assert set(table_runs("table2")) < set(table_runs("table1"))
    assert len(table_runs("table1", "authors")) == 26  # their MobileNet *is* the MobileNet row
    assert select("table1", "mobilenet") == ["cifar10-mobilenet-elastic", "cifar10-mobilenet-plain",
                                             "cifar100-mobilenet-elastic", "cifar100-mobilenet-plain"]
    with pytest.raises(ElasticKerasError, match="match no run"):
        select("table1", "mobilenet,resnet18")
    cfgs, skipped = run_configs("table1", "smoke", data="synthetic", runs="vgg16")
    assert [c["data"]["num_classes"] for c in cfgs] == [10, 10, 100, 100]
    assert all(c["data"]["dataset"] == "synthetic" and c["profile"] == "smoke" for c in cfgs)
    cfgs, skipped = run_configs("table1", "demo", data="digits", runs="vgg16")
    assert len(cfgs) == 2 and skipped == ["cifar100-vgg16-elastic", "cifar100-vgg16-plain"]
    paper = run_configs("table2")[0]
    assert all(c["model"]["input_size"] == 224 and c["train"]["batch_size"] == 16
               and c["phases"]["full"]["epochs"] == 100 for c in paper)


def test_smoke_reproduce_resumes_rewrites_identically_and_feeds_figure_and_notebook(tmp_path):
    runs = tmp_path / "runs" / "smoke" / "synthetic"
    first, second = runs / "synthetic10-densenet121-elastic", runs / "synthetic10-densenet121-plain"
    # Interrupt (kill -9) while the second run trains, then run the same command again.
    proc = _reproduce(tmp_path, popen=True)
    deadline = time.time() + 600
    while time.time() < deadline and not (second / "state.json").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (first / "results.json").exists() and not (second / "results.json").exists()
    done_at = os.path.getmtime(first / "results.json")
    r = _reproduce(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[1/2]" in r.stdout and "[2/2]" in r.stdout and "finished already" in r.stdout
    assert os.path.getmtime(first / "results.json") == done_at  # not trained again
    assert json.loads((second / "results.json").read_text())["profile"] == "smoke"
    md = (tmp_path / "results" / "smoke-synthetic-table1.md").read_text()
    assert "NOT a reproduction" in md and "`smoke`" in md and "`synthetic`" in md
    csv1 = (tmp_path / "results" / "smoke-synthetic-table1.csv").read_text()
    # Again: no training, byte-identical tables.
    r = _reproduce(tmp_path)
    assert r.returncode == 0 and r.stdout.count("finished already") == 2
    assert (tmp_path / "results" / "smoke-synthetic-table1.csv").read_text() == csv1
    assert (tmp_path / "results" / "smoke-synthetic-table1.md").read_text() == md
    row = [line for line in csv1.splitlines() if line.startswith("DenseNet-121")
           or ",densenet121," in line][0]
    assert row.count(",,") < row.count(",")  # our cells are filled
    # Figure 3 from the histories (profile/data of the last reproduce by default).
    fig = subprocess.run([sys.executable, "-m", "elastic_keras", "figure3",
                          "--runs-root", str(tmp_path / "runs"), "--out",
                          str(tmp_path / "fig3.png")], capture_output=True, text=True)
    assert fig.returncode == 0, fig.stderr
    assert "using profile smoke, data synthetic" in fig.stdout
    assert (tmp_path / "fig3.png").read_bytes()[:4] == b"\x89PNG"
    # The notebook executes headless on these smoke results.
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from notebook import run_notebook

    run_notebook(os.path.join(REPO, "notebooks", "loss_curves.ipynb"), run_dir=str(first),
                 timeout=300)
    _readme_order_keeps_every_table(tmp_path)


SMALL = ("--set", "data.train_limit=40", "--set", "data.test_limit=20")  # new cells only


def _readme_order(tmp):
    """The README's commands in its order (Table I, Table II, Figure 3, methods), each
    command's output, after each step the bytes of every table written so far."""
    steps = [
        ("table1", lambda: _reproduce(tmp)),
        ("table2", lambda: _reproduce(tmp, *SMALL, table="table2",
                                      runs="cifar100-densenet121-plain")),
        ("figure3", lambda: subprocess.run(
            [sys.executable, "-m", "elastic_keras", "figure3", "--profile", "smoke", "--data",
             "synthetic", "--runs-root", str(tmp / "runs"), "--out",
             str(tmp / "results" / "smoke-synthetic-figure3.png")],
            capture_output=True, text=True, timeout=600)),
        ("methods", lambda: _reproduce(tmp, *SMALL, "--backbone", "densenet121", "--schemes",
                                       "second_half", table="methods", runs=None)),
    ]
    for name, step in steps:
        r = step()
        assert r.returncode == 0, (name, r.stdout[-2000:], r.stderr[-2000:])
        yield name, r.stdout, {p.name: p.read_bytes() for p in (tmp / "results").iterdir()}


def _cells(csv_bytes, model="DenseNet-121"):
    import csv

    row = next(r for r in csv.DictReader(csv_bytes.decode().splitlines()) if r["model"] == model)
    return {k: v for k, v in row.items() if v}


def _readme_order_keeps_every_table(tmp):
    """Issue 27: `reproduce table2` after `reproduce table1` rewrote Table I from its own
    selection. Every table is every finished run of its setting: no later command makes one
    smaller, and a table whose runs did not change keeps its bytes."""
    t1 = "smoke-synthetic-table1.csv"
    before = (tmp / "results" / t1).read_bytes()
    seen = {}
    for name, out, now in _readme_order(tmp):
        for f, data in seen.items():  # a table written before, whose runs did not change
            if not (name == "table2" and f.startswith("smoke-synthetic-table1")):
                assert now[f] == data, (name, f)
        seen.update(now)
        if name == "table2":  # Table I gains the new run beside the old ones, unchanged
            old, new = _cells(before), _cells(now[t1])
            assert {k: new[k] for k in old if k not in ("dataset", "environment")} == {
                k: v for k, v in old.items() if k not in ("dataset", "environment")}
            assert "cifar100_without" in new and "cifar10_with" in new
            assert "table1: 3 of 30 runs finished" in out and "table2: 1 of 3" in out
        if name == "methods":
            assert "smoke-synthetic-methods.md" in now and "second half" in now[
                "smoke-synthetic-methods.md"].decode()
    # The same order again: nothing trains, no byte of any table or figure changes.
    done = {p: p.stat().st_mtime_ns for p in (tmp / "runs").rglob("results.json")}
    assert len(done) == 5
    for name, out, now in _readme_order(tmp):
        assert out.count("finished already") == {"table1": 2, "table2": 1, "figure3": 0,
                                                 "methods": 2}[name], (name, out[-1500:])
        assert now == seen, [f for f in now if now[f] != seen.get(f)]
    assert done == {p: p.stat().st_mtime_ns for p in (tmp / "runs").rglob("results.json")}


def test_a_built_wheel_reproduces_a_smoke_table_from_any_folder(tmp_path):
    """Issue 11: configs and the paper's numbers are package data; nothing reads the clone."""
    wheels, site, outside = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    outside.mkdir()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(wheels), REPO], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("elastic_keras-*.whl"))
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(site), str(wheel)], capture_output=True, text=True,
                          timeout=600)
    assert inst.returncode == 0, inst.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import elastic_keras; print(elastic_keras.__file__)"],
                           capture_output=True, text=True, cwd=outside, env=env)
    assert where.stdout.startswith(str(site)), where.stdout  # the wheel's copy, not the clone
    r = subprocess.run([sys.executable, "-m", "elastic_keras", "reproduce", "table1", "--profile",
                        "smoke", "--data", "synthetic", "--runs", "cifar10-mobilenet-elastic",
                        "--set", "model.alpha=0.25", "--set", "data.train_limit=40",
                        "--set", "data.test_limit=20"], capture_output=True, text=True,
                       cwd=outside, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    md = (outside / "results" / "smoke-synthetic-table1.md").read_text()
    assert "| MobileNet | — | 10.37ᵃ |" in md and "7.82ᵃᵖ" in md  # the paper's numbers
    assert (outside / "runs" / "smoke" / "synthetic" / "synthetic10-mobilenet-elastic" /
            "results.json").exists()
