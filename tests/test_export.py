"""Serving: exported cascades and predictors are the in-package model; latency, predict, sources."""

import csv
import json
import os
import platform

import keras
import numpy as np
import pytest

from elastic_keras import ElasticKerasError, elastify
from elastic_keras.inference.cascade import Cascade
from elastic_keras.cli import main
from elastic_keras.inference.predictors import truncated_predictor

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="export needs the TensorFlow backend")
FORMATS = ("saved_model", "litert", "onnx")
TOL = {"saved_model": 1e-5, "litert": 1e-4, "onnx": 1e-5}


def _tiny_raw():
    """A tiny elastic CNN on raw 6x6 uint8 images (in-graph resize to 8 px and scaling),
    3 outputs, weights set so that confidences vary and overlap across exits."""
    from elastic_keras.data.preprocessing import Preprocess

    L = keras.layers
    inp = keras.Input((6, 6, 3), name="images")
    x = Preprocess(8, name="preprocess")(inp)
    for i, filters in enumerate((16, 16, 32), 1):  # 16: onnxruntime's blocked layout applies
        if i > 1:
            x = L.MaxPooling2D(name=f"p{i - 1}")(x)
        x = L.Conv2D(filters, 3, padding="same", activation="relu", name=f"c{i}")(x)
    model = elastify(keras.Model(inp, x, name="tiny"), ["p1", "p2"], classes=5, dropout=0.1)
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(scale=0.5, size=w.shape).astype("float32"))
    return model


def _every_exit_batch(model, n=32):
    """(images, threshold): a batch of n in which images leave at every exit at that
    threshold, each image at least 1e-3 away from it at the exits it is tested at."""
    from elastic_keras.inference.export import input_spec
    from elastic_keras.inference.latency import probe_images

    x = probe_images(input_spec(model), 256)
    probs = [np.asarray(p).max(axis=1) for p in model([x.astype("float32")], training=False)]
    for thr in np.quantile(np.concatenate(probs[:-1]), np.linspace(0.2, 0.8, 13)):
        taken = np.where(probs[0] >= thr, 1, np.where(probs[1] >= thr, 2, 3))
        safe = (np.abs(probs[0] - thr) > 1e-3) & ((taken == 1) | (np.abs(probs[1] - thr) > 1e-3))
        picks = [np.flatnonzero(safe & (taken == k)) for k in (1, 2, 3)]
        if all(len(p) for p in picks):
            order = np.concatenate([np.resize(p, n // 3 + 1) for p in picks])[:n]
            return x[order], float(thr)
    raise AssertionError("no threshold sends images out at every exit")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from elastic_keras.inference.export import export_model

    model = _tiny_raw()
    folder = tmp_path_factory.mktemp("exports")
    for fmt in FORMATS:
        export_model(model, fmt, folder / fmt, log=lambda *_: None)
    x, thr = _every_exit_batch(model)
    return model, folder, x, thr


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_cascade_and_predictors_are_the_in_package_model(exported, fmt):
    from elastic_keras.inference.runtimes import Exported

    model, folder, x, thr = exported
    cascade = Cascade(model)
    assert set(Cascade(model)(x, thr).exits) == {1, 2, 3}  # every exit is taken
    runs = [Exported(folder / fmt)] + ([Exported(folder / fmt, driver=False)]
                                       if fmt == "litert" else [])  # LiteRT's one graph too
    for run in runs:
        for t in (0.0, thr, 2.0):
            for n in (1, 32):
                want, got = cascade(x[:n], t), run.cascade(x[:n], t)
                np.testing.assert_array_equal(got["exits"], want.exits)
                np.testing.assert_array_equal(got["classes"], want.predictions)
                np.testing.assert_allclose(got["probabilities"], want.probabilities,
                                           atol=TOL[fmt])
        assert (run.cascade(x, 0.0)["exits"] == 1).all()
        assert (run.cascade(x, 2.0)["exits"] == 3).all()
    for name in model.output_names:
        want = np.asarray(truncated_predictor(model, name)(x.astype("float32"), training=False))
        got = runs[0].predictor(name)(x)
        np.testing.assert_allclose(got["probabilities"], want, atol=TOL[fmt])
        np.testing.assert_array_equal(got["classes"], want.argmax(axis=1))


def test_manifest_and_refusals(exported, tmp_path):
    from elastic_keras.inference.export import export_model

    model, folder, _, _ = exported
    m = json.loads((folder / "onnx" / "manifest.json").read_text())
    assert [e["output"] for e in m["exits"]] == ["exit_1", "exit_2", "final"]
    assert [e["layer"] for e in m["exits"]] == ["p1", "p2", "c3"]
    assert m["exits"][0]["path_macs"] == m["exits"][0]["macs"]
    assert m["input"]["dtype"] == "uint8" and m["input"]["shape"] == [None, 6, 6, 3]
    assert m["classes"] == 5 and m["criterion"] == "max_prob" and m["versions"]["onnxruntime"]
    assert os.path.isfile(folder / "onnx" / "cascade_driver.py")
    assert len(m["artifacts"]["segments"]) == 3
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ElasticKerasError, match="holds no export"):
        export_model(model, "onnx", tmp_path / "busy")
    with pytest.raises(ElasticKerasError, match="unknown export format 'tflite'"):
        export_model(model, "tflite", tmp_path / "x")
    with pytest.raises(ElasticKerasError, match="temperatures must be 3 positive"):
        export_model(model, "saved_model", tmp_path / "t", temperatures=[1.0, 0.0, 1.0])
    assert not os.path.exists(tmp_path / "t") and not os.path.exists(tmp_path / "x")


def test_latency_writes_csv_and_budget_uses_it(exported, tmp_path, capsys):
    from elastic_keras.report.budget import write_budget
    from elastic_keras.inference.latency import add_latency, read_path_costs

    _, folder, _, _ = exported
    assert main(["latency", str(folder / "litert"), "--batch", "1,4", "--repeats", "3"]) == 0
    rows = list(csv.DictReader(open(folder / "litert" / "latency.csv")))
    assert {r["kind"] for r in rows} == {"path", "predictor"}
    assert {(r["exit"], r["batch"]) for r in rows if r["kind"] == "predictor"} == {
        (e, b) for e in ("exit_1", "exit_2", "final") for b in ("1", "4")}
    ends = [r for r in rows if r["kind"] == "path" and r["exit"] in ("exit_1", "final")]
    assert all(float(r["p95_ms"]) >= float(r["p50_ms"]) > 0 for r in ends)
    assert all(r["runtime"] == "litert" and r["device"] for r in rows)
    costs = {"path": [1.0, 2.0, 4.0], "predictor": [0.5, 1.5, 3.0], "batch": 4}
    budget = [{"kind": "cascade", "criterion": "max_prob", "threshold": 0.5, "quantile": 0.5,
               "exit": "", "test_accuracy": 0.5, "test_macs": 10.0, "exit_fractions":
               "0.5000 0.2500 0.2500"},
              *[{"kind": "exit", "exit": e, "test_accuracy": 0.4, "test_macs": 5.0}
                for e in ("exit_1", "exit_2", "final")]]
    add_latency(budget, costs)
    assert [r["test_ms"] for r in budget] == [0.5 + 0.5 + 1.0, 0.5, 1.5, 3.0]
    write_budget(tmp_path / "b.csv", tmp_path / "b.png", budget, "t", cost="latency")
    assert "test_ms" in open(tmp_path / "b.csv").readline()
    with pytest.raises(ElasticKerasError, match="not found"):
        read_path_costs(tmp_path / "none.csv")


def test_the_driver_sends_a_batch_out_at_a_chosen_exit_for_timing(exported):
    from elastic_keras.inference.runtimes import Exported

    _, folder, x, _ = exported
    for fmt in ("litert", "onnx"):
        e = Exported(folder / fmt)
        for k, name in enumerate(e.output_names, 1):
            got = e.cascade(x, 2.0, exit_at=k)  # 2.0: nobody would leave early on their own
            assert (got["exits"] == k).all()
            np.testing.assert_allclose(got["probabilities"],
                                       e.predictor(name)(x)["probabilities"], atol=1e-4)
    with pytest.raises(ElasticKerasError, match="only a segment driver"):
        Exported(folder / "saved_model").cascade(x, 2.0, exit_at=2)


def test_onnx_segments_pass_features_in_onnxruntimes_blocked_layout(exported):
    from elastic_keras.inference.segment_driver import SegmentCascade

    _, folder, x, thr = exported
    joined, apart = SegmentCascade(folder / "onnx"), SegmentCascade(folder / "onnx", False)
    assert apart.layout == "NCHWc at 0 of 2 segment boundaries"
    if platform.machine().lower() in ("x86_64", "amd64"):  # where onnxruntime blocks (AVX2 up)
        assert joined.layout == "NCHWc at 2 of 2 segment boundaries"
    for t in (0.0, thr, 2.0):
        for got, want in zip(joined(x, t), apart(x, t)):
            np.testing.assert_array_equal(got, want)
    assert main(["latency", str(folder / "onnx"), "--batch", "2", "--repeats", "2"]) == 0
    rows = list(csv.DictReader(open(folder / "onnx" / "latency.csv")))
    assert rows and all(r["runtime"] == f"onnx ({joined.layout})" for r in rows)


def test_predict_png_folder_through_an_export(exported, tmp_path, capsys):
    from PIL import Image

    _, folder, x, thr = exported
    pics = tmp_path / "pics"
    pics.mkdir()
    Image.fromarray(x[0]).save(pics / "a.png")
    Image.fromarray(x[1, :, :, 0]).resize((10, 10)).save(pics / "b_grey.png")
    Image.fromarray(np.dstack([x[2], np.full((6, 6), 255, np.uint8)])).save(pics / "c.png")
    (pics / "d_broken.png").write_text("not an image")
    code = main(["predict", str(folder / "litert"), str(pics), "--threshold", str(thr)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert sum("confidence" in line for line in out) == 3
    assert sum("error: cannot read image" in line for line in out) == 1
    notes = [line for line in out if line.startswith("note:")]
    assert len(notes) == 1 and "mode L -> RGB" in notes[0] and "10x10 -> 6x6" in notes[0]
    assert main(["predict", str(folder / "onnx"), str(pics / "a.png"), "--format", "json",
                 "--threshold", "0"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["predictions"][0]["exit"] == 1 and got["errors"] == []


def test_sources_run_directory_and_keras_file(tmp_path):
    from elastic_keras import files
    from elastic_keras.runs.config import load_config
    from elastic_keras.model.factory import model_from_config
    from elastic_keras.runs.source import load_source

    cfg = load_config("cifar10-mobilenet-elastic", profile="smoke")  # CIFAR-10: class names
    cfg["resolved"] = {"num_classes": 10, "image_shape": [32, 32, 3]}
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    net = model_from_config(cfg, 10, (32, 32, 3), initial_weights=False)
    net.save_weights(run / "ckpt" / "best.weights.h5")
    files.write_json(run / "config.json", cfg)
    files.write_json(run / "state.json", {"status": "trained", "history": [{}], "best": {
        "full": {"file": "ckpt/best.weights.h5", "val_loss": 1.0}}})
    files.write_json(run / "calibration.json", {"temperatures": [1.5] * 13, "threshold": 0.7,
                                                "criterion": "max_prob", "certificate": None})
    src = load_source(run)
    assert src.kind == "run" and src.threshold == 0.7 and src.class_names[3] == "cat"
    assert src.meta["temperatures"] == [1.5] * 13 and len(src.meta["config_hash"]) == 64
    for a, b in zip(src.model.weights, net.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tiny = _tiny_raw()
    tiny.save(tmp_path / "tiny.keras")
    assert load_source(tmp_path / "tiny.keras").kind == "keras"
    with pytest.raises(ElasticKerasError, match="run directory or a .keras file"):
        load_source(run / "config.json")


def test_export_under_another_backend_says_so_in_one_line(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "jax"}
    got = subprocess.run([sys.executable, "-m", "elastic_keras", "export", "x.keras", "--format",
                          "onnx", "--out", str(tmp_path / "out")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert got.returncode == 2
    assert got.stderr.strip() == ("error: export needs the TensorFlow backend "
                                  "(KERAS_BACKEND=tensorflow); this process runs Keras on jax")
    assert not os.path.exists(tmp_path / "out")


def test_calibrated_temperatures_apply_inside_the_exports(exported, tmp_path):
    from elastic_keras.inference.export import export_model
    from elastic_keras.inference.runtimes import Exported

    model, _, x, _ = exported
    temps = [1.7, 0.6, 2.5]
    cascade = Cascade(model, temperatures=temps)
    thr = float(np.median(cascade(x, 2.0).probabilities.max(axis=1)))
    for fmt in ("saved_model", "onnx"):
        export_model(model, fmt, tmp_path / fmt, temperatures=temps, log=lambda *_: None)
        run = Exported(tmp_path / fmt)
        assert run.manifest["temperatures"] == temps
        for t in (0.0, thr, 2.0):
            want, got = cascade(x, t), run.cascade(x, t)
            np.testing.assert_array_equal(got["exits"], want.exits)
            np.testing.assert_allclose(got["probabilities"], want.probabilities, atol=1e-5)
