"""Exit loss weights: L_total = sum_i w_i * CE_i (paper eq. 2 and companion papers)."""

# AuxNet's weighting is offered here and its multi-way backpropagation in multiway.py; its
# own experiments are not reproduced (FIDELITY.md O2).

from __future__ import annotations

import math

from elastic_keras.errors import ElasticKerasError

SCHEMES = ("uniform", "second_half", "auxnet", "auxnet_final")


def _finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _auxnet(depths, nu, reference):
    """AuxNet's gamma_k = max(0.01, (L_k / reference) ** nu) for the auxiliary exits, 1 for
    the final one."""
    return [max(0.01, (d / reference) ** nu) for d in depths[:-1]] + [1.0]


def loss_weights(scheme, num_outputs: int, depths=None, nu: float = 2.0) -> list[float]:
    """Weights of the `num_outputs` exit losses, in depth order (final exit last).

    - "uniform": w_i = 1 for every exit (the paper, section III-A).
    - "second_half": Bai et al.: w_p = 0 for p < ceil(P/2) (1-based), 1 after; this gives
      their first weighted exits 9 (ResNet-50, 17 outputs), 7 (MobileNet, 13), 6 (InceptionV3, 11).
    - "auxnet": AuxNet as written: final exit 1, auxiliary exit k
      max(0.01, (L_k / L_K) ** nu) over the K auxiliary exits, L_K the deepest auxiliary
      exit's depth (so it weighs 1); L_k = convolution layers up to exit k (`depths`).
      nu >= 0; nu = 0 gives uniform weights.
    - "auxnet_final": the same with L_K read as the final exit's depth.
    - a list/tuple of numbers: used as given; length and signs are checked.
    (FIDELITY.md L3.)
    """
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ElasticKerasError(f"num_outputs must be an integer >= 1, got {num_outputs!r}")
    if isinstance(scheme, (list, tuple)):
        if not all(_finite(w) for w in scheme):
            raise ElasticKerasError(f"loss weights must be finite numbers, got {list(scheme)}")
        weights = [float(w) for w in scheme]
        if len(weights) != num_outputs:
            raise ElasticKerasError(
                f"loss weights: got {len(weights)} weights for a model with {num_outputs} outputs")
        if any(w < 0 for w in weights):
            raise ElasticKerasError(f"loss weights must be finite and >= 0, got {weights}")
        if sum(weights) == 0:
            raise ElasticKerasError("loss weights are all zero: nothing would be trained")
        return weights
    if scheme == "uniform":
        return [1.0] * num_outputs
    if scheme == "second_half":
        first = math.ceil(num_outputs / 2)
        return [0.0 if p < first else 1.0 for p in range(1, num_outputs + 1)]
    if scheme in ("auxnet", "auxnet_final"):
        if depths is None or len(depths) != num_outputs:
            raise ElasticKerasError(f"loss weights {scheme!r} needs the depth of every exit")
        if not _finite(nu) or nu < 0:
            raise ElasticKerasError(f"auxnet nu must be a number >= 0, got {nu!r}")
        if num_outputs == 1:
            return [1.0]
        reference = depths[-2] if scheme == "auxnet" else depths[-1]
        return _auxnet(depths, nu, reference)
    raise ElasticKerasError(
        f"unknown loss weights {scheme!r}; valid: {', '.join(SCHEMES)} or a list of numbers")
