"""Int8 segments of an export: integers in and out, probabilities dequantized and scaled.

Shipped beside the segment driver (cascade_driver.py) in every export as cascade_int8.py;
NumPy only.
"""

import numpy as np


# Int8 segments and the export's own temperatures (FIDELITY.md Q2, Q4): integers in and out
# (scale and zero point in the manifest); probabilities dequantized and scaled here.


def dequantized(x, params):
    """float32 (q - zero_point) * scale, `params` [scale, zero_point, dtype]; None: as it is."""
    x = np.asarray(x)
    if not params:
        return x.astype(np.float32, copy=False)
    return ((x.astype(np.int32) - np.int32(params[1])) * np.float32(params[0])).astype(
        np.float32)


def exit_probabilities(raw, params=None, temperature=None):
    """An exit's probabilities as served: dequantized, then softmax(log(p) / T) in float32."""
    probs = dequantized(raw, params)
    if temperature is None or float(temperature) == 1.0:
        return probs
    z = np.log(np.maximum(probs, np.float32(1e-30))) / np.float32(temperature)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def confidence(probs, criterion):
    """float32 confidence of probability rows: the largest, or the entropy in nats."""
    if criterion == "max_prob":
        return probs.max(axis=1)
    return -(probs * np.log(np.where(probs > 0, probs, np.float32(1)))).sum(1, dtype=np.float32)


def _bridged(x, a, b):
    """Features of quantization `a` as the next segment reads them (`b`; None: float); with
    one type and zero point and scales within 1/512 they pass as they are (same integers)."""
    if a == b or (a and b and a[1:] == b[1:] and abs(a[0] / b[0] - 1) < 1 / 512):
        return x
    x = dequantized(x.numpy() if hasattr(x, "numpy") else x, a)
    if not b:
        return x
    info = np.iinfo(b[2])
    return np.clip(np.round(x / np.float32(b[0])) + b[1], info.min, info.max).astype(b[2])


def exit_outputs(manifest, segments):
    """The runners wrapped: inputs requantized as the segment reads them, probabilities
    dequantized and scaled by the output temperatures, the confidence from them."""
    quant = (manifest.get("quantization") or {}).get("tensors") or {}
    temps = manifest.get("output_temperatures") or [None] * len(segments)
    rels, criterion = manifest["artifacts"]["segments"], manifest["criterion"]
    if not quant and not any(t not in (None, 1.0) for t in temps):
        return segments
    wrapped = []
    for k, (run, rel, t) in enumerate(zip(segments, rels, temps)):
        a = quant.get(rels[k - 1], {}).get("features") if k else None
        b = quant.get(rel, {}).get("tap")

        def call(x, run=run, p=quant.get(rel, {}).get("probabilities"), t=t, a=a, b=b):
            probs, _, features = run(_bridged(x, a, b))
            probs = exit_probabilities(probs, p, t)
            return probs, confidence(probs, criterion), features
        wrapped.append(call)
    return wrapped
