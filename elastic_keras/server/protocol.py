"""The Open Inference Protocol (KServe v2 REST), as data: requests parsed, answers encoded.

What a request and an answer look like lives here once; every error the server sends is a
ProtocolError (FIDELITY.md S1). JSON bodies and the binary tensor data extension
(`Inference-Header-Content-Length`) both ways.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
             "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
             "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
NUMERIC = tuple(d for d in DATATYPES if d != "BOOL")
# The answer's tensors per image: name -> (datatype, what it holds).
OUTPUTS = {"class": ("INT32", "the class of the exit taken (argmax)"),
           "probability": ("FP32", "the probabilities of the exit taken (N, classes)"),
           "exit": ("INT32", "the exit taken, 1-based in depth order"),
           "macs": ("INT64", "multiply-accumulates of the path to that exit"),
           "forced": ("BOOL", "left before its threshold was met, to meet its deadline")}
PARAMETERS = ("threshold", "deadline_ms", "max_exit")


class ProtocolError(Exception):
    """An error answer: its HTTP status and one line (the protocol's {"error": ...})."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message

    def body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


@dataclass
class InferRequest:
    """A parsed infer request: the images (uint8 N x H x W x C), the per-request
    parameters, the outputs asked for (None: all) and which of them come back binary."""

    images: np.ndarray
    id: str | None = None
    parameters: dict = field(default_factory=dict)
    outputs: list[str] | None = None
    binary: set = field(default_factory=set)


def _json(data: bytes) -> dict:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(400, f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise ProtocolError(400, "the request body must be a JSON object")
    return body


def parse_infer(body: bytes, header_length, shape, exits: int) -> InferRequest:
    """An infer request from its body; `header_length` (the Inference-Header-Content-Length
    header, or None): the JSON part's size, the rest the binary tensors. `shape`: the
    model's (H, W, C); `exits`: how many (for max_exit)."""
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(400, f"{HEADER_LENGTH} must be an integer, got "
                                     f"{header_length!r}") from None
        if not 0 < n <= len(body):
            raise ProtocolError(400, f"{HEADER_LENGTH} {n} is not within the body's "
                                     f"{len(body)} bytes")
        body, binary = body[:n], body[n:]
    req = _json(body)
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(400, "inputs must be a list of one tensor (the images)")
    images = _tensor(inputs[0], binary, shape)
    out = req.get("outputs")
    if out is not None and (not isinstance(out, list) or not all(
            isinstance(o, dict) and o.get("name") in OUTPUTS for o in out)):
        raise ProtocolError(400, f"outputs must name some of {', '.join(OUTPUTS)}, got {out!r}")
    asked: list[str] | None = None if out is None else [o["name"] for o in out]
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(400, "parameters must be an object")
    binary_out = set(asked or OUTPUTS) if params.get("binary_data_output") else set()
    binary_out |= {o["name"] for o in out or () if (o.get("parameters") or {}).get(
        "binary_data")}
    rid = req.get("id")
    return InferRequest(images, None if rid is None else str(rid),
                        check_parameters(params, exits), asked, binary_out)


def _tensor(spec: dict, binary: bytes, shape) -> np.ndarray:
    """The images of an input tensor, checked: datatype, shape, finite values in [0, 255]."""
    dtype, dims = spec.get("datatype"), spec.get("shape")
    if dtype not in NUMERIC:
        raise ProtocolError(400, f"datatype {dtype!r}: send UINT8 images (or another "
                                 f"numeric type holding 0..255), not {dtype!r}")
    if not isinstance(dims, list) or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise ProtocolError(400, f"shape must be a list of sizes, got {dims!r}")
    dims = dims if len(dims) == 4 else [1, *dims] if len(dims) == 3 else dims
    if len(dims) != 4 or tuple(dims[1:]) != tuple(shape) or dims[0] < 1:
        raise ProtocolError(400, f"shape {spec.get('shape')}: expected [N, "
                                 f"{', '.join(map(str, shape))}] with N >= 1")
    size = (spec.get("parameters") or {}).get("binary_data_size")
    count = int(np.prod(dims))
    x: np.ndarray
    try:
        if size is not None:
            if size != count * np.dtype(DATATYPES[dtype]).itemsize or size > len(binary):
                raise ProtocolError(400, f"binary_data_size {size} does not hold {dims} "
                                         f"{dtype} ({len(binary)} bytes sent)")
            x = np.frombuffer(binary[:size], DATATYPES[dtype])
        else:
            x = np.asarray(spec.get("data"), dtype=np.float64).ravel()
    except (TypeError, ValueError) as e:
        raise ProtocolError(400, f"data: not numbers ({e})") from None
    if x.size != count:
        raise ProtocolError(400, f"data holds {x.size} values, shape {dims} needs {count}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ProtocolError(400, "data holds NaN or infinite values")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ProtocolError(400, f"pixel values must lie in 0..255, got {x.min()}..{x.max()}")
    return np.ascontiguousarray(np.rint(x).astype(np.uint8).reshape(dims))


def check_parameters(params: dict, exits: int) -> dict:
    """The per-request parameters the server knows (threshold, deadline_ms, max_exit),
    checked; the others are ignored, as the protocol allows."""
    got = {}
    for key in PARAMETERS:
        v = params.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ProtocolError(400, f"parameter {key} must be a number, got {v!r}")
        if key == "deadline_ms" and v <= 0:
            raise ProtocolError(400, f"parameter deadline_ms must be > 0, got {v}")
        if key == "max_exit" and (int(v) != v or not 1 <= v <= exits):
            raise ProtocolError(400, f"parameter max_exit must be an exit 1..{exits}, got {v}")
        got[key] = int(v) if key == "max_exit" else float(v)
    return got


def answer_tensors(job, path_macs) -> dict:
    """The answer's tensors of a finished job (FIDELITY.md S1)."""
    return {"class": job.classes, "probability": job.probabilities, "exit": job.exits,
            "macs": np.asarray(path_macs, np.int64)[job.exits - 1], "forced": job.forced}


def encode_infer(model: str, request: InferRequest, tensors: dict,
                 parameters: dict | None = None) -> tuple[bytes, dict]:
    """The answer's body and headers: JSON, or JSON then binary tensors where asked."""
    outputs, blobs = [], []
    for name in request.outputs or OUTPUTS:
        value: np.ndarray = np.ascontiguousarray(tensors[name], DATATYPES[OUTPUTS[name][0]])
        out: dict = {"name": name, "datatype": OUTPUTS[name][0], "shape": list(value.shape)}
        if name in request.binary:
            blobs.append(value.tobytes())
            out["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            out["data"] = value.ravel().tolist()
        outputs.append(out)
    head = {"model_name": model, "model_version": "1", "outputs": outputs,
            **({"id": request.id} if request.id is not None else {}),
            **({"parameters": parameters} if parameters else {})}
    text = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return text, {"content-type": "application/json"}
    return text + b"".join(blobs), {"content-type": "application/octet-stream",
                                    HEADER_LENGTH: str(len(text))}
