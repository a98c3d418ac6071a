"""The HTTP server: its batching core against the exported cascade, the protocol, bad input,
back-pressure, disconnects, SIGTERM, Ray Serve; online control inside it."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

from elastic_keras.server.engine import Engine, QueueFull

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="export needs the TensorFlow backend")
sys.path.insert(0, os.path.dirname(__file__))
FORMATS = ("saved_model", "litert", "onnx")
TOL = {"saved_model": 1e-5, "litert": 1e-4, "onnx": 1e-5}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny elastic model of test_export in every format, images that leave at every
    exit at a threshold, the model's name."""
    from test_export import _every_exit_batch, _tiny_raw

    from elastic_keras.inference.export import export_model

    model = _tiny_raw()
    folder = tmp_path_factory.mktemp("served")
    for fmt in FORMATS:
        export_model(model, fmt, folder / fmt, log=lambda *_: None)
    x, thr = _every_exit_batch(model, 48)
    return folder, x, thr, model.name


def _reference(folder, x, thr):
    from elastic_keras.inference.segment_driver import SegmentCascade

    return SegmentCascade(folder)(x, thr)


@pytest.mark.parametrize("fmt", FORMATS)
def test_answers_equal_the_exported_cascade_in_random_groupings(exported, fmt):
    """Issue 28: batches gathered across requests, per segment; per image the answers are
    the exported cascade's (exits and classes exactly, probabilities within the format's
    tolerance), whatever requests the images came in and however they were batched."""
    from elastic_keras.inference.segment_driver import SegmentCascade

    folder, x, thr, _ = exported
    probs, classes, exits = _reference(folder / fmt, x, thr)
    assert set(exits) == {1, 2, 3}
    engine = Engine(SegmentCascade(folder / fmt).segments, 5, threshold=thr, max_batch=8,
                    max_wait_ms=3)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), 14, replace=False))
    groups = np.split(np.arange(len(x)), cuts)
    with ThreadPoolExecutor(4) as pool:  # requests arrive from several clients at once
        jobs = list(pool.map(lambda g: (g, engine.submit(x[g])), rng.permutation(
            np.array(groups, dtype=object))))
    for g, job in jobs:
        got = job.future.result(30)
        np.testing.assert_array_equal(got.exits, exits[g])
        np.testing.assert_array_equal(got.classes, classes[g])
        np.testing.assert_allclose(got.probabilities, probs[g], atol=TOL[fmt])
    assert engine.pending == 0 and engine.depths() == [0, 0, 0]
    engine.close()


def _fake(n_segments=3, delay=0.0, classes=4):
    """Segments on float rows: deterministic probabilities, features rows + 1."""
    def segment(k):
        def run(x):
            time.sleep(delay)
            x = np.asarray(x, np.float32)
            logits = np.stack([np.sin(x.sum(1) * (k + 1) + c) for c in range(classes)], 1) * 3
            p = np.exp(logits)
            p = (p / p.sum(1, keepdims=True)).astype(np.float32)
            return p, p.max(1), (lambda: x + 1) if k < n_segments - 1 else None
        return run
    return [segment(k) for k in range(n_segments)]


def test_deadlines_force_an_early_exit_and_max_exit_caps_the_depth():
    segments = _fake()
    x = np.random.default_rng(1).normal(size=(64, 3)).astype(np.float32)
    engine = Engine(segments, 4, threshold=0.99, max_batch=16, max_wait_ms=1,
                    costs=[0.0, 5.0, 5.0])  # no later segment fits in 200 ms
    job = engine.submit(x, deadline_ms=200).future.result(10)
    assert (job.exits == 1).all() and job.forced.all()
    free = engine.submit(x).future.result(10)  # the same images without a deadline
    assert (free.exits > 1).any() and not free.forced.any()
    capped = engine.submit(x, max_exit=2).future.result(10)
    assert capped.exits.max() == 2 and not capped.forced.any()
    np.testing.assert_array_equal(capped.classes[capped.exits == 1],
                                  free.classes[capped.exits == 1])
    engine.close()


def test_a_full_queue_refuses_at_once_and_memory_stays_bounded():
    engine = Engine(_fake(delay=0.3), 4, max_batch=4, max_wait_ms=0, max_queue=6)
    x = np.zeros((4, 3), np.float32)
    first = engine.submit(x)
    with pytest.raises(QueueFull, match="max-queue 6"):
        engine.submit(x)
    first.future.result(10)
    engine.submit(x).future.result(10)  # room again
    engine.close()


def test_online_control_audits_early_answers_and_moves_to_the_safe_end():
    """Issue 29 inside the server: audited images go on after their answer; when every
    early answer disagrees with the final exit, the monitor alarms and the threshold in
    force goes to the safe end (every image to the final exit)."""
    from elastic_keras.inference.online import from_calibration

    control = from_calibration({"threshold": 0.0, "certificate": {"epsilon": 0.05,
                                                                  "delta": 0.1}},
                               audit_rate=0.5)
    segments = _fake(2)
    final = segments[1]

    def first(x):  # confident and always wrong against the final exit
        p, _, feats = final(x)
        wrong = np.roll(p, 1, axis=1)
        return wrong, np.ones(len(x), np.float32), lambda: np.asarray(x, np.float32)
    engine = Engine([first, lambda x: final(np.asarray(x, np.float32) - 1)], 4,
                    threshold=0.5, max_batch=32, max_wait_ms=1, control=control)
    assert engine.threshold == 0.0
    x = np.random.default_rng(2).normal(size=(32, 3)).astype(np.float32)
    for _ in range(40):
        engine.submit(x).future.result(10)
        if control.alarms:
            break
    deadline = time.time() + 10
    while engine.audits_in_flight and time.time() < deadline:
        time.sleep(0.01)
    assert control.alarms == 1 and control.audits > 0 and engine.threshold > 1
    assert control.changes[0].reason == "alarm"
    after = engine.submit(x).future.result(10)
    assert (after.exits == 2).all()  # the safe end: the final exit for everyone
    engine.close()


# -- over HTTP ---------------------------------------------------------------------------
class Running:
    """A server of `app` on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                   log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)

    def call(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), data


def _server(folder, **options):
    import argparse

    from elastic_keras.server.assemble import build
    from elastic_keras.server.main import ARGUMENTS

    defaults = {flags[0].lstrip("-").replace("-", "_"): o.get("default")
                for flags, o in ARGUMENTS}
    args = argparse.Namespace(**{**defaults, "source": str(folder), **options})
    return build(args, log=lambda *_: None)


def _infer_body(images, **parameters):
    return json.dumps({"id": "r1", "parameters": parameters, "inputs": [
        {"name": "images", "datatype": "UINT8", "shape": list(images.shape),
         "data": images.ravel().tolist()}]})


def test_the_protocol_json_binary_and_a_triton_client(exported):
    folder, x, thr, name = exported
    probs, classes, exits = _reference(folder / "onnx", x, thr)
    served, engine, metrics, app = _server(folder / "onnx", threshold=thr)
    with Running(app) as s:
        assert s.call("GET", "/v2/health/ready")[0] == 200
        status, _, meta = s.call("GET", f"/v2/models/{name}")
        meta = json.loads(meta)
        assert meta["inputs"] == [{"name": "images", "datatype": "UINT8",
                                   "shape": [-1, 6, 6, 3]}]
        assert [o["name"] for o in meta["outputs"]] == ["class", "probability", "exit", "macs",
                                                        "forced"]
        assert meta["parameters"]["threshold"] == pytest.approx(thr)
        status, _, body = s.call("POST", f"/v2/models/{name}/infer", _infer_body(x[:5]))
        out = {o["name"]: o for o in json.loads(body)["outputs"]}
        assert status == 200 and out["exit"]["data"] == exits[:5].tolist()
        assert out["class"]["data"] == classes[:5].tolist()
        # A client written for the protocol, unchanged: binary tensors both ways.
        import tritonclient.http as triton

        client = triton.InferenceServerClient(f"127.0.0.1:{s.port}")
        assert client.is_model_ready(name)
        inp = triton.InferInput("images", list(x.shape), "UINT8")
        inp.set_data_from_numpy(x, binary_data=True)
        got = client.infer(name, [inp], outputs=[triton.InferRequestedOutput(n, binary_data=True)
                                                 for n in ("exit", "class", "probability")])
        np.testing.assert_array_equal(got.as_numpy("exit"), exits)
        np.testing.assert_array_equal(got.as_numpy("class"), classes)
        np.testing.assert_allclose(got.as_numpy("probability"), probs, atol=1e-5)
        text = s.call("GET", "/metrics")[2].decode()
        assert 'elastic_images_total{exit="exit_1"}' in text and "elastic_queue_depth" in text
    engine.close()


def test_bad_input_gets_a_one_line_4xx_and_the_server_goes_on(exported):
    folder, x, thr, name = exported
    served, engine, metrics, app = _server(folder / "onnx", max_body_mb=0.01)
    url = f"/v2/models/{name}/infer"
    nan = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 6, 6, 3],
                                  "data": [float("nan")] * 108}]}).replace("NaN", "NaN")
    bad = [("POST", url, "{not json", 400, "malformed JSON"),
           ("POST", url, _infer_body(x[:1]).replace('"UINT8"', '"BYTES"'), 400, "datatype"),
           ("POST", url, _infer_body(x[:1]).replace("[1, 6, 6, 3]", "[1, 8, 8, 3]"), 400, "shape"),
           ("POST", url, nan, 400, "NaN"),
           ("POST", url, _infer_body(np.zeros((40, 6, 6, 3), np.uint8)), 413, "limit"),
           ("POST", "/v2/models/nope/infer", _infer_body(x[:1]), 404, "unknown model"),
           ("POST", f"/v2/models/{name}/classify", b"not an image", 400, "cannot read"),
           ("POST", url, _infer_body(x[:1], max_exit=9), 400, "max_exit"),
           ("GET", url, None, 405, "Method Not Allowed")]
    with Running(app) as s:
        for method, path, body, code, words in bad:
            status, headers, data = s.call(method, path, body)
            assert status == code, (path, words, data)
            assert words in json.loads(data)["error"] and b"\n" not in data.strip()
            assert s.call("POST", url, _infer_body(x[:2]))[0] == 200  # still serving
        text = s.call("GET", "/metrics")[2].decode()
        assert 'elastic_requests_total{code="400"} 6.0' in text
    engine.close()


def test_a_png_body_is_classified_as_predict_converts_it(exported, tmp_path):
    from PIL import Image

    folder, x, thr, name = exported
    Image.fromarray(x[3]).resize((12, 12)).save(tmp_path / "a.png")
    served, engine, metrics, app = _server(folder / "onnx", threshold=thr)
    with Running(app) as s:
        status, _, body = s.call("POST", f"/v2/models/{name}/classify?max_exit=1",
                                 (tmp_path / "a.png").read_bytes())
    got = json.loads(body)
    assert status == 200 and got["exit"] == 1 and got["converted"] == ["size 12x12 -> 6x6"]
    engine.close()


def test_a_client_that_goes_away_leaks_nothing_and_a_full_queue_says_503(exported):
    folder, x, thr, name = exported
    served, engine, metrics, app = _server(folder / "onnx", max_queue=40, max_wait_ms=400.0)
    with Running(app) as s:
        sock = socket.create_connection(("127.0.0.1", s.port))  # sends, then hangs up
        body = _infer_body(x[:30]).encode()
        sock.sendall(f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: "
                     f"{len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.1)
        status, headers, data = s.call("POST", f"/v2/models/{name}/infer",
                                       _infer_body(x[:20]))  # 30 + 20 > 40 waiting
        assert status == 503 and headers["retry-after"] == "1" and b"queue full" in data
        sock.close()
        deadline = time.time() + 10
        while (engine.pending or any(engine.depths())) and time.time() < deadline:
            time.sleep(0.05)
        assert engine.pending == 0 and engine.depths() == [0, 0, 0]
        assert s.call("POST", f"/v2/models/{name}/infer", _infer_body(x[:2]))[0] == 200
    engine.close()


def _start(args):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "elastic_keras", "serve", *args, "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    return proc, port


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc, port, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the server did not become ready")


def test_sigterm_stops_accepting_answers_what_is_in_flight_and_exits_0(exported):
    folder, x, thr, name = exported
    proc, port = _start([str(folder / "onnx"), "--max-wait-ms", "1500"])
    _wait_ready(proc, port)
    answer = {}

    def ask():  # 5 images wait up to 1.5 s for a fuller batch: in flight at the SIGTERM
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", f"/v2/models/{name}/infer", _infer_body(x[:5]))
        r = conn.getresponse()
        answer.update(status=r.status, body=json.loads(r.read()))
    t = threading.Thread(target=ask)
    t.start()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    t.join(30)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert answer["status"] == 200 and len(answer["body"]["outputs"][0]["data"]) == 5
    assert "stopped: every request in flight answered; 1 answered" in out


def test_ray_serve_with_two_replicas_answers_as_one_process(exported):
    folder, x, thr, name = exported
    probs, classes, exits = _reference(folder / "onnx", x, thr)
    proc, port = _start([str(folder / "onnx"), "--ray", "--replicas", "2", "--threshold",
                         str(thr)])
    try:
        _wait_ready(proc, port)
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda i: _post(port, name, x[i:i + 6]), range(0, 48, 6)))
        np.testing.assert_array_equal(np.concatenate([g["exit"] for g in got]), exits)
        np.testing.assert_array_equal(np.concatenate([g["class"] for g in got]), classes)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]


def _post(port, name, images):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", f"/v2/models/{name}/infer", _infer_body(images))
    r = conn.getresponse()
    assert r.status == 200
    return {o["name"]: np.array(o["data"]) for o in json.loads(r.read())["outputs"]}


def test_online_control_over_http_audits_metrics_and_feedback(exported, tmp_path):
    """Issue 29 in the server: audited early answers, the controller's state in /metrics
    and the model's metadata, labelled feedback by request id."""
    import shutil

    folder, x, thr, name = exported
    certified = tmp_path / "certified"
    shutil.copytree(folder / "onnx", certified)
    manifest = json.loads((certified / "manifest.json").read_text())
    manifest.update(threshold=thr, thresholds={"calibration": thr}, certificate={
        "epsilon": 0.05, "delta": 0.1, "text": "a test certificate", "risk": "disagreement"})
    (certified / "manifest.json").write_text(json.dumps(manifest))
    served, engine, metrics, app = _server(certified, audit=1.0)
    assert engine.control is not None and engine.threshold >= thr  # on calibrate's grid
    with Running(app) as s:
        status, _, body = s.call("POST", f"/v2/models/{name}/infer", _infer_body(x))
        answer = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
        early = sum(e < 3 for e in answer["exit"])
        deadline = time.time() + 10
        while engine.audits_in_flight and time.time() < deadline:
            time.sleep(0.02)
        text = s.call("GET", "/metrics")[2].decode()
        assert f"elastic_audits_total {float(early)}" in text
        assert "elastic_control_served 48.0" in text and "elastic_threshold " in text
        meta = json.loads(s.call("GET", f"/v2/models/{name}")[2])["parameters"]
        assert meta["online_control"]["audits"] == early and meta["certificate"] == \
            "a test certificate" and meta["threshold_source"] == "online control"
        feedback = json.dumps({"feedback": [{"id": "r1", "classes": answer["class"]},
                                            {"id": "nope", "classes": [0]}]})
        status, _, body = s.call("POST", f"/v2/models/{name}/feedback", feedback)
        assert status == 200 and json.loads(body) == {"accepted": 48, "unknown_ids": ["nope"]}
        assert engine.control.labels.served > 0  # those of the window in force
    engine.close()


class _Fills:
    """The engine's hooks, counting the rows that segments ran on inside fused tails."""

    def __init__(self):
        self.fused = 0

    def on_batch(self, segment, rows, fused=False):
        self.fused += rows if fused else 0

    def on_exits(self, *args, **kwargs):
        pass


def test_fused_tails_answer_as_the_split_segments(exported):
    """FIDELITY.md S9: past the first segment a small batch may run the rest of the cascade
    in one call; the exit rule then routes its rows exit by exit, so exits, classes and
    probabilities are the exported cascade's, in random groupings; a request with a deadline
    is never fused (its exits are timed segment by segment)."""
    from elastic_keras.inference.segment_driver import SegmentCascade
    from elastic_keras.server.fusion import TailPlan, tails

    folder, x, thr, _ = exported
    probs, classes, exits = _reference(folder / "onnx", x, thr)
    cascade = SegmentCascade(folder / "onnx", keep_models=True)
    runs = tails(cascade)
    assert sorted(runs) == [1, 2]
    plan = TailPlan(runs, cascade.segments, x.shape[1:], policy="always")
    assert (plan.split[:, 1:] > 0).all() and (plan.tail[1:, 1:] > 0).all()  # measured
    hooks = _Fills()
    engine = Engine(cascade.segments, 5, threshold=thr, max_batch=4, max_wait_ms=1,
                    hooks=hooks, fusion=plan)
    rng = np.random.default_rng(3)
    groups = np.split(np.arange(len(x)), np.sort(rng.choice(np.arange(1, len(x)), 20,
                                                            replace=False)))
    with ThreadPoolExecutor(4) as pool:
        jobs = list(pool.map(lambda g: (g, engine.submit(x[g])), groups))
    for g, job in jobs:
        got = job.future.result(30)
        np.testing.assert_array_equal(got.exits, exits[g])
        np.testing.assert_array_equal(got.classes, classes[g])
        np.testing.assert_allclose(got.probabilities, probs[g], atol=TOL["onnx"])
    assert hooks.fused > 0 and engine.pending == 0
    before = hooks.fused
    timed = engine.submit(x[:4], deadline_ms=60_000).future.result(30)
    np.testing.assert_array_equal(timed.exits, exits[:4])
    assert hooks.fused == before  # the deadline's request ran segment by segment
    engine.close()


def test_the_tail_plan_fuses_when_the_rows_go_on_and_splits_when_they_leave():
    """The plan's choice follows the exits answered: a tail that costs 1.5 segments beats two
    segments when every row reaches the end, and loses when they leave at exit 2."""
    from elastic_keras.server.fusion import TailPlan

    split = np.ones((3, 3))
    tail = np.zeros((3, 3))
    tail[1, 1:], tail[2, 1:] = 1.5, 0.9
    plan = TailPlan({1: None, 2: None}, [None] * 3, None, up_to=2, costs=(split, tail))
    assert not plan.use(1, 1)  # no exit seen yet: split
    plan.observe(3, 200)
    assert plan.use(1, 1) and plan.use(1, 2) and plan.use(2, 1)
    assert not plan.use(1, 3) and not plan.use(0, 1)  # over up_to rows; the first segment
    for _ in range(40):
        plan.observe(2, 200)
    assert not plan.use(1, 1) and plan.use(2, 1)  # most leave at exit 2 now
