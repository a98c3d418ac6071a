"""Sweeps: two reproducers on one runs folder, failures that fail alone, the ray launcher."""

import json
import os
import subprocess
import sys

import pytest

from elastic_keras.errors import ElasticKerasError
from elastic_keras.sweep.launchers import make_launcher

RUNS = "cifar10-mobilenet-elastic,cifar10-mobilenet-plain,cifar100-mobilenet-plain"
SETS = ["--set", "model.alpha=0.25", "--set", "data.train_limit=60", "--set",
        "data.test_limit=20"]


def _reproduce(root, *extra, runs=RUNS, popen=False):
    cmd = [sys.executable, "-m", "elastic_keras", "reproduce", "table1", "--profile", "smoke",
           "--data", "synthetic", "--runs", runs, "--runs-root", str(root / "runs"),
           "--out", str(root / "results"), *SETS, *extra]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


def _tables(root):
    out = {}
    for name in sorted(os.listdir(root / "results")):
        out[name] = (root / "results" / name).read_text().replace(str(root), "ROOT")
    return out


def test_two_reproducers_at_once_train_every_run_once(tmp_path):
    procs = [_reproduce(tmp_path, popen=True) for _ in range(2)]
    outs = [p.communicate(timeout=1200) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    runs = tmp_path / "runs" / "smoke" / "synthetic"
    for name in RUNS.split(","):
        name = name.replace("cifar", "synthetic", 1)  # runs are named by their data
        state = json.loads((runs / name / "state.json").read_text())
        assert state["status"] == "evaluated"
        assert len(state["sessions"]) == 1, name  # trained once, by one worker
        assert [r["epoch"] for r in state["history"]] == [1, 2, 3]
        assert not [f for f in os.listdir(runs / name / "ckpt") if f.startswith(".tmp-")]
    stdout = "".join(o for o, _ in outs)
    assert stdout.count("test error of each exit") == 3  # three runs, three trainings
    assert "being trained by another worker" in stdout or "finished already" in stdout
    # Both wrote the same tables.
    assert "wrote" in outs[0][0] and "wrote" in outs[1][0]


def test_a_failing_run_fails_alone_and_the_summary_names_it(tmp_path):
    broken = tmp_path / "runs" / "smoke" / "synthetic" / "synthetic10-mobilenet-plain"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"name": ')  # a corrupt run directory
    r = _reproduce(tmp_path, runs="cifar10-mobilenet-elastic,cifar10-mobilenet-plain")
    assert r.returncode == 1, r.stderr
    assert "1 failed: synthetic10-mobilenet-plain" in r.stdout and "corrupt" in r.stdout
    assert (tmp_path / "runs" / "smoke" / "synthetic" / "synthetic10-mobilenet-elastic" /
            "results.json").exists()
    md = (tmp_path / "results" / "smoke-synthetic-table1.md").read_text()
    assert "`synthetic10-mobilenet-plain`: unfinished" in md


def test_launcher_arguments_are_checked():
    with pytest.raises(ElasticKerasError, match="unknown launcher 'slurm'"):
        make_launcher("slurm")
    with pytest.raises(ElasticKerasError, match="--gpus-per-run applies to --launcher ray"):
        make_launcher("local", gpus_per_run=0.25)
    with pytest.raises(ElasticKerasError, match="share in"):
        make_launcher("ray", gpus_per_run=1.5)


def test_ray_gives_the_same_tables_as_the_local_launcher(tmp_path):
    pytest.importorskip("ray")
    runs = "cifar10-mobilenet-elastic,cifar10-mobilenet-plain"
    local, ray = tmp_path / "local", tmp_path / "ray"
    r = _reproduce(local, runs=runs)
    assert r.returncode == 0, r.stderr
    r = _reproduce(ray, "--launcher", "ray", runs=runs)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "=== ray: 2 runs as tasks" in r.stdout and "about" in r.stdout
    assert _tables(local) == _tables(ray)
    r = _reproduce(ray, "--launcher", "ray", "--gpus-per-run", "0.25", runs=runs)
    assert r.returncode == 2 and "has none" in r.stderr
