"""Int8 exports: the cascade is its own predictors; quantization.csv; calibrate EXPORT_DIR."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from elastic_keras import elastify
from elastic_keras.cli import main

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="export needs the TensorFlow backend")
# name: export options (the runtime's own I/O type by default; float heads both ways)
EXPORTS = {"litert": ["--format", "litert"], "onnx": ["--format", "onnx"],
           "litert-float-heads": ["--format", "litert", "--io", "uint8", "--float-heads"],
           "onnx-int8-float-heads": ["--format", "onnx", "--io", "int8", "--float-heads"]}
MAX_DROP_PTS = 3.0  # the test model's int8 accuracy is within 3 points of float, every exit


def _digits_model():
    """A tiny elastic CNN on digits' raw 8x8 images, 3 outputs, trained 12 epochs (seconds)."""
    from elastic_keras import ExitTrainer
    from elastic_keras.data.datasets import load_dataset
    from elastic_keras.data.preprocessing import Preprocess

    L = keras.layers
    inp = keras.Input((8, 8, 3), name="images")
    x = Preprocess(8, name="preprocess")(inp)
    for i, filters in enumerate((16, 16, 32), 1):
        if i > 1:
            x = L.MaxPooling2D(name=f"p{i - 1}")(x)
        x = L.Conv2D(filters, 3, padding="same", activation="relu", name=f"c{i}")(x)
    keras.utils.set_random_seed(0)
    model = elastify(keras.Model(inp, x, name="tiny"), ["p1", "p2"], classes=10, dropout=0.1)
    data = load_dataset("digits")
    trainer = ExitTrainer(model, loss_weights=[1.0] * 3)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    trainer.fit(data.x_train, data.y_train, epochs=12, batch_size=32, verbose=0)
    return model


def _fake_run(folder, model):
    """A run directory of the demo profile on digits whose model is `model` (the tests
    patch RunDir.model), with a certified threshold to be in force; exit 1's temperature
    sharpens its softmax, so that images leave there."""
    from elastic_keras import files
    from elastic_keras.runs.config import load_config

    cfg = load_config("cifar10-mobilenet-elastic", ["data.dataset=digits",
                                                    "data.num_classes=10"], profile="demo")
    cfg["resolved"] = {"num_classes": 10, "image_shape": [8, 8, 3]}
    (folder / "ckpt").mkdir(parents=True)
    (folder / "ckpt" / "best.weights.h5").write_bytes(b"")
    files.write_json(folder / "config.json", cfg)
    files.write_json(folder / "state.json", {"status": "evaluated", "history": [{}], "best": {
        "full": {"file": "ckpt/best.weights.h5", "val_loss": 1.0}}})
    files.write_json(folder / "calibration.json", {
        "temperatures": [0.3, 0.8, 1.2], "threshold": 0.8, "criterion": "max_prob",
        "certificate": {"text": "a float certificate"}})


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The tiny run and its exports: four int8 (EXPORTS) and one float ONNX."""
    from elastic_keras.runs.rundir import RunDir

    model = _digits_model()
    root = tmp_path_factory.mktemp("quant")
    _fake_run(root / "run", model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RunDir, "model", lambda self: model)
        for name, options in EXPORTS.items():
            assert main(["export", str(root / "run"), *options, "--quantize", "int8",
                         "--calibration-images", "200", "--out", str(root / name)]) == 0
        assert main(["export", str(root / "run"), "--format", "onnx", "--out",
                     str(root / "float-onnx")]) == 0
        yield model, root, patch


def _validation():
    from elastic_keras.data.datasets import load_dataset

    data = load_dataset("digits")
    return data.x_val, data.y_val


def _every_exit_batch(exported, x, n=32):
    """(images, threshold): n images of `x` leaving at every exit of the int8 predictors."""
    from elastic_keras.inference.predictors import route

    probs = [exported.predictor(name)(x)["probabilities"] for name in exported.output_names]
    for thr in np.unique(np.concatenate([p.max(axis=1) for p in probs[:-1]])):
        taken = route(probs, "max_prob", thr)
        picks = [np.flatnonzero(taken == k) for k in range(3)]
        if min(len(p) for p in picks) >= 4:
            order = np.concatenate([np.resize(p, n // 3 + 1) for p in picks])[:n]
            return x[order], float(thr)
    raise AssertionError("no threshold sends images out at every exit")


@pytest.mark.parametrize("name", EXPORTS)
def test_int8_cascade_equals_its_own_int8_predictors(exports, name):
    from elastic_keras.inference.predictors import route
    from elastic_keras.inference.runtimes import Exported

    _, root, _ = exports
    exported = Exported(root / name)
    x, thr = _every_exit_batch(exported, _validation()[0])
    assert exported.manifest["quantization"]["scheme"] == "int8"
    for t in (0.0, thr, 2.0):  # every image out at exit 1, at every exit, at the final
        probs = [exported.predictor(n)(x)["probabilities"] for n in exported.output_names]
        want = route(probs, "max_prob", t)
        for n in (1, 32):
            got = [exported.cascade(x[s:s + n], t) for s in range(0, 32, n)]
            exits = np.concatenate([g["exits"] for g in got])
            np.testing.assert_array_equal(exits, want + 1)
            np.testing.assert_array_equal(np.concatenate([g["classes"] for g in got]),
                                          [probs[k][i].argmax() for i, k in enumerate(want)])
            # the same integers, dequantized alike; float heads: float kernels at other
            # batch sizes, within float32 rounding (FIDELITY.md Q2)
            np.testing.assert_allclose(np.concatenate([g["probabilities"] for g in got]),
                                       [probs[k][i] for i, k in enumerate(want)], rtol=0,
                                       atol=1e-6 if "float-heads" in name else 0)
        assert len(set(want)) == (3 if t == thr else 1)
    if name.startswith("onnx"):  # features pass as onnxruntime's integer kernels compute
        assert exported.runtime == "onnx (int8, features NHWC)"


def test_quantization_csv_and_manifest(exports):
    from elastic_keras.inference.quantize import weights_sha256
    from elastic_keras.inference.runtimes import Exported
    from elastic_keras.runs.quantized import exported_outputs, summary

    model, root, _ = exports
    for name in EXPORTS:
        rows = list(csv.DictReader(open(root / name / "quantization.csv")))
        assert [r["exit"] for r in rows] == ["exit_1", "exit_2", "final"]
        assert all(r["images"] == "validation split" and r["n"] == "288" for r in rows)
        assert float(rows[-1]["float_accuracy"]) > 0.8  # a trained model
        for r in rows:
            drop = 100 * (float(r["float_accuracy"]) - float(r["int8_accuracy"]))
            assert float(r["accuracy_drop_pts"]) == pytest.approx(drop)
            assert abs(drop) <= MAX_DROP_PTS, (name, r)
            # exit 1's softmax is nearly flat (max ~0.2): its argmax is the most fragile
            assert 0.8 <= float(r["agreement"]) <= 1 and float(r["ece_int8"]) >= 0
            assert r["threshold"] == "0.8" and 0 <= float(r["exit_change_share"]) <= 1
        # the ties are those of the export's own predictors, as served
        for r, p in zip(rows, exported_outputs(Exported(root / name), _validation()[0])):
            top = np.sort(p, 1)[:, -2:]
            assert float(r["int8_tie_share"]) == pytest.approx(np.mean(top[:, 0] == top[:, 1]))
        most = max(rows, key=lambda r: float(r["int8_tie_share"]))
        said = summary(root / name)[0]
        if float(most["int8_tie_share"]):  # integer probabilities: ties
            assert (f"int8 top-two ties on {100 * float(most['int8_tie_share']):.1f}% at most "
                    f"({most['exit']}; the class is the lower index there)") in said
        else:  # float heads: float probabilities
            assert "float-heads" in name and "no int8 top-two ties" in said
    m = json.loads((root / "litert" / "manifest.json").read_text())
    q = m["quantization"]
    assert q["calibration_images"]["count"] == 200 and q["calibration_images"]["seed"] == 0
    assert "training split of run" in q["calibration_images"]["from"]
    assert q["float_model_sha256"] == weights_sha256(model) and q["activations"] == "int8"
    assert q["tensors"]["segments/segment_2.tflite"]["tap"][2] == "int8"
    assert m["output_temperatures"] == [0.3, 0.8, 1.2] and m["temperatures"] == [1.0] * 3
    assert "cascade" not in m["artifacts"] and len(m["artifacts"]["segments"]) == 3
    m = json.loads((root / "onnx" / "manifest.json").read_text())
    assert m["quantization"]["io"]["features"] == "uint8"
    assert m["quantization"]["tensors"]["exits/final.onnx"]["probabilities"][2] == "uint8"
    # features pass channels last as the integers themselves: each segment's tap reads what
    # the one before gives, at its zero point and scale (the driver passes them as they are)
    tensors, segments = m["quantization"]["tensors"], m["artifacts"]["segments"]
    for a, b in zip(segments, segments[1:]):
        (scale, *rest), (tap, *read) = tensors[a]["features"], tensors[b]["tap"]
        assert rest == read and read[1] == "uint8" and scale == pytest.approx(tap, rel=1e-6)
    fh = json.loads((root / "litert-float-heads" / "manifest.json").read_text())["quantization"]
    assert fh["float_heads"] and fh["io"]["probabilities"] == "float32"
    assert not any(fh["tensors"].values())  # LiteRT's selective quantization: float I/O
    fh = json.loads((root / "onnx-int8-float-heads" / "manifest.json").read_text())
    tensors = fh["quantization"]["tensors"]
    assert tensors["segments/segment_2.onnx"]["tap"][2] == "int8"  # integer features
    assert not any("probabilities" in t for t in tensors.values())  # float heads


def test_report_rows_count_top_two_ties():
    from elastic_keras.runs.quantized import report_rows

    floats = [np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.3, 0.3, 0.4]])]
    ints = [np.array([[0.5, 0.5, 0.0], [0.2, 0.7, 0.1], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4]])]
    row, = report_rows(["final"], floats, ints, np.array([1, 1, 2, 2]), "max_prob", None)
    # images 1 and 3 tie at the top and argmax takes the lower class, 0: as float on image
    # 1, against float's right 2 on image 3; image 4's tie is below its top
    assert row["int8_tie_share"] == 0.5 and row["agreement"] == 0.75
    assert row["float_accuracy"] == 0.75 and row["int8_accuracy"] == 0.5


def test_calibrate_an_export_on_its_own_outputs_then_serve_it(exports, capsys):
    from PIL import Image

    from elastic_keras.inference.manifest import threshold_in_force
    from elastic_keras.inference.predictors import route
    from elastic_keras.inference.runtimes import Exported

    _, root, _ = exports
    before = threshold_in_force(root / "onnx")
    assert not before["own"] and before["threshold"] == 0.8
    assert "certified on the float network's outputs, not on this int8" in before["line"]
    capsys.readouterr()
    for name in ("onnx", "float-onnx"):  # the same code path for a float export
        assert main(["calibrate", str(root / name), "--epsilon", "0.1"]) == 0
        out = capsys.readouterr().out
        assert "certificate: with probability at least 0.9" in out and "manifest.json" in out
        found = json.loads((root / name / "calibration.json").read_text())
        m = json.loads((root / name / "manifest.json").read_text())
        assert found["certified_on"] == m["certified_on"] == "export"
        assert m["threshold"] == found["threshold"] and m["certificate"] == found["certificate"]
        assert m["output_temperatures"] == found["temperatures"] != [1.0] * 3
        assert len(found["splits"]["calibration"]) == 202  # calibrate RUN's split of 288
        assert (root / name / "calibration.csv").is_file()
    exported = Exported(root / "onnx")  # now with its own temperatures
    assert exported.in_force()["own"]
    assert exported.in_force()["threshold"] == json.loads(
        (root / "onnx" / "calibration.json").read_text())["threshold"]
    x, thr = _every_exit_batch(exported, _validation()[0])
    probs = [exported.predictor(n)(x)["probabilities"] for n in exported.output_names]
    np.testing.assert_array_equal(exported.cascade(x, thr)["exits"],
                                  route(probs, "max_prob", thr) + 1)
    Image.fromarray(x[0]).save(root / "a.png")
    assert main(["predict", str(root / "onnx"), str(root / "a.png")]) == 0
    out = capsys.readouterr().out
    assert "this export's own certificate (calibrate EXPORT_DIR" in out.splitlines()[0]
    assert main(["latency", str(root / "onnx"), "--batch", "2", "--repeats", "1"]) == 0
    assert "this export's own certificate" in capsys.readouterr().out.splitlines()[0]


def test_bad_input_is_one_line_and_exit_2(exports, tmp_path, capsys):
    model, root, _ = exports
    run = str(root / "run")
    cases = [(["--format", "saved_model", "--quantize", "int8"], "--quantize int8 needs "
              "--format litert or onnx"),
             (["--format", "litert", "--quantize", "int8", "--calibration-images", "0"],
              "--calibration-images must be an integer >= 1; received 0"),
             (["--format", "onnx", "--io", "int8"], "--io apply to int8 exports"),
             (["--format", "onnx", "--quantize", "int8", "--calibration-data",
               str(tmp_path / "x.txt")], "--calibration-data must be a folder")]
    capsys.readouterr()
    for options, message in cases:
        assert main(["export", run, *options, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not os.path.exists(tmp_path / "out")
    model.save(tmp_path / "tiny.keras")
    assert main(["export", str(tmp_path / "tiny.keras"), "--format", "onnx", "--quantize",
                 "int8"]) == 2
    assert "needs --calibration-data FOLDER or NPZ" in capsys.readouterr().err


def test_a_keras_file_quantized_with_labelled_images(exports, tmp_path, capsys):
    model, _, _ = exports
    x, y = _validation()
    np.savez(tmp_path / "images.npz", x=x[:64], y=y[:64])
    model.save(tmp_path / "tiny.keras")
    out = tmp_path / "tiny-litert"
    assert main(["export", str(tmp_path / "tiny.keras"), "--format", "litert", "--quantize",
                 "int8", "--calibration-data", str(tmp_path / "images.npz"), "--out",
                 str(out)]) == 0
    rows = list(csv.DictReader(open(out / "quantization.csv")))
    assert rows[0]["n"] == "64" and "no held-out split" in rows[0]["images"]
    assert rows[0]["threshold"] == "" and float(rows[0]["exit_change_share"]) == 0
    capsys.readouterr()
    assert main(["calibrate", str(out)]) == 2
    assert "was made from keras, not a run" in capsys.readouterr().err
