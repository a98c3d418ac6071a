"""Faults in files and disks end in one line, and a sweep goes on (issue 19).

Each test reproduces a fault found by injecting it as a user would meet it: a damaged run
file, a disk or path that cannot be written, a table of nothing, a scheduler's SIGTERM.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from elastic_keras import ElasticKerasError
from elastic_keras.report.render import write_tables
from elastic_keras.runs.config import load_config
from elastic_keras.runs.names import Setting
from elastic_keras.runs.found import open_run
from elastic_keras.runs.train import train
from elastic_keras.sweep.cells import run_configs
from elastic_keras.sweep.reproduce import reproduce

SETS = ["model.alpha=0.25", "data.train_limit=60", "data.test_limit=20",
        "phases.heads.lr=0.01", "phases.full.lr=0.01"]  # 1 + 2 epochs (smoke profile)
CELLS = "cifar10-mobilenet-elastic,cifar10-mobilenet-plain"
TIMING = ("time_s", "train_s", "val_s")


def _quiet(*_):
    pass


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "elastic_keras", *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def _one_line_error(r, *words):
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (
        r.returncode, r.stderr)
    for w in words:
        assert w in r.stderr, r.stderr


def _sweep(root, out=None, log=_quiet):
    return reproduce("table1", profile="smoke", data="synthetic", runs=CELLS,
                     runs_root=str(root), out_dir=str(out or root.parent / "results"),
                     extra=SETS, log=log)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The elastic cell's run of the smoke sweep: stopped after epoch 2 of 3 (a copy kept as
    `partial`), then resumed to the end (`finished`)."""
    root = tmp_path_factory.mktemp("faults") / "runs"
    cfg = run_configs("table1", "smoke", data="synthetic", runs=CELLS.split(",")[0],
                      extra=SETS)[0][0]

    def stop_at_epoch_3(line):
        if "epoch 3/3" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, runs_root=str(root), log=stop_at_epoch_3, verbose=False)
    finished = open_run(os.path.join(root, "smoke", "synthetic", cfg["name"]))
    partial = root.parent / "partial"
    shutil.copytree(finished.dir, partial)
    train(cfg, runs_root=str(root), log=_quiet, verbose=False)
    assert finished.finished and len(open_run(partial).state.history) == 2
    return {"cfg": cfg, "finished": finished.dir, "partial": str(partial)}


def _copy(runs, which, tmp_path):
    """A copy of the fixture's run at its place under tmp_path/runs."""
    dest = tmp_path / "runs" / "smoke" / "synthetic" / runs["cfg"]["name"]
    shutil.copytree(runs[which], dest)
    return dest


def _rows(path):
    """A run's history without timings, numbers rounded (float noise of a resumed run)."""
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()
             if k not in TIMING} for r in open_run(path).state.history]


# ---------------------------------------------------------------------------------------
# 1. Corrupt or partial run files

@pytest.mark.parametrize("damaged", ["epoch-0002.weights.h5", "epoch-0002.optimizer.npz"])
def test_a_corrupt_last_checkpoint_falls_back_to_the_one_before_and_says_so(
        runs, tmp_path, damaged):
    run_dir = _copy(runs, "partial", tmp_path)
    path = run_dir / "ckpt" / damaged
    path.write_bytes(path.read_bytes()[:3000])  # truncated
    lines = []
    train(runs["cfg"], runs_root=str(tmp_path / "runs"), log=lines.append, verbose=False)
    said = [line for line in lines if "going back to the checkpoint of epoch 1" in line]
    assert len(said) == 1 and damaged in said[0] and "is unreadable" in said[0], lines
    assert open_run(run_dir).finished
    assert _rows(run_dir) == _rows(runs["finished"])  # the same history


def test_a_corrupt_checkpoint_without_an_earlier_one_fails_with_one_line_naming_it(
        runs, tmp_path):
    run_dir = _copy(runs, "partial", tmp_path)
    state = json.loads((run_dir / "state.json").read_text())
    state["previous"] = None  # as after a first epoch
    (run_dir / "state.json").write_text(json.dumps(state))
    (run_dir / "ckpt" / "epoch-0002.weights.h5").write_bytes(os.urandom(4000))
    with pytest.raises(ElasticKerasError) as e:
        train(runs["cfg"], runs_root=str(tmp_path / "runs"), log=_quiet, verbose=False)
    assert "ckpt/epoch-0002.weights.h5 is unreadable" in str(e.value)
    assert "no earlier checkpoint" in str(e.value) and "\n" not in str(e.value)
    assert len(open_run(run_dir).state.history) == 2  # nothing lost


@pytest.mark.parametrize("text,message", [
    ('{"status": "evaluat', "is corrupt"),
    ('{"status": "training", "history": [{"epoch": 1}], "best": {}}', "malformed"),
    ('{"status": "training", "history": []}', "missing ['best']"),
])
def test_a_corrupt_or_incomplete_state_fails_its_run_alone_and_the_tables_are_written(
        runs, tmp_path, text, message):
    _copy(runs, "finished", tmp_path)
    other = tmp_path / "runs" / "smoke" / "synthetic" / "synthetic10-mobilenet-plain"
    other.mkdir()
    shutil.copy(os.path.join(runs["finished"], "config.json"), other / "config.json")
    (other / "state.json").write_text(text)
    written, failures = _sweep(tmp_path / "runs")
    assert [n for n, _ in failures] == ["synthetic10-mobilenet-plain"]
    assert message in failures[0][1] and str(other / "state.json") in failures[0][1]
    table = open(written["table1"][1], encoding="utf-8").read()
    assert "`synthetic10-mobilenet-plain`: unreadable: " in table  # listed by its run name
    row = next(line for line in table.splitlines() if line.startswith("| MobileNet |"))
    assert row.split("|")[5].strip() not in ("", "—")  # the elastic run's number is there


def test_train_evaluates_again_a_finished_run_whose_results_are_unreadable(runs, tmp_path):
    run_dir = _copy(runs, "finished", tmp_path)
    (run_dir / "results.json").write_text('{"exits": [')
    assert not open_run(run_dir).finished
    lines = []
    train(runs["cfg"], runs_root=str(tmp_path / "runs"), log=lines.append, verbose=False)
    assert any("is missing or unreadable: evaluating the run again" in x for x in lines)
    assert not any(" epoch " in x and " loss " in x for x in lines)  # no training
    before = json.load(open(os.path.join(runs["finished"], "results.json")))
    assert open_run(run_dir).results["exits"] == before["exits"]


def test_a_deleted_history_is_rebuilt_from_the_state_and_plotted(runs, tmp_path):
    from elastic_keras.report.plots import plot_run

    run_dir = _copy(runs, "finished", tmp_path)
    (run_dir / "history.csv").unlink()
    out = plot_run(open_run(run_dir))
    assert os.path.getsize(out) > 0
    assert (run_dir / "history.csv").read_text() == open(
        os.path.join(runs["finished"], "history.csv")).read()
    # A run without one finished epoch says exactly what is missing.
    state = json.loads((run_dir / "state.json").read_text())
    (run_dir / "state.json").write_text(json.dumps({**state, "history": [], "last": None}))
    (run_dir / "history.csv").unlink()
    with pytest.raises(ElasticKerasError, match="history.csv is missing and .*state.json "
                                                "holds no finished epoch"):
        plot_run(open_run(run_dir))


def test_the_accuracy_legend_stands_beside_the_curves(runs):
    import matplotlib

    matplotlib.use("Agg")
    from elastic_keras.report.plots import new_figure, plot_exit_curves

    fig = new_figure(figsize=(16, 5))
    ax = plot_exit_curves(open_run(runs["finished"]).history(), "accuracy",
                          ax=fig.add_subplot(1, 2, 2))
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert ax.get_legend().get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1


# ---------------------------------------------------------------------------------------
# 2. The disk and the paths: checked before training, one line, exit status 2

def _reproduce_cli(tmp_path, *extra):
    return _cli("reproduce", "table1", "--profile", "smoke", "--data", "synthetic", "--runs",
                CELLS, *extra)


def test_output_locations_are_checked_before_any_run_trains(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    runs = str(tmp_path / "runs")
    cases = [(["--runs-root", runs, "--out", str(a_file)], [f"--out {a_file}", "not a folder"]),
             (["--runs-root", str(a_file / "r")], ["--runs-root", "move it"]),
             (["--runs-root", runs, "--out", str(tmp_path / ("x" * 300))],
              ["--out", "File name too long", "shorter"]),
             (["--runs-root", "/sys/elastic-keras-cannot-write"],
              ["/sys/elastic-keras-cannot-write", "writable"])]
    for args, words in cases:
        _one_line_error(_reproduce_cli(tmp_path, *args), *words)
    assert not os.path.exists(os.path.join(runs, "smoke"))  # nothing trained


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_runs_folder_ends_in_one_line(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    _one_line_error(_reproduce_cli(tmp_path, "--runs-root", str(ro)), str(ro), "writable")


def test_plot_onto_a_folder_and_an_os_error_in_a_sweep(runs, tmp_path, monkeypatch):
    r = _cli("plot", runs["finished"], "--out", str(tmp_path))
    _one_line_error(r, str(tmp_path), "a folder, not a file", "give a file path")
    # An OS error while a run trains (a full disk) fails that run alone, in one line.
    from elastic_keras.runs import train as train_module
    from elastic_keras.sweep.launchers import train_one

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", "/runs/x/ckpt/epoch-0001.weights.h5")

    monkeypatch.setattr(train_module, "train", full_disk)
    outcome, message = train_one(runs["cfg"], str(tmp_path), False, _quiet, False)
    assert outcome == "failed" and message == (
        "/runs/x/ckpt/epoch-0001.weights.h5: No space left on device; the disk is full: free "
        "some space, then run the command again")


# ---------------------------------------------------------------------------------------
# 3. What a table says

def test_a_refused_sweep_records_no_setting_and_a_table_of_nothing_is_not_written(tmp_path):
    from elastic_keras.sweep.launchers import make_launcher

    with pytest.raises(ElasticKerasError, match="the paper profile needs an accelerator"):
        reproduce("table1", runs="mobilenet", runs_root=str(tmp_path / "runs"),
                  out_dir=str(tmp_path / "results"), log=_quiet,
                  launcher=make_launcher("local", profile="paper"))
    assert Setting.last(str(tmp_path / "runs")) is None
    r = _cli("tables", "--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"))
    assert r.returncode == 1 and "table1: no finished run under" in r.stdout, r.stdout
    assert not os.path.exists(tmp_path / "out" / "table1.md")


def test_a_diverged_run_is_listed_as_failed_with_its_reason(runs, tmp_path):
    _copy(runs, "finished", tmp_path)
    failed = tmp_path / "runs" / "smoke" / "synthetic" / "synthetic10-mobilenet-plain"
    failed.mkdir()
    shutil.copy(os.path.join(runs["finished"], "config.json"), failed / "config.json")
    (failed / "state.json").write_text(json.dumps({
        "status": "failed", "history": [], "best": {},
        "failure": "[x] diverged at run epoch 2 (phase 'full'): the loss is not finite"}))
    written, _, _ = write_tables(str(tmp_path / "runs"), Setting("smoke", data="synthetic"),
                                 str(tmp_path / "out"), which=("table1",), log=_quiet)
    table = open(written["table1"][1], encoding="utf-8").read()
    assert ("`synthetic10-mobilenet-plain`: failed: [x] diverged at run epoch 2 (phase "
            "'full'): the loss is not finite") in table


def test_a_set_that_sets_nothing_is_refused():
    for text in ("phases={}", "phases.full={}"):
        with pytest.raises(ElasticKerasError, match=r"sets no key"):
            load_config(None, ["name=x", "model.backbone=mobilenet", text])


# ---------------------------------------------------------------------------------------
# 4. Signals and start-up

@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, "Terminated"),
                                            (signal.SIGINT, "KeyboardInterrupt")])
def test_a_signal_landing_in_a_finalizer_is_not_swallowed(signum, raised):
    """Python swallows what __del__ raises; the handler sends the signal again instead."""
    from elastic_keras.errors import interrupts

    class Dying:
        def __del__(self):  # the signal lands here, as it did in TensorFlow's AtomicFunction
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # bytecodes: Python runs the handler between them
                pass

    with interrupts(), pytest.raises(KeyboardInterrupt) as e:
        Dying()
        time.sleep(5)  # without the second signal the block ends here, nothing raised
    assert type(e.value).__name__ == raised


def test_sigterm_ends_a_run_like_sigint_in_one_line_and_leaves_it_resumable(tmp_path):
    config = tmp_path / "r.toml"
    config.write_text('[model]\nbackbone = "mobilenet"\n')
    sets = [a for s in [*SETS, "data.dataset=synthetic", "phases.full.epochs=1"]
            for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "elastic_keras", "train", str(config),
                             "--profile", "smoke", *sets, "--runs-root", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "smoke" / "synthetic" / "r" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text() or "{}").get("history"):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.count("\n") == 1, err
    assert err.startswith("terminated (SIGTERM): every finished epoch is kept")
    run = open_run(state.parent)
    assert run.status == "training" and len(run.state.history) == 1 and run.state.last


def test_commands_that_need_no_network_library_import_none(tmp_path):
    code = (
        "import sys\nfrom elastic_keras.cli import main\n"
        f"root, out = {str(tmp_path / 'runs')!r}, {str(tmp_path / 'out')!r}\n"
        "for argv in (['--help'], ['configs'], ['tables', '--runs-root', root, '--out', out],\n"
        "             ['train', 'cifar10-mobilenet-elastic', '--dry-run'],\n"
        "             ['reproduce', 'table1', '--runs', 'vgg16', '--dry-run']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "    assert not {'keras', 'tensorflow', 'jax'} & set(sys.modules), argv\n"
        "print('none imported')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("none imported"), r.stderr


# ---------------------------------------------------------------------------------------
# 5. Progress numbers without a terminal

def test_progress_numbers_leave_out_the_first_step_and_add_up(monkeypatch, capsys):
    import io

    from elastic_keras.training import progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    stream = io.StringIO()
    clock = progress.StepProgress("[r] epoch 2/7", 16, every=0, stream=stream)
    clock.set_params({"steps": 101})
    clock.on_epoch_begin(0)
    for batch, seconds in ((0, 62.0), (1, 0.5), (2, 0.5)):  # a 62 s first step (tracing)
        now[0] += seconds
        clock.on_train_batch_end(batch, {"loss": 1.0})
    lines = stream.getvalue().splitlines()
    assert "first step 1m02s (tracing)" in lines[0]
    assert lines[2].endswith("32 img/s, 49s left"), lines  # 98 steps of 0.5 s
    row = {"loss": 1.0, "val_loss": 1.1, "time_s": 100.0, "train_s": 50.0, "val_s": 10.0}
    line = progress.epoch_line("[r] epoch 2/7", row, 800, 200)
    assert "(1m40s: 50s train at 16 img/s, 10s val at 20 img/s, 40s set-up)" in line
